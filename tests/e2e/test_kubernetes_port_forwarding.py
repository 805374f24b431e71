"""Port forwarding (`ssh -L`, `-D`, `-W`) on the Kubernetes backend: the
real OpenSSH client and sshd, hatchway-netguard's real nftables table and
relay, and the REAL test cluster (tests/setup/k8s-cluster, the `k8s`
fixture): each forward is a websocket to the pod's `portforward`
subresource.  Mirrors the Docker cases of test_port_forwarding.py that
matter; its helpers (busybox httpd on a random port in the pod, `ssh -N -L`,
curl) are shared."""

import hashlib
import os
import re
import select
import subprocess
import time

import pytest

from .backends import k8s_config, pods
from .stack import run, wait_for
from .test_port_forwarding import (CONTENT, SECRET, Serving, curl, forwarder, free_port,
                                   host_secret, netguard, stop, through_L)

__all__ = ["host_secret", "netguard"]       # fixtures, used by name


@pytest.fixture
def kfw(stack, k8s, request):
    """The stack on the cluster, with the `session` settings of the test's
    `fwd` marker (default: port forwarding on); no pod may be left after."""
    marker = request.node.get_closest_marker("fwd")
    session = marker.args[0] if marker else {"port_forwarding": True}
    cfg = k8s_config(k8s, stack.tmp)
    cfg["session"] = dict(cfg["session"], **session)
    stack.reconfigure(cfg)
    yield stack
    if session.get("mode") in ("persistent", "connection"):
        run(["hatchway", "workspaces", "rm", "alice"], check=False)
    wait_for(lambda: not pods(k8s), 150, 0.2,
             what=f"pods to be deleted (left: {[p['metadata']['name'] for p in pods(k8s)]})")


def readline(stream, timeout: float = 60) -> bytes:
    """One line from a pipe, or what came before the deadline (no hang)."""
    out = b""
    deadline = time.monotonic() + timeout
    while not out.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            break
        byte = os.read(stream.fileno(), 1)
        if not byte:
            break
        out += byte
    return out


def relay_lines(hw, since: int) -> list[str]:
    return [ln for ln in hw.netguard_log()[since:].splitlines() if "hatchway-portrelay" in ln]


def test_L_reaches_the_pods_service_and_never_the_hosts(kfw, k8s, host_secret):
    srv = Serving(kfw, "alice")
    try:
        pod = pods(k8s, user="alice")[0]["metadata"]["name"]
        before = len(kfw.netguard_log())
        for dest in ("localhost", "127.0.0.1", "[::1]"):
            r = through_L(kfw, "alice", dest, srv.port)
            assert r.stdout.decode().strip() == CONTENT, (dest, r)
        assert any(f"pod={pod}" in ln for ln in relay_lines(kfw, before)), \
            kfw.netguard_log()[before:]
        # the host's loopback service: nothing listens there in the pod
        r = through_L(kfw, "alice", "localhost", host_secret)
        assert SECRET not in r.stdout and r.returncode != 0, r
        assert curl(f"http://127.0.0.1:{host_secret}/").stdout == SECRET
        # the relay said why, and keeps serving
        wait_for(lambda: "failed to connect to localhost" in kfw.netguard_log()[before:], 10,
                 what="the relay's line about nothing listening in the pod")
        r = through_L(kfw, "alice", "localhost", srv.port)
        assert r.stdout.decode().strip() == CONTENT, r
    finally:
        srv.close()


def test_W_carries_a_request_to_the_pods_port(kfw):
    srv = Serving(kfw, "alice")
    try:
        r = subprocess.run(kfw.ssh_argv("alice", None, options=("-W", f"localhost:{srv.port}")),
                           input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=60)
        assert CONTENT.encode() in r.stdout, r
    finally:
        srv.close()


def test_L_to_another_users_pod_is_refused(kfw, k8s):
    bobs = Serving(kfw, "bob", text="BOBS-CONTENT")
    mine = Serving(kfw, "alice")
    try:
        [bob_pod] = pods(k8s, user="bob")
        ip = bob_pod["status"].get("podIP")
        assert ip, "bob's pod has no address"
        # bob's pod address: sshd's PermitOpen says no (loopback only)
        r = through_L(kfw, "alice", ip, bobs.port, checked=False)
        assert b"BOBS-CONTENT" not in r.stdout and r.returncode != 0, r
        # bob's port on localhost: alice's own pod (nothing there), never bob's
        r = through_L(kfw, "alice", "localhost", bobs.port)
        assert b"BOBS-CONTENT" not in r.stdout, r
        # and bob's own forward does reach it: the refusal is not a broken path
        r = through_L(kfw, "bob", "localhost", bobs.port)
        assert r.stdout.decode().strip() == "BOBS-CONTENT", r
    finally:
        mine.close()
        bobs.close()


@pytest.mark.fwd({})
def test_without_the_policy_forwarding_is_refused(kfw):
    srv = Serving(kfw, "alice")
    try:
        r = through_L(kfw, "alice", "localhost", srv.port, checked=False)
        assert CONTENT.encode() not in r.stdout and r.returncode != 0, r
    finally:
        srv.close()
    assert "refused local port forward" in (kfw.tmp / "sshd.log").read_text(errors="replace")


