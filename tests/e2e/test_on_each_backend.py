"""What every backend must do through the real sshd stack, run on Docker and
on Kubernetes (the real test cluster) in turn (`hwb`, conftest.py): exit
statuses and 128+N, the environment, stdin EOF, every byte value, the
terminal, TERM, HUP on a disconnect, kill -9 of a session process, a missing
image, 200 MB each way and a slow reader.  Each test here was once a Docker
test and its Kubernetes twin; it keeps the assertions of both.  The Backend
interface itself is checked by tests/contract; what is one backend's own
stays in the other files (test_kubernetes.py for Kubernetes)."""

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time

import pexpect
import pytest

from .stack import SlowRead, assert_200_mb_out, client_env, run

PROMPT = r"[#$] "
MB = 1 << 20


def _docker(hwb) -> bool:
    return hwb.backend == "docker"


# -- exit status and output


def test_command_output_streams_and_exit_status(hwb):
    # the second line shows where it ran: the demo image's marker file, or the pod's name
    where = "cat /etc/hatchway-demo" if _docker(hwb) else "hostname"
    p = hwb.ssh("alice", f"echo hello; echo oops >&2; {where}; exit 7")
    assert p.returncode == 7, p.stderr
    if _docker(hwb):
        assert p.stdout == b"hello\ninside a Hatchway demo container\n"
    else:
        out = p.stdout.decode().splitlines()
        assert out[0] == "hello" and out[1].startswith("hatchway-alice-") and len(out) == 2
    assert p.stderr == b"oops\n"


def test_early_output_is_not_lost(hwb):
    p = hwb.ssh("alice", "echo first; exit 0")
    assert (p.returncode, p.stdout) == (0, b"first\n")


@pytest.mark.parametrize("code", [0, 1, 42, 127, 200, 255])
def test_exit_statuses_pass_through_exactly(hwb, code):
    assert hwb.ssh("alice", f"exit {code}").returncode == code


@pytest.mark.parametrize("sig,code", [("HUP", 129), ("INT", 130), ("KILL", 137), ("TERM", 143)])
def test_death_by_signal_is_128_plus_n(hwb, sig, code):
    # the OpenSSH client would turn an exit-signal into 255; Hatchway reports 128+N
    assert hwb.ssh("alice", f"kill -{sig} $$").returncode == code


def test_only_allowlisted_client_environment_arrives(hwb):
    env = client_env(hwb)
    assert env["LANG"] == "C.UTF-8"
    assert env["LC_TIME"] == "POSIX"
    assert env["GIT_PROTOCOL"] == "version=2"
    assert "FOO" not in env
    # nothing about the host session leaks in
    for name in ("SSH_CONNECTION", "SSH_CLIENT", "USER", "LOGNAME", "MAIL", "SSH_ORIGINAL_COMMAND"):
        assert name not in env, name


# -- bytes


def test_stdin_eof_reaches_the_command_and_output_and_status_survive_it(hwb):
    # on Kubernetes (v4.channel.k8s.io cannot half-close) the FIFO feeder carries EOF
    p = hwb.ssh("alice", "cat; sleep 1; echo done", input=b"a\nb\n")
    assert (p.returncode, p.stdout) == (0, b"a\nb\ndone\n"), p.stderr
    p = hwb.ssh("alice", "cat; wc -c </dev/null; sleep 1; echo done; exit 3", input=b"a\nb\n")
    assert (p.returncode, p.stdout) == (3, b"a\nb\n0\ndone\n"), p.stderr
    p = hwb.ssh("alice", "wc -c", input=b"x" * 100000)
    assert (p.returncode, p.stdout.strip()) == (0, b"100000")


def test_every_byte_value_both_ways(hwb):
    data = bytes(range(256)) * 4096         # 1 MiB; python3-kubernetes 22.6 would mangle it
    p = hwb.ssh("alice", "cat", input=data)
    assert p.returncode == 0 and p.stdout == data
    p = hwb.ssh("alice", "printf '\\000\\200\\377'")
    assert p.stdout == b"\x00\x80\xff"


def test_200_mb_out_is_byte_identical(hwb):
    assert_200_mb_out(hwb, timeout=180)


