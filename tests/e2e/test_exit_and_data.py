"""Exit statuses, signals, environment and data, end to end."""

import hashlib
import os
import signal
import subprocess
import threading

import pexpect
import pytest

from .stack import assert_200_mb_out, run

MB = 1 << 20


@pytest.mark.parametrize("code", [0, 1, 42, 127, 200, 255])
def test_exit_statuses_pass_through_exactly(hw, code):
    assert hw.ssh("alice", f"exit {code}").returncode == code


@pytest.mark.parametrize("sig,code", [("HUP", 129), ("INT", 130), ("KILL", 137), ("TERM", 143)])
def test_death_by_signal_is_128_plus_n(hw, sig, code):
    # the OpenSSH client would turn an exit-signal into 255; Hatchway reports 128+N
    assert hw.ssh("alice", f"kill -{sig} $$").returncode == code


@pytest.mark.config({"docker": {"memory": "64m"}})
def test_out_of_memory_is_137_with_an_explanation(hw):
    p = hw.ssh("alice", "dd if=/dev/zero of=/dev/null bs=400M count=1")   # a 400 MB buffer
    assert p.returncode == 137
    assert b"hatchway: the session ran out of memory and was killed (exit 137)\n" in p.stderr


def test_status_survives_a_command_running_long_after_stdin_eof(hw):
    # ContainerSSH gives up on the exit status 60 s after the client's EOF
    p = hw.ssh("alice", "sleep 65; echo late; exit 9", timeout=180)
    assert (p.returncode, p.stdout) == (9, b"late\n")


def test_term_reaching_hatchway_shell_is_forwarded(hw):
    p = subprocess.Popen(hw.ssh_argv("alice", "trap 'echo got TERM; exit 3' TERM; "
                                              "echo ready; while :; do sleep 0.1; done"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    pid = int(run(["pgrep", "-n", "-u", "alice", "-f", "hatchway-shell"]).stdout)
    os.kill(pid, signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert (p.returncode, out) == (3, b"got TERM\n")


ENV_CMD = "env | sort"


def _env(hw, **extra):
    env = dict(os.environ, LANG="C.UTF-8", LC_TIME="POSIX", GIT_PROTOCOL="version=2",
               FOO="bar", **extra)
    argv = hw.ssh_argv("alice", ENV_CMD, options=(
        "-o", "SendEnv=LANG LC_* GIT_PROTOCOL FOO"))
    p = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0, p.stderr
    return dict(line.split("=", 1) for line in p.stdout.decode().splitlines())


def test_only_allowlisted_client_environment_arrives(hw):
    env = _env(hw)
    assert env["LANG"] == "C.UTF-8"
    assert env["LC_TIME"] == "POSIX"
    assert env["GIT_PROTOCOL"] == "version=2"
    assert "FOO" not in env
    # nothing about the host session leaks in
    for name in ("SSH_CONNECTION", "SSH_CLIENT", "USER", "LOGNAME", "MAIL", "SSH_ORIGINAL_COMMAND"):
        assert name not in env, name


@pytest.mark.config({"session": {"env_allow": ["GIT_PROTOCOL"]}})
def test_the_daemons_allowlist_is_the_last_word(hw):
    env = _env(hw)
    assert env["GIT_PROTOCOL"] == "version=2"
    assert "LANG" not in env and "LC_TIME" not in env


def test_term_comes_from_the_pty(hw):
    c = hw.spawn("alice", "echo TERM=$TERM", env=dict(os.environ, TERM="vt220"))
    c.expect(r"TERM=(\S*)\r\n")
    assert c.match.group(1) == b"vt220"
    c.expect(pexpect.EOF)
    c.close()


def test_200_mb_out_is_byte_identical(hw):
    assert_200_mb_out(hw, timeout=120)


def test_200_mb_in_is_byte_identical(hw, tmp_path):
    src = tmp_path / "in"
    with open(src, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(MB))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    with open(src, "rb") as f:
        p = subprocess.run(hw.ssh_argv("alice", "tee /tmp/d | sha256sum; wc -c < /tmp/d"),
                           stdin=f, capture_output=True, timeout=180)
    assert p.returncode == 0, p.stderr
    got_hash, got_size = p.stdout.split()[0].decode(), p.stdout.split()[-1]
    assert (got_hash, got_size) == (want, str(200 * MB).encode())


def test_no_output_lost_under_cpu_load(hw):
    burners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
    failures: list = []

    def worker(ids):
        for i in ids:
            p = hw.ssh("alice", f"echo line-{i}-a; echo line-{i}-b >&2; echo line-{i}-c")
            if (p.returncode, p.stdout, p.stderr) != (0, f"line-{i}-a\nline-{i}-c\n".encode(),
                                                      f"line-{i}-b\n".encode()):
                failures.append((i, p.returncode, p.stdout, p.stderr))
    try:
        threads = [threading.Thread(target=worker, args=(range(k, 200, 4),)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert failures == [], f"{len(failures)} of 200 sessions lost output: {failures[:3]}"


def test_a_64_kib_command(hw):
    word = "x" * 65536
    p = hw.ssh("alice", f"echo {word} | wc -c")
    assert (p.returncode, p.stdout.strip()) == (0, b"65537")


def test_non_utf8_bytes_in_the_command_arrive_intact(hw):
    argv = [a.encode() for a in hw.ssh_argv("alice")] + [b"printf '%s' '\xff\xfe\x80caf\xe9' | od -An -tx1"]
    p = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [b"ff", b"fe", b"80", b"63", b"61", b"66", b"e9"]


def test_binary_stdin_with_every_byte_value(hw):
    data = bytes(range(256)) * 4096
    p = hw.ssh("alice", "cat", input=data)
    assert p.returncode == 0 and p.stdout == data
