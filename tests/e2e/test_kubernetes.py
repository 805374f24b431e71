"""The Kubernetes backend end to end: the real sshd stack against a REAL
single-node cluster (kube-apiserver + kubelet 1.20 built from Debian's source
package, see tests/setup/k8s-cluster), one pod per session.

The same checks as the Docker conformance tests where they apply: exit codes
and 128+N, stdout/stderr separation, environment, stdin EOF, every byte value
both ways, pty size and resize, HUP reaching the command on disconnect, TERM
forwarded, and no pod left behind after any fault.

`HATCHWAY_E2E_KUBECONFIG=/path` runs the same tests against that cluster
instead (image from HATCHWAY_E2E_K8S_IMAGE, default busybox; the cluster must
be able to schedule a pod and reach this host for the HUP check).
"""

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pexpect
import pytest

from .stack import ROOT, SlowRead, assert_200_mb_out, run, wait_for

PROMPT = r"[#$] "
CLUSTER = ROOT / "tests/setup/k8s-cluster"
STATE = Path("/run/hatchway-k8s")
EXTERNAL = os.environ.get("HATCHWAY_E2E_KUBECONFIG")
GATEWAY = "10.244.0.1"          # the test cluster's pod bridge: pods reach the host here



@pytest.fixture(scope="module")
def cluster():
    """The cluster for this module: built/started once, torn down after."""
    if EXTERNAL:
        yield {"kubeconfig": EXTERNAL, "external": True}
        return
    import fcntl
    lock = open("/run/lock/hatchway-k8s-cluster.lock", "w")    # shared with tests/k8s
    fcntl.flock(lock, fcntl.LOCK_EX)
    t0 = time.monotonic()
    p = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        subprocess.run([str(CLUSTER), "down"], capture_output=True, timeout=300)
        lock.close()
        pytest.fail(f"cannot start the test cluster:\n{p.stderr[-4000:]}")
    print(f"\ncluster up in {time.monotonic() - t0:.1f}s")
    try:
        yield {"kubeconfig": str(STATE / "admin.kubeconfig"), "external": False}
    finally:
        d = subprocess.run([str(CLUSTER), "down"], capture_output=True, text=True, timeout=300)
        lock.close()
        assert d.returncode == 0, d.stderr


def _inline_kubeconfig(src: str, dst: Path) -> None:
    """The cluster's admin kubeconfig with its files inlined, readable by the
    daemon's user (hatchway) and nobody else."""
    import yaml
    cfg = yaml.safe_load(Path(src).read_text())
    for section, key in (("clusters", "cluster"), ("users", "user")):
        for item in cfg[section]:
            entry = item[key]
            for field in ("certificate-authority", "client-certificate", "client-key"):
                if field in entry:
                    entry[field + "-data"] = base64.b64encode(
                        Path(entry.pop(field)).read_bytes()).decode()
    dst.write_text(json.dumps(cfg))
    shutil.chown(dst, "root", "hatchway")
    os.chmod(dst, 0o640)


def k8s_config(cluster, tmp: Path, **conn) -> dict:
    kc = tmp / "kubeconfig"
    if not kc.exists():
        _inline_kubeconfig(cluster["kubeconfig"], kc)
    pod = {"containers": [{"name": "session", "imagePullPolicy": "Never"}]}
    image = os.environ.get("HATCHWAY_E2E_K8S_IMAGE", "busybox")
    if not cluster["external"]:
        pod["nodeName"] = "localhost"       # the test cluster has no scheduler
        image = "local/busybox:1"
    else:
        pod["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    return {"backend": "kubernetes",
            "kubernetes": dict({"kubeconfig": str(kc)} if not conn else conn,
                               namespace="default", image=image, pod=pod,
                               start_timeout="60s"),
            # kill exec + the command's own HUP handling take longer than a docker kill
            "session": {"stop_grace": "10s"}}


def pods(cluster, **labels) -> list[dict]:
    sel = ",".join(["io.hatchway.managed=true"] +
                   [f"io.hatchway.{k}={v}" for k, v in labels.items()])
    return _api(cluster, f"/api/v1/namespaces/default/pods?labelSelector={sel}")["items"]


def _api(cluster, path: str, method: str = "GET"):
    """One call with the kubeconfig's first cluster and user (files or inline
    data, client certificate or token): the test's own view of the cluster."""
    import ssl
    import tempfile
    import urllib.request

    import yaml
    cfg = yaml.safe_load(Path(cluster["kubeconfig"]).read_text())
    cl, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    ctx = ssl.create_default_context(
        cafile=cl.get("certificate-authority"),
        cadata=base64.b64decode(cl["certificate-authority-data"]).decode()
        if "certificate-authority-data" in cl else None)
    headers = {}
    if "token" in user:
        headers["Authorization"] = f"Bearer {user['token']}"
    if "client-certificate" in user:
        ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    elif "client-certificate-data" in user:
        with tempfile.TemporaryDirectory() as d:
            for field in ("client-certificate-data", "client-key-data"):
                Path(d, field).write_bytes(base64.b64decode(user[field]))
            ctx.load_cert_chain(f"{d}/client-certificate-data", f"{d}/client-key-data")
    req = urllib.request.Request(cl["server"] + path, method=method, headers=headers)
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def kw(stack, cluster):
    """The stack on the Kubernetes backend; after each test, no session pod may be left."""
    stack.reconfigure(k8s_config(cluster, stack.tmp))
    yield stack
    wait_for(lambda: not pods(cluster), 30, 0.2, what="session pods to be deleted")


