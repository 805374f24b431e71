"""The Kubernetes API server failing under Hatchway, on the real test cluster
(tests/setup/k8s-cluster): stopped and started again under live sessions,
down at login, hung at login and under a live session.

What the cluster does (seen on it, 1.20): every exec stream runs client ->
kube-apiserver -> kubelet, so stopping the API server ends every live
session's streams at once, without an exit status, while the kubelet keeps the
pods and their commands running.  Hatchway ends each such session with one
line and exit 255, and its session process deletes the pod once the API server
is back (the reaper, if that takes longer).  A hung API server (SIGSTOP) keeps
its connections: a live session waits and carries on once it answers; a login
is refused with one line when the request's deadline passes.

The kubelet and containerd run on throughout; whatever happens, the API server
is running and ready again when each test ends, for the tests after these.
"""

import subprocess
import threading

import pexpect
import pytest

from tests.k8s_cluster import CLUSTER

from .backends import k8s_config, pods
from .engine import daemon_own_now, session_pids, wait_only_daemon_left
from .stack import wait_for

CLUSTER_GONE = b"hatchway: the Kubernetes cluster became unreachable; this session has ended\n"
CLUSTER_DOWN = b"hatchway: the Kubernetes cluster is not reachable; try again later\n"


def cluster(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([str(CLUSTER), cmd], capture_output=True, text=True, timeout=300)
    if check and p.returncode:
        raise AssertionError(f"k8s-cluster {cmd}: {p.stderr[-3000:]}")
    return p


@pytest.fixture
def clients():
    """ssh clients a test started: killed at its end, even when it fails
    (a live session would keep its pod)."""
    started = []
    yield started
    for c in started:
        if isinstance(c, pexpect.spawn):
            c.close(force=True)
        elif c.poll() is None:
            c.kill()
            c.wait()


@pytest.fixture
def kf(stack, k8s, clients):
    """The stack on the test cluster; afterwards the API server runs and is
    ready (whatever the test did to it), and no session pod is left."""
    if k8s["external"]:
        pytest.skip("stops and starts the test cluster's own API server")
    cfg = k8s_config(k8s, stack.tmp)
    # three sessions at once: at the default of a whole CPU each (requests
    # = limits), the test node's 2 CPUs refuse the third pod (OutOfcpu)
    cfg["policy"]["max_cpus"] = 0.25
    stack.reconfigure(cfg)
    try:
        yield stack
    finally:
        cluster("thaw-apiserver", check=False)      # fails when it is not running
        if cluster("status", check=False).returncode != 0:
            cluster("start-apiserver")
        for c in clients:       # a session the test left running keeps its pod
            c.close(force=True) if isinstance(c, pexpect.spawn) else c.kill()
    # session processes delete their pods within seconds of the API server's
    # return; the reaper (every 60 s) takes what they could not
    wait_for(lambda: not pods(k8s), 150, 0.5, what="session pods to be deleted")


def login_works(hw) -> None:
    r = hw.ssh("alice", "echo inside", timeout=150)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"inside\n", b"")


