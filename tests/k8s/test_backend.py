"""The Kubernetes backend against a REAL cluster (kube-apiserver + kubelet
1.20, containerd, busybox image), through the same Backend/Process interface
the session relay uses.  What the sshd stack adds on top is covered for
Docker by tests/e2e; these check what is Kubernetes' own: the channel
protocol, stdin EOF over v4, pty size, signals by exec, exit statuses, pod
lifecycle and the reaper."""

import copy
import hashlib
import os
import socket
import threading
import time

import pytest

from hatchway.core import config
from hatchway.backends import labels
from hatchway.backends.base import BackendError, SessionSpec
from hatchway.backends.kubernetes.api import KubernetesError
from hatchway.backends.kubernetes.backend import KubernetesBackend

GATEWAY = "10.244.0.1"      # the test cluster's pod bridge: pods reach this host here


@pytest.fixture
def cfg(cluster):
    c = config.defaults()
    c["backend"] = "kubernetes"
    c["kubernetes"].update(kubeconfig=cluster, image="local/busybox:1", pod={
        "nodeName": "localhost",            # the test cluster has no scheduler
        "containers": [{"name": "session", "imagePullPolicy": "Never"}]})
    return c


@pytest.fixture
def backend(cfg):
    b = KubernetesBackend(config.typed(cfg))
    yield b
    # nothing of any test may stay behind
    end = time.monotonic() + 30
    while _session_pods(b):
        assert time.monotonic() < end, f"pods left: {_session_pods(b)}"
        time.sleep(0.2)


def _session_pods(b):
    return [p["metadata"]["name"] for p in b.api.call(
        "GET", "/api/v1/namespaces/default/pods",
        query={"labelSelector": "io.hatchway.managed=true"})["items"]]


def spec(cfg, argv, pty=False, size=(30, 100), owner=None):
    sid = os.urandom(16).hex()
    s = SessionSpec(user="alice", uid=1000, session_id=sid, connection_id="c", kind="exec",
                    argv=argv, pty=pty, term="xterm" if pty else None, size=size if pty else None,
                    env={"LANG": "C.UTF-8"}, remote_address="127.0.0.1:1", config=config.typed(cfg))
    s.labels = labels.for_session("alice", sid, "c", "session", os.getpid())
    if owner is not None:
        s.labels[labels.PROCESS] = owner
    return s


class Session:
    """One command: output collected by a thread, like the relay's pump."""

    def __init__(self, backend, s):
        self.proc = backend.start(s)
        self.out = {1: bytearray(), 2: bytearray()}     # += on bytes would be quadratic
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        while (item := self.proc.recv()) is not None:
            self.out[item[0]] += item[1]
            self.first.set()
        self.first.set()

    def finish(self, timeout=60):
        self.thread.join(timeout)
        alive = self.thread.is_alive()
        st = self.proc.exit_status()
        self.proc.destroy()
        assert not alive, f"no end of output within {timeout}s: {bytes(self.out[1][:200])!r}"
        return st


def sh(backend, cfg, script, data=b"", pty=False):
    s = Session(backend, spec(cfg, ["/bin/sh", "-c", script], pty=pty))
    if data:
        s.proc.send(data)
    s.proc.close_stdin()
    st = s.finish()
    return st, {k: bytes(v) for k, v in s.out.items()}


def test_output_stderr_and_exit_status(backend, cfg):
    st, out = sh(backend, cfg, "echo hello; echo oops >&2; exit 7")
    assert (st.code, out) == (7, {1: b"hello\n", 2: b"oops\n"})


@pytest.mark.parametrize("sig, code", [("HUP", 129), ("KILL", 137), ("TERM", 143)])
def test_death_by_signal_is_128_plus_n(backend, cfg, sig, code):
    assert sh(backend, cfg, f"kill -{sig} $$")[0].code == code


def test_a_missing_command_is_127(backend, cfg):
    st, out = sh(backend, cfg, "exec /no/such/command")
    assert st.code == 127 and b"not found" in out[2]


def test_stdin_eof_arrives_after_every_byte_and_output_continues(backend, cfg):
    # closing the exec websocket instead drops stdin in flight (100 kB -> 32 KiB seen)
    data = bytes(range(256)) * 4096
    st, out = sh(backend, cfg, "cat; echo after-eof >&2; exit 3", data=data)
    assert (st.code, out[1], out[2]) == (3, data, b"after-eof\n")