def test_output_streams_exit_status_and_it_is_a_pod(kw, cluster):
    p = kw.ssh("alice", "echo hello; echo oops >&2; hostname; exit 7")
    assert p.returncode == 7, p.stderr
    out = p.stdout.decode().splitlines()
    assert out[0] == "hello" and out[1].startswith("hatchway-alice-")
    assert p.stderr == b"oops\n"


@pytest.mark.parametrize("code", [0, 1, 42, 127, 255])
def test_exit_statuses_pass_through_exactly(kw, code):
    assert kw.ssh("alice", f"exit {code}").returncode == code


@pytest.mark.parametrize("sig,code", [("HUP", 129), ("KILL", 137), ("TERM", 143)])
def test_death_by_signal_is_128_plus_n(kw, sig, code):
    assert kw.ssh("alice", f"kill -{sig} $$").returncode == code


def test_only_allowlisted_environment_arrives(kw):
    env = dict(os.environ, LANG="C.UTF-8", FOO="bar")
    p = subprocess.run(kw.ssh_argv("alice", "env", options=("-o", "SendEnv=LANG FOO")),
                       env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert "LANG=C.UTF-8" in lines and not any(ln.startswith("FOO=") for ln in lines)


def test_the_pod_is_labelled_never_restarts_and_has_no_token(kw, cluster):
    p = subprocess.Popen(kw.ssh_argv("alice", "echo ready; sleep 1000"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        [pod] = pods(cluster, user="alice")
        labels, notes = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels["io.hatchway.mode"] == "session" and len(labels["io.hatchway.session"]) == 32
        # the owner token has ':' (not a label value): an annotation the reaper reads
        assert notes["io.hatchway.process"].count(":") == 2
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["automountServiceAccountToken"] is False
    finally:
        p.kill()
        p.wait()


def test_stdin_eof_reaches_the_command_and_output_and_status_survive_it(kw):
    # v4.channel.k8s.io cannot half-close: the FIFO feeder carries EOF
    p = kw.ssh("alice", "cat; wc -c </dev/null; sleep 1; echo done; exit 3", input=b"a\nb\n")
    assert (p.returncode, p.stdout) == (3, b"a\nb\n0\ndone\n"), p.stderr
    p = kw.ssh("alice", "wc -c", input=b"x" * 100000)
    assert (p.returncode, p.stdout.strip()) == (0, b"100000")


def test_every_byte_value_both_ways(kw):
    data = bytes(range(256)) * 4096         # 1 MiB; python3-kubernetes 22.6 would mangle it
    p = kw.ssh("alice", "cat", input=data)
    assert p.returncode == 0 and p.stdout == data
    p = kw.ssh("alice", "printf '\\000\\200\\377'")
    assert p.stdout == b"\x00\x80\xff"


def test_pty_size_resize_and_exit_code(kw):
    c = kw.spawn("alice", dimensions=(30, 100))
    c.delaybeforesend = None
    c.expect(PROMPT)
    c.sendline("stty size")
    c.expect(r"30 100\r\n")
    for rows, cols in ((50, 200), (20, 60)):
        c.setwinsize(rows, cols)
        # a resize is asynchronous: ask until the new size shows (bounded)
        end = time.monotonic() + 20
        while True:
            c.sendline("stty size")
            try:
                c.expect(rf"{rows} {cols}\r\n", timeout=2)
                break
            except pexpect.TIMEOUT:
                assert time.monotonic() < end, f"size {rows}x{cols} never arrived"
    c.sendline("exit 4")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 4


def test_early_output_is_not_lost(kw):
    p = kw.ssh("alice", "echo first; exit 0")
    assert p.stdout == b"first\n"


def test_term_reaching_hatchway_shell_is_forwarded(kw):
    p = subprocess.Popen(kw.ssh_argv("alice", "trap 'echo got TERM; exit 3' TERM; "
                                              "echo ready; while :; do sleep 0.1; done"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    pid = int(run(["pgrep", "-n", "-u", "alice", "-f", "hatchway-shell"]).stdout)
    os.kill(pid, signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert (p.returncode, out) == (3, b"got TERM\n")


class Listener:
    """A TCP listener on the host that pods reach through their bridge gateway:
    how a command in a pod that is about to be deleted can tell us it got HUP."""

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


def _hup_reporter(port: int) -> str:
    return (f"trap 'echo got-HUP | nc {GATEWAY} {port}; exit 1' HUP; echo ready; "
            "while :; do sleep 0.2; done")


@pytest.mark.skipif(bool(EXTERNAL), reason="needs the test cluster's pod bridge")
def test_pty_disconnect_delivers_hup_then_deletes_the_pod(kw, cluster):
    lis = Listener()
    c = kw.spawn("alice", _hup_reporter(lis.port))
    c.expect("ready")
    wait_for(lambda: len(pods(cluster, user="alice")) == 1, 20, what="the pod")
    os.kill(c.pid, signal.SIGKILL)
    assert lis.wait() == [b"got-HUP\n"]
    wait_for(lambda: not pods(cluster), 30, 0.2, what="the pod to be deleted")
    c.close(force=True)


@pytest.mark.skipif(bool(EXTERNAL), reason="needs the test cluster's pod bridge")
def test_disconnect_without_pty_delivers_hup(kw, cluster):
    lis = Listener()
    p = subprocess.Popen(kw.ssh_argv("alice", _hup_reporter(lis.port)), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    os.kill(p.pid, signal.SIGKILL)
    assert lis.wait() == [b"got-HUP\n"]
    wait_for(lambda: not pods(cluster), 30, 0.2, what="the pod to be deleted")
    p.wait()


def test_kill_9_of_the_session_process_leaves_no_pod(kw, cluster):
    p = subprocess.Popen(kw.ssh_argv("alice", "sleep 1000"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pod = wait_for(lambda: (lambda ps: ps[0] if len(ps) == 1 else None)(
        pods(cluster, user="alice")), 30, 0.2, what="the session pod")
    owner = int(pod["metadata"]["annotations"]["io.hatchway.process"].split(":")[1])
    os.kill(owner, signal.SIGKILL)
    # the daemon sees its child die abnormally and its reaper deletes the pod
    wait_for(lambda: not pods(cluster), 30, 0.2, what="the reaper to delete the pod")
    p.communicate(timeout=30)
    assert p.returncode == 255
    assert "session process is gone" in kw.daemon_log()


def test_kill_9_of_the_client_leaves_no_pod(kw, cluster):
    p = subprocess.Popen(kw.ssh_argv("alice", "sleep 1000"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: len(pods(cluster, user="alice")) == 1, 30, 0.2, what="the pod")
    os.kill(p.pid, signal.SIGKILL)
    wait_for(lambda: not pods(cluster), 30, 0.2, what="the pod to be deleted")
    p.wait()


def test_a_missing_image_fails_fast_with_a_clear_message(stack, cluster):
    cfg = k8s_config(cluster, stack.tmp)
    cfg["kubernetes"]["image"] = "local/no-such-image:1"
    stack.reconfigure(cfg)
    t0 = time.monotonic()
    p = stack.ssh("alice", "true")
    assert p.returncode == 255
    assert b"ErrImageNeverPull" in p.stderr, p.stderr
    assert time.monotonic() - t0 < 50        # well before start_timeout (60 s)
    wait_for(lambda: not pods(cluster), 30, 0.2, what="the failed pod to be deleted")


@pytest.mark.skipif(bool(EXTERNAL), reason="uses the test cluster's static token")
def test_explicit_server_ca_and_token(stack, cluster):
    ca = stack.tmp / "k8s-ca.crt"
    token = stack.tmp / "k8s-token"
    shutil.copy(STATE / "pki/ca.crt", ca)
    tok = next(line.split(",")[0] for line in (STATE / "pki/tokens.csv").read_text().splitlines())
    token.write_text(tok + "\n")
    for f in (ca, token):
        shutil.chown(f, "root", "hatchway")
        os.chmod(f, 0o640)
    stack.reconfigure(k8s_config(cluster, stack.tmp, server="https://127.0.0.1:16443",
                                 ca_file=str(ca), token_file=str(token)))
    p = stack.ssh("alice", "echo via-token")
    assert (p.returncode, p.stdout) == (0, b"via-token\n"), p.stderr
    wait_for(lambda: not pods(cluster), 30, 0.2, what="session pods to be deleted")


def test_200_mb_out_is_byte_identical(kw):
    assert_200_mb_out(kw, timeout=180)


def test_200_mb_in_is_byte_identical(kw, tmp_path):
    src = tmp_path / "in"
    with open(src, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    with open(src, "rb") as f:
        p = subprocess.run(kw.ssh_argv("alice", "sha256sum; echo done"), stdin=f,
                           capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0].decode() == want and p.stdout.endswith(b"done\n")


def test_a_slow_reader_keeps_the_session_process_small(kw, cluster):
    # A reader far slower than the websocket relay: everything behind it must
    # wait in the kernel's buffers, not pile up in the session process.
    size, rate = 200 << 20, 16 << 20
    p = subprocess.Popen(kw.ssh_argv("alice", f"head -c {size} /dev/urandom > /tmp/d; "
                                              "sha256sum /tmp/d >&2; cat /tmp/d"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         bufsize=0)
    try:
        pod = wait_for(lambda: (lambda ps: ps[0] if len(ps) == 1 else None)(
            pods(cluster, user="alice")), 30, 0.2, what="the session pod")
        pid = int(pod["metadata"]["annotations"]["io.hatchway.process"].split(":")[1])
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