class Transfer:
    """`cat` in a session, fed and read at once: bytes in flight both ways
    when the fault comes.  What comes back must be a prefix of what went in."""

    CHUNK = bytes(range(256)) * 128         # 32 KiB, every byte value

    def __init__(self, hw):
        self.p = subprocess.Popen(hw.ssh_argv("alice", "exec cat"), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.sent = self.got = 0
        self.echo_ok = True
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, daemon=True),
                        threading.Thread(target=self._read, daemon=True)]
        for t in self.threads:
            t.start()

    def _write(self) -> None:
        try:
            while not self.stop.is_set():
                self.p.stdin.write(self.CHUNK)
                self.p.stdin.flush()
                self.sent += len(self.CHUNK)
                self.stop.wait(0.005)       # a steady stream, not a CPU hog on 2 cores
        except (BrokenPipeError, OSError, ValueError):
            pass

    def _read(self) -> None:
        n = len(self.CHUNK)
        while True:
            data = self.p.stdout.read1(65536)
            if not data:
                return
            at = self.got % n
            want = (self.CHUNK * (len(data) // n + 2))[at:at + len(data)]
            self.echo_ok = self.echo_ok and data == want
            self.got += len(data)

    def end(self, timeout: float) -> tuple[int, bytes]:
        rc = self.p.wait(timeout)
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return rc, self.p.stderr.read()


def test_apiserver_restarted_under_live_sessions(kf, k8s, clients):
    own = daemon_own_now()
    login_works(kf)             # the cluster answers before the fault
    quiet = subprocess.Popen(kf.ssh_argv("alice", "echo started; exec sleep 1000"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    clients.append(quiet)
    assert quiet.stdout.readline() == b"started\n"
    shell = kf.spawn("bob")
    clients.append(shell)
    shell.expect(r"[#$] ", timeout=90)
    shell.sendline("echo ready")
    shell.expect("ready")
    transfer = Transfer(kf)
    clients.append(transfer.p)
    wait_for(lambda: transfer.got >= 1 << 20, 90, 0.05, what="1 MiB through the transfer")
    assert len(pods(k8s)) == 3
    assert len(session_pids()) == 3, session_pids()   # told apart from the daemon's own

    cluster("stop-apiserver")

    # each session ends with the one line, while the API server is still down
    out, err = quiet.communicate(timeout=120)
    assert (quiet.returncode, out, err) == (255, b"", CLUSTER_GONE)
    shell.expect(pexpect.EOF, timeout=120)
    assert CLUSTER_GONE.rstrip() in shell.before.replace(b"\r", b""), shell.before
    assert b"Traceback" not in shell.before
    shell.close()
    assert shell.exitstatus == 255
    rc, err = transfer.end(120)
    assert (rc, err) == (255, CLUSTER_GONE)
    # (the write the pipe broke under may have been half sent)
    assert transfer.echo_ok and 1 << 20 <= transfer.got <= transfer.sent + len(transfer.CHUNK)

    cluster("start-apiserver")

    # once it is back: the session processes deleted their pods and exited,
    # the daemon's main process did not need a restart
    wait_for(lambda: not pods(k8s), 150, 0.5, what="the sessions' pods to be deleted")
    wait_only_daemon_left(own, 90, "only the daemon's own processes")
    login_works(kf)
    # the same main process served it (no restart was needed); its session
    # process removes the container after the client has its answer
    wait_only_daemon_left(own, 60, "the new login's session process to exit")


def test_apiserver_down_at_login(kf, k8s):
    own = daemon_own_now()
    cluster("stop-apiserver")
    r = kf.ssh("alice", "echo ran", timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (255, b"", CLUSTER_DOWN)
    r = kf.ssh("bob", None, input=b"echo ran\n", timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (255, b"", CLUSTER_DOWN)
    cluster("start-apiserver")
    login_works(kf)
    wait_only_daemon_left(own, 30, "the session processes to exit")


def test_apiserver_hung_at_login_and_under_a_live_session(kf, k8s, clients):
    """SIGSTOP: the API server keeps its connections and answers nothing.  A
    login is refused once the pod's creation times out (15 s, within the
    start deadline); a live session waits and carries on once it answers."""
    live = subprocess.Popen(kf.ssh_argv("bob", "echo started; exec cat"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    clients.append(live)
    assert live.stdout.readline() == b"started\n"
    cluster("freeze-apiserver")
    try:
        r = kf.ssh("alice", "echo ran", timeout=180)
        live.stdin.write(b"typed while it hung\n")
        live.stdin.flush()
    finally:
        cluster("thaw-apiserver")
    assert (r.returncode, r.stdout, r.stderr) == (255, b"", CLUSTER_DOWN)
    assert live.stdout.readline() == b"typed while it hung\n"
    live.stdin.close()
    assert live.wait(60) == 0 and live.stderr.read() == b""
    login_works(kf)
