"""Port forwarding (`ssh -L`, `-D`, `-W`) landing in the user's container
(issue #16), through the real OpenSSH client and sshd, the shipped drop-in,
the installed .deb, hatchway-netguard's real nftables table and real
containers.

The services inside containers are busybox httpd (the demo image is busybox);
the host's own loopback service is a python http.server serving a secret that
must never arrive.  The ssh client runs as root, so only sshd's forwarding
connects (the user's uid) are redirected.
"""

import hashlib
import http.server
import re
import socket
import subprocess
import threading

import pytest

from .stack import run, wait_for

PORTS_ON = {"session": {"port_forwarding": True}}
SECRET = b"HOST-LOOPBACK-SECRET"
CONTENT = "CONTAINER-CONTENT"


@pytest.fixture(scope="module", autouse=True)
def netguard(stack):
    stack.start_netguard()
    try:
        yield stack
    finally:
        stack.stop_netguard()


class _Secret(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(SECRET)

    def log_message(self, *a):
        pass


def serve_secret(addr: str) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer((addr, 0), _Secret)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def host_secret():
    """A service on the host's loopback only: its port."""
    srv = serve_secret("127.0.0.1")
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True,
                          timeout=timeout)


class Serving:
    """An ssh session whose container serves CONTENT (and a 10 MB file) with
    busybox httpd on a random port of its own 127.0.0.1 and prints
    `PORT <n> SHA <sha256 of big.bin>`, as an editor's remote setup does;
    extra forwarding options ride on the same connection."""

    def __init__(self, hw, user, options=(), text=CONTENT):
        script = ("mkdir -p /tmp/w && echo " + text + " > /tmp/w/index.html && "
                  "head -c 10485760 /dev/urandom > /tmp/w/big.bin && "
                  "port=$((20000 + $$ % 20000)) && "
                  "httpd -p 127.0.0.1:$port -h /tmp/w && "
                  "echo PORT $port SHA $(sha256sum /tmp/w/big.bin | cut -d' ' -f1) && "
                  "exec sleep 300")
        self.p = subprocess.Popen(hw.ssh_argv(user, script, options=tuple(options)),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        line = self.p.stdout.readline().decode()
        m = re.match(r"PORT (\d+) SHA ([0-9a-f]{64})", line)
        if not m:
            self.close()
            raise AssertionError(f"no port from the container: {line!r} "
                                 f"{self.p.stderr.read().decode()[-500:]}")
        self.port, self.sha = int(m.group(1)), m.group(2)

    def close(self):
        if self.p.poll() is None:
            self.p.terminate()
        self.p.wait(30)


def forwarder(hw, user, *options) -> subprocess.Popen:
    """`ssh -N` with forwarding options; returns once its listeners exist."""
    p = subprocess.Popen(hw.ssh_argv(user, None, options=("-N", "-o", "ExitOnForwardFailure=yes",
                                                           *options)),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    ports = [int(o.split(":")[0]) if ":" in o else int(o) for o in options
             if re.match(r"^\d+(:|$)", o)]

    def listening():
        if p.poll() is not None:
            raise AssertionError(f"ssh -N exited: {p.stderr.read().decode()[-500:]}")
        return all(_open(port) for port in ports)
    wait_for(listening, 30, what="the ssh client's forward listeners")
    return p


def _open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
    p.wait(30)


def through_L(hw, user: str, dest: str, port: int, checked: bool = True):
    """curl of http://127.0.0.1:<a free port>/ through `ssh -N -L` to
    dest:port, then the forward stopped.  `checked`: the client exits if a
    forward cannot be set up (forwarder); off where sshd is expected to
    refuse, with the client's listener waited for alone."""
    lp = free_port()
    if checked:
        f = forwarder(hw, user, "-L", f"{lp}:{dest}:{port}")
    else:
        f = subprocess.Popen(hw.ssh_argv(user, None, options=("-N", "-L", f"{lp}:{dest}:{port}")),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        if not checked:
            wait_for(lambda: _open(lp), 30, what="the -L listener")
        return curl(f"http://127.0.0.1:{lp}/")
    finally:
        stop(f)


# ---------------------------------------------------------------------------


@pytest.mark.config(PORTS_ON)
def test_L_to_localhost_reaches_the_containers_service(hw):
    # the port is chosen inside the container, so the forward is a second connection
    srv = Serving(hw, "alice")
    try:
        for dest in ("localhost", "127.0.0.1", "[::1]"):
            r = through_L(hw, "alice", dest, srv.port)
            assert r.stdout.decode().strip() == CONTENT, (dest, r)
    finally:
        srv.close()


@pytest.mark.config(PORTS_ON)
def test_W_carries_a_request_to_the_containers_port(hw):
    srv = Serving(hw, "alice")
    try:
        r = subprocess.run(hw.ssh_argv("alice", None,
                                       options=("-W", f"localhost:{srv.port}")),
                           input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=60)
        assert CONTENT.encode() in r.stdout, r
    finally:
        srv.close()


@pytest.mark.config(PORTS_ON)
def test_L_never_reaches_the_hosts_loopback(hw, host_secret):
    srv = Serving(hw, "alice")
    try:
        for dest in ("localhost", "127.0.0.1", "[::1]"):
            r = through_L(hw, "alice", dest, host_secret)
            # nothing listens on that port in the container: the channel
            # opens and closes at once (curl: empty reply)
            assert SECRET not in r.stdout and r.returncode != 0, (dest, r)
        # and the host's service is there: the refusal is the redirect's doing
        assert curl(f"http://127.0.0.1:{host_secret}/").stdout == SECRET
    finally:
        srv.close()


@pytest.mark.config(PORTS_ON)
def test_L_to_another_users_container_is_refused(hw):
    bobs = Serving(hw, "bob", text="BOBS-CONTENT")
    mine = Serving(hw, "alice")
    try:
        ctr = hw.one_container(user="bob")
        ip = run(["docker", "inspect", "-f",
                  "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                  ctr["ID"]]).stdout.split()
        assert ip, "bob's container has no address"
        # bob's address: sshd's PermitOpen says no (loopback only)
        r = through_L(hw, "alice", ip[0], bobs.port, checked=False)
        assert b"BOBS-CONTENT" not in r.stdout and r.returncode != 0, r
        # bob's port on localhost: alice's own container answers (or nothing), never bob's
        r = through_L(hw, "alice", "localhost", bobs.port)
        assert b"BOBS-CONTENT" not in r.stdout, r
    finally:
        mine.close()
        bobs.close()


@pytest.mark.config({})
def test_without_the_policy_forwarding_is_refused(hw, host_secret):
    srv = Serving(hw, "alice")
    try:
        for port in (srv.port, host_secret):
            r = through_L(hw, "alice", "localhost", port, checked=False)
            assert CONTENT.encode() not in r.stdout and SECRET not in r.stdout, r
            assert r.returncode != 0
    finally:
        srv.close()
    assert "refused local port forward" in (hw.tmp / "sshd.log").read_text(errors="replace")


@pytest.mark.parametrize("mode", ["session", "connection", "persistent"])
def test_an_editor_style_server_carries_10_mb_over_L_and_D(hw, mode):
    hw.reconfigure({"session": {"port_forwarding": True, "mode": mode}})
    srv = Serving(hw, "alice")
    try:
        lp, sp = free_port(), free_port()
        f = forwarder(hw, "alice", "-L", f"{lp}:localhost:{srv.port}", "-D", str(sp))
        try:
            r = curl(f"http://127.0.0.1:{lp}/big.bin")
            assert r.returncode == 0 and len(r.stdout) == 10485760, r.stderr
            assert hashlib.sha256(r.stdout).hexdigest() == srv.sha
            r = curl("--socks5-hostname", f"127.0.0.1:{sp}", f"http://localhost:{srv.port}/big.bin")
            assert r.returncode == 0 and hashlib.sha256(r.stdout).hexdigest() == srv.sha, r.stderr
        finally:
            stop(f)
    finally:
        srv.close()
        if mode == "persistent":
            run(["hatchway", "workspaces", "rm", "alice"], check=False)


@pytest.mark.config(PORTS_ON)
def test_without_the_guard_no_forwarding_option_is_given(hw, netguard, host_secret):
    """Fail closed: with the table gone, hatchway-keys prints no
    `port-forwarding` (the canary fails), so sshd refuses the forward
    instead of reaching the host's loopback."""
    hw.stop_netguard()
    before = len(hw.auth_log())
    try:
        r = through_L(hw, "alice", "localhost", host_secret, checked=False)
        assert SECRET not in r.stdout and r.returncode != 0, r
        wait_for(lambda: "port forwarding off" in hw.auth_log()[before:], 10,
                 what="hatchway-keys to log why")
    finally:
        hw.start_netguard()


def as_user(user: str, *argv) -> subprocess.CompletedProcess:
    """A host process of `user`, as sshd's per-connection child is one."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                           *argv], capture_output=True, timeout=60)


@pytest.mark.config(PORTS_ON)
def test_the_table_touches_covered_users_only_and_rejects_their_other_traffic(hw, host_secret):
    bridge = run(["ip", "-4", "-o", "addr", "show", "docker0"]).stdout.split()[3].split("/")[0]
    anywhere = serve_secret("0.0.0.0")
    try:
        port = anywhere.server_address[1]
        # carol is no Hatchway user: her loopback and the bridge are the host's as ever
        for url in (f"http://127.0.0.1:{host_secret}/", f"http://{bridge}:{port}/"):
            r = as_user("carol", "curl", "-sS", "--max-time", "10", url)
            assert r.stdout == SECRET, (url, r)
        # alice's connects to loopback go to the relay (she has no container:
        # closed at once), and to anything else are rejected
        for url in (f"http://127.0.0.1:{host_secret}/", f"http://[::1]:{host_secret}/",
                    f"http://{bridge}:{port}/"):
            r = as_user("alice", "curl", "-sS", "--max-time", "10", url)
            assert SECRET not in r.stdout and r.returncode != 0, (url, r)
    finally:
        anywhere.shutdown()
        anywhere.server_close()


def test_the_relay_answers_nothing_it_cannot_attribute(hw):
    """A direct connect to the relay port (no redirect, so no original
    destination) gets neither the canary banner nor a forward."""
    with socket.create_connection(("127.0.0.1", 870), timeout=10) as s:
        s.settimeout(10)
        # nothing sent (a close with unread data would be a reset): the relay
        # closes at once, with no banner
        assert s.recv(100) == b""
