"""Exit statuses, environment and data end to end: what the Docker stack does
with its own config (memory limit, allowlists, pty TERM, load).  The checks
every backend shares are in test_on_each_backend.py."""

import os
import subprocess
import threading

import pexpect
import pytest

from .stack import client_env


@pytest.mark.config({"docker": {"memory": "64m"}})
def test_out_of_memory_is_137_with_an_explanation(hw):
    p = hw.ssh("alice", "dd if=/dev/zero of=/dev/null bs=400M count=1")   # a 400 MB buffer
    assert p.returncode == 137
    assert b"hatchway: the session ran out of memory and was killed (exit 137)\n" in p.stderr


def test_status_survives_a_command_running_long_after_stdin_eof(hw):
    # ContainerSSH gives up on the exit status 60 s after the client's EOF
    p = hw.ssh("alice", "sleep 65; echo late; exit 9", timeout=180)
    assert (p.returncode, p.stdout) == (9, b"late\n")


@pytest.mark.config({"session": {"env_allow": ["GIT_PROTOCOL"]}})
def test_the_daemons_allowlist_is_the_last_word(hw):
    env = client_env(hw)
    assert env["GIT_PROTOCOL"] == "version=2"
    assert "LANG" not in env and "LC_TIME" not in env


def test_term_comes_from_the_pty(hw):
    c = hw.spawn("alice", "echo TERM=$TERM", env=dict(os.environ, TERM="vt220"))
    c.expect(r"TERM=(\S*)\r\n")
    assert c.match.group(1) == b"vt220"
    c.expect(pexpect.EOF)
    c.close()


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