@pytest.mark.parametrize("mode", ["session", "persistent"])
def test_an_editor_style_server_carries_10_mb_over_L_and_D(stack, k8s, mode, request):
    cfg = k8s_config(k8s, stack.tmp)
    cfg["session"] = dict(cfg["session"], port_forwarding=True, mode=mode)
    stack.reconfigure(cfg)
    try:
        srv = Serving(stack, "alice")
        try:
            lp, sp = free_port(), free_port()
            before = len(stack.netguard_log())
            f = forwarder(stack, "alice", "-L", f"{lp}:localhost:{srv.port}", "-D", str(sp))
            try:
                r = curl(f"http://127.0.0.1:{lp}/big.bin")
                assert r.returncode == 0 and len(r.stdout) == 10485760, r.stderr
                assert hashlib.sha256(r.stdout).hexdigest() == srv.sha
                r = curl("--socks5-hostname", f"127.0.0.1:{sp}",
                         f"http://localhost:{srv.port}/big.bin")
                assert r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == srv.sha, \
                    r.stderr
            finally:
                stop(f)
            # what a forward's setup cost, as the relay logged it (for the report, not asserted)
            ms = [int(m) for m in re.findall(r"pod=\S+ \(up in (\d+) ms",
                                             stack.netguard_log()[before:])]
            print(f"forward setup ({mode}): {ms} ms")
            assert ms, stack.netguard_log()[before:][-2000:]
        finally:
            srv.close()
    finally:
        if mode == "persistent":
            run(["hatchway", "workspaces", "rm", "alice"], check=False)
        wait_for(lambda: not pods(k8s), 150, 0.2, what="pods to be deleted")


def test_the_clients_eof_is_held_and_its_close_ends_the_forward_in_the_pod(kfw):
    """v4 portforward has no half-close (README, Security: forwarding): after
    the client's EOF the pod's server still gets to answer, and once the
    client has gone the forward ends in the pod too (nothing left over)."""
    # busybox nc in the pod: what arrives goes to /tmp/got; a second after it
    # arrived (so well after the client's EOF) the reply goes out through a FIFO
    script = ("port=$((20000 + $$ % 20000)); mkfifo /tmp/reply; "
              "(nc -l -p $port < /tmp/reply > /tmp/got; echo ENDED $(cat /tmp/got)) & "
              "exec 3>/tmp/reply; echo PORT $port; "
              "while [ ! -s /tmp/got ]; do sleep 0.1; done; sleep 1; "
              "echo late-reply >&3; wait")
    srv = subprocess.Popen(kfw.ssh_argv("alice", script), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = readline(srv.stdout).decode()
        assert line.startswith("PORT "), (line, srv.stderr.read().decode()[-500:]
                                          if srv.poll() is not None else "")
        port = int(line.split()[1])
        c = subprocess.Popen(kfw.ssh_argv("alice", None, options=("-W", f"localhost:{port}")),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            c.stdin.write(b"hello\n")
            c.stdin.close()                     # the client's EOF
            assert readline(c.stdout) == b"late-reply\n"
        finally:
            c.kill()                            # the client goes: sshd closes its socket
            c.wait(30)
        # the relay sees the close and drops the websocket: the pod's nc ends
        assert readline(srv.stdout) == b"ENDED hello\n"
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(30)


@pytest.mark.fwd({"port_forwarding": True, "mode": "persistent"})
def test_api_server_down_or_pod_gone_ends_that_forward_and_the_relay_serves_on(kfw, k8s):
    """Each failure closes the one forward with one relay log line; the next
    forward works once the cause is gone.  busybox httpd runs on as a daemon
    in the workspace pod after the session that started it."""
    if k8s["external"]:
        pytest.skip("stops and starts the test cluster's own API server")
    from .test_kubernetes_faults import cluster
    srv = Serving(kfw, "alice")
    srv.close()
    assert through_L(kfw, "alice", "localhost", srv.port).stdout.decode().strip() == CONTENT
    before = len(kfw.netguard_log())
    cluster("stop-apiserver")
    try:
        r = through_L(kfw, "alice", "localhost", srv.port)
        assert CONTENT.encode() not in r.stdout and r.returncode != 0, r
    finally:
        cluster("start-apiserver")
    # (the client's listener probe is a forward too: one line for each)
    down = [ln for ln in relay_lines(kfw, before) if "refused user=alice" in ln]
    assert down and all("cannot list session pods" in ln for ln in down), \
        relay_lines(kfw, before)
    wait_for(lambda: (lambda r: r if r.stdout.decode().strip() == CONTENT else None)(
        through_L(kfw, "alice", "localhost", srv.port)), 60, 1,
        what="a forward to work again after the API server's return")
    # the pod gone: nothing to forward to
    run(["hatchway", "workspaces", "rm", "alice"])
    wait_for(lambda: not pods(k8s), 150, 0.2, what="the workspace pod to go")
    before = len(kfw.netguard_log())
    r = through_L(kfw, "alice", "localhost", srv.port)
    assert CONTENT.encode() not in r.stdout and r.returncode != 0, r
    assert any("no running pod" in ln for ln in relay_lines(kfw, before)), \
        kfw.netguard_log()[before:]