def test_200_mb_in_is_byte_identical(hwb, tmp_path):
    src = tmp_path / "in"
    with open(src, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(MB))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    with open(src, "rb") as f:
        p = subprocess.run(hwb.ssh_argv("alice", "tee /tmp/d | sha256sum; wc -c < /tmp/d; "
                                                 "echo done"),
                           stdin=f, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got_hash, got_size = p.stdout.split()[0].decode(), p.stdout.split()[-2]
    assert (got_hash, got_size) == (want, str(200 * MB).encode())
    assert p.stdout.endswith(b"done\n")


def test_a_slow_reader_keeps_the_session_process_small(hwb):
    # A reader far slower than the relay (16 MB/s): everything behind it must
    # wait in the kernel's buffers, not pile up in the session process.
    size, rate = 200 * MB, 16 * MB
    p = subprocess.Popen(hwb.ssh_argv("alice", f"head -c {size} /dev/urandom > /tmp/d; "
                                               "sha256sum /tmp/d >&2; cat /tmp/d"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         bufsize=0)
    try:
        pid = hwb.session_pid(hwb.one_session(user="alice"))
        read = SlowRead(p.stdout, pid, rate)
        err = p.stderr.read()
        assert p.wait(60) == 0, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert read.got == size
    assert err.split()[0].decode() == read.sha256
    read.assert_flat()


# -- terminal


def test_interactive_shell_size_resize_and_exit_code(hwb):
    c = hwb.spawn("alice", dimensions=(30, 100))
    c.delaybeforesend = None
    c.expect(PROMPT)
    c.sendline("stty size")
    c.expect(r"30 100\r\n")
    for rows, cols in ((41, 132), (50, 200), (20, 60)):
        c.setwinsize(rows, cols)
        # SIGWINCH -> hatchway-shell -> daemon -> backend: asynchronous, so ask
        # until the new size shows (bounded)
        end = time.monotonic() + 20
        while True:
            c.sendline("stty size")
            try:
                c.expect(rf"{rows} {cols}\r\n", timeout=2)
                break
            except pexpect.TIMEOUT:
                assert time.monotonic() < end, f"size {rows}x{cols} never arrived"
    if _docker(hwb):
        c.sendline("cat /etc/hatchway-demo")
        c.expect("inside a Hatchway demo container")
    c.sendline("exit 3")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 3


# -- signals and disconnects


def test_term_reaching_hatchway_shell_is_forwarded(hwb):
    p = subprocess.Popen(hwb.ssh_argv("alice", "trap 'echo got TERM; exit 3' TERM; "
                                               "echo ready; while :; do sleep 0.1; done"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    pid = int(run(["pgrep", "-n", "-u", "alice", "-f", "hatchway-shell"]).stdout)
    os.kill(pid, signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert (p.returncode, out) == (3, b"got TERM\n")


class Listener:
    """A TCP listener on this host, which a container/pod reaches through its
    bridge (OnBackend.host_address): how a command that is about to be removed
    can tell us it got HUP."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(4)
        self.sock.settimeout(60)
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        try:
            conn, _ = self.sock.accept()
            conn.settimeout(10)
            self.got.append(conn.recv(100))
            conn.close()
        except OSError:
            pass

    def wait(self, timeout=60) -> list[bytes]:
        self.thread.join(timeout)
        self.sock.close()
        return self.got


def _hup_reporter(hwb, port: int) -> str:
    """Report HUP to the Listener, then die of it (128+1 where the exit is seen)."""
    return (f"trap 'echo got-HUP | nc {hwb.host_address()} {port}; trap - HUP; kill -HUP $$' HUP; "
            "echo ready; while :; do sleep 0.2; done")


def _needs_the_bridge(hwb):
    if hwb.external:
        pytest.skip("another cluster: its pods may not reach this host")


def _disconnect(hwb, client_pid: int, session: dict) -> list[str]:
    """Kill the client; wait for the session's container/pod to go; on Docker,
    the exit codes dockerd recorded for the container's death."""
    t0 = time.time()
    os.kill(client_pid, signal.SIGKILL)
    hwb.wait_no_sessions(timeout=20 if _docker(hwb) else 30, user="alice")
    print(f"removed {time.time() - t0:.2f}s after the client was killed")
    return hwb.exit_codes(session["id"], t0 - 1) if _docker(hwb) else []


def test_pty_disconnect_hangs_up_the_command_then_removes_it(hwb):
    _needs_the_bridge(hwb)
    lis = Listener()
    c = hwb.spawn("alice")
    c.expect(PROMPT)
    c.sendline(_hup_reporter(hwb, lis.port))
    c.expect("ready")
    session = hwb.one_session(user="alice")
    time.sleep(0.3)
    codes = _disconnect(hwb, c.pid, session)
    assert lis.wait() == [b"got-HUP\n"]
    if _docker(hwb):
        # the shell died of SIGHUP (129), not of the removal's SIGKILL
        assert codes == ["129"], codes
    c.close(force=True)


def test_disconnect_without_pty_delivers_hup(hwb):
    _needs_the_bridge(hwb)
    lis = Listener()
    p = subprocess.Popen(hwb.ssh_argv("alice", _hup_reporter(hwb, lis.port)), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    codes = _disconnect(hwb, p.pid, hwb.one_session(user="alice"))
    assert lis.wait() == [b"got-HUP\n"]
    if _docker(hwb):
        assert codes == ["129"], codes
    p.wait()


def test_disconnect_without_pty_while_the_command_is_silent(hwb):
    # no pty: sshd gives no signal at all; the daemon notices the stdout pipe's reader is gone
    p = subprocess.Popen(hwb.ssh_argv("alice", "sleep 1000"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    session = hwb.one_session(user="alice")
    time.sleep(0.3)
    codes = _disconnect(hwb, p.pid, session)
    if _docker(hwb):
        assert codes == ["129"], codes
    p.wait()


def test_kill_9_of_the_session_process_removes_the_container(hwb):
    p = subprocess.Popen(hwb.ssh_argv("alice", "sleep 1000"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    session = hwb.one_session(user="alice")
    os.kill(hwb.session_pid(session), signal.SIGKILL)
    # the daemon's main process sees its child die and reaps at once
    hwb.wait_no_sessions(timeout=20 if _docker(hwb) else 30, user="alice")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 255
    assert b"hatchway: the session ended without an exit status" in err
    assert "removed" in hwb.daemon_log() and "session process is gone" in hwb.daemon_log()


# -- start failures


def test_a_missing_image_fails_fast_with_a_clear_message(hwb):
    image = hwb.use_missing_image()
    t0 = time.monotonic()
    p = hwb.ssh("alice", "true")
    took = time.monotonic() - t0
    assert p.returncode == 255
    if _docker(hwb):
        assert p.stderr == f"hatchway: image {image} is not available on this host\n".encode()
    else:
        assert b"ErrImageNeverPull" in p.stderr, p.stderr
    assert took < 50, took                   # well before start_timeout (60 s)