def test_200_mb_in_and_out_byte_identical(backend, cfg):
    s = Session(backend, spec(cfg, ["/bin/sh", "-c", "tee /tmp/d | sha256sum; wc -c < /tmp/d; "
                                    "cat /tmp/d; rm /tmp/d"]))
    digest = hashlib.sha256()
    chunk = os.urandom(1 << 16)
    for i in range(3200):
        piece = chunk[i % 256:] + chunk[:i % 256]
        digest.update(piece)
        s.proc.send(piece)
    s.proc.close_stdin()
    # the output side is drained concurrently by the thread: only its size is kept in mind
    st = s.finish(timeout=300)
    head = s.out[1][:200].split(b"\n")
    assert st.code == 0
    assert head[0].split()[0].decode() == digest.hexdigest()
    assert head[1].strip() == str(200 << 20).encode()
    assert len(s.out[1]) == len(head[0]) + len(head[1]) + 2 + (200 << 20)


def test_pty_size_before_the_first_byte_and_resize(backend, cfg):
    s = Session(backend, spec(cfg, ["/bin/sh", "-c", "stty size; read x; stty size"], pty=True,
                              size=(30, 100)))
    assert s.first.wait(30)
    s.proc.resize(50, 200)
    time.sleep(0.5)
    s.proc.send(b"\r")
    st = s.finish()
    assert st.code == 0
    lines = s.out[1].split(b"\r\n")
    assert lines[0] == b"30 100" and b"50 200" in lines, s.out


class Listener:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(1)
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]

    def receive(self) -> bytes:
        try:
            conn, _ = self.sock.accept()
            conn.settimeout(10)
            return conn.recv(100)
        finally:
            self.sock.close()


@pytest.mark.parametrize("pty", [False, True])
@pytest.mark.parametrize("sig", ["HUP", "TERM"])
def test_signals_reach_the_command_by_a_kill_exec(backend, cfg, sig, pty):
    lis = Listener()
    s = Session(backend, spec(cfg, ["/bin/sh", "-c",
                                    f"trap 'echo got-{sig} | nc {GATEWAY} {lis.port}; exit 1' {sig};"
                                    " echo ready; while :; do sleep 0.2; done"], pty=pty))
    assert s.first.wait(30)
    s.proc.signal(sig)
    assert lis.receive() == f"got-{sig}\n".encode()
    assert s.finish().code == 1


def test_the_pod_is_deleted_at_the_end(backend, cfg):
    s = Session(backend, spec(cfg, ["sleep", "1000"]))
    assert _session_pods(backend) == [s.proc.pod]
    s.proc.destroy()
    assert _session_pods(backend) == []


def test_the_reaper_deletes_pods_of_dead_sessions_only(backend, cfg):
    live = Session(backend, spec(cfg, ["sleep", "1000"]))
    dead = Session(backend, spec(cfg, ["sleep", "1000"], owner="gone:1:1"))
    removed = backend.reap(lambda lab: labels.process_alive(lab.get(labels.PROCESS, "")))
    assert removed == [dead.proc.pod]
    assert _session_pods(backend) == [live.proc.pod]
    for s in (live, dead):
        s.proc.destroy()


def test_a_missing_image_fails_fast_and_leaves_nothing(backend, cfg):
    c = copy.deepcopy(cfg)
    c["kubernetes"]["image"] = "local/no-such-image:1"
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="ErrImageNeverPull"):
        backend.start(spec(c, ["true"]))
    assert time.monotonic() - t0 < 30         # start_timeout is 60 s


def test_an_unschedulable_pod_fails_at_the_deadline_with_a_reason(backend, cfg):
    c = copy.deepcopy(cfg)
    del c["kubernetes"]["pod"]["nodeName"]    # nobody schedules it
    c["kubernetes"]["start_timeout"] = 2.0
    with pytest.raises(BackendError, match="did not start within 2s: the pod was not scheduled"):
        backend.start(spec(c, ["true"]))


def test_explicit_server_ca_and_token(backend, cfg, tmp_path):
    token = tmp_path / "token"
    token.write_text(open("/run/hatchway-k8s/pki/tokens.csv").read().split(",")[0] + "\n")
    c = copy.deepcopy(cfg)
    c["kubernetes"].update(kubeconfig=None, server="https://127.0.0.1:16443",
                           ca_file="/run/hatchway-k8s/pki/ca.crt", token_file=str(token))
    st, out = sh(KubernetesBackend(config.typed(c)), c, "echo via-token")
    assert (st.code, out[1]) == (0, b"via-token\n")
    token.write_text("wrong\n")
    with pytest.raises(BackendError, match="cannot create the pod"):
        KubernetesBackend(config.typed(c)).start(spec(c, ["true"]))


def test_api_errors_name_the_status(cfg):
    c = copy.deepcopy(cfg)
    c["kubernetes"].update(kubeconfig=None, server="https://127.0.0.1:16443",
                           ca_file="/run/hatchway-k8s/pki/ca.crt")
    with pytest.raises(KubernetesError) as e:
        KubernetesBackend(config.typed(c)).api.call("GET", "/api/v1/namespaces/default/pods")
    assert e.value.status in (401, 403)
