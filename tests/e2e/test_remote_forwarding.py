"""Remote port forwarding (`ssh -R P:HOST:PORT`) landing in the user's
container, through the real OpenSSH client and sshd, the shipped drop-in, the
installed .deb, hatchway-netguard's real nftables table and real containers.

sshd listens on the host's loopback as the user; the guard keeps every port
of any `session.remote_forward_ports` list from every host process but the
relay's (user hatchway); the relay listens on 127.0.0.1:P inside the user's
container and joins what connects there to sshd's listener, so, over SSH, to
the client's HOST:PORT.

The client's service is a python http.server in this test process ("the
origin", on the test's loopback, as a developer's laptop would run it)
serving a token; the in-container clients are busybox wget (the demo image is
busybox).  The listener appears in the container up to about a second after
the forward and the container both exist, so every in-container client
retries (RETRY); nothing here is timed.
"""

import hashlib
import http.server
import os
import socket
import subprocess
import threading

import pytest

from .stack import run, wait_for

# Ports nothing on the host uses; each test has its own, so that no test meets
# another's TIME_WAIT or late listener.  The int and the range forms both.
RANGE = [47101, "47110-47139"]
RFWD = {"session": {"remote_forward_ports": RANGE}}
OUTSIDE = 47150                     # in no list of RFWD
UNLISTED = 47190                    # in no list of any config here
RESERVED_LOW, RESERVED_HIGH = 47000, 47999   # the origin keeps out of these
TOKEN = f"RFWD-CLIENT-TOKEN-{os.urandom(4).hex()}"
IMPOSTOR = b"IMPOSTOR-ON-HOST-LOOPBACK"
BIG = os.urandom(10 << 20)
BIG_SHA = hashlib.sha256(BIG).hexdigest()
GROUP = "hw-rfwd"


def retry_def(seconds: int) -> str:
    """A shell function for the container: `retry CMD...` runs CMD until it
    succeeds, 0.1 s apart, for `seconds` at most (a deadline, not a count:
    one try may itself take up to its `timeout`)."""
    return (f'retry() {{ end=$(($(date +%s) + {seconds})); while :; do "$@" && return 0; '
            '[ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.1; done; }; ')


# 30 s, where the listener needs about 1 s.  Every wget inside runs under
# `timeout`: busybox's default would wait 15 minutes on a connection accepted
# and never answered (and this busybox's wget -T crashes, SIGSEGV, on every
# request).
RETRY = retry_def(30)
# Where a container's listening TCP sockets are, as text for listening_ports()
LISTENERS = "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true"


@pytest.fixture(scope="module", autouse=True)
def netguard(stack):
    # The admin's order: the config with its -R ports first, then the guard,
    # which reserves them when it loads its table.
    stack.reconfigure(RFWD)
    stack.start_netguard()
    try:
        yield stack
    finally:
        stack.stop_netguard()


class _Origin(http.server.BaseHTTPRequestHandler):
    """GET / -> the token; GET /big.bin -> BIG; POST /sink -> `<length> <sha256>`
    of the body.  Every request is recorded in the server's `seen`."""

    def _reply(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.seen.append(("GET", self.path))
        self._reply(BIG if self.path == "/big.bin" else (TOKEN + "\n").encode())

    def do_POST(self):
        self.server.seen.append(("POST", self.path))
        n = int(self.headers.get("Content-Length") or 0)
        digest, left = hashlib.sha256(), n
        while left:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        self._reply(f"{n - left} {digest.hexdigest()}\n".encode())

    def log_message(self, *a):
        pass


class _Impostor(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.seen.append(("GET", self.path))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(IMPOSTOR)

    def log_message(self, *a):
        pass


class _Server6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def serve(handler, addr: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    cls = _Server6 if ":" in addr else http.server.ThreadingHTTPServer
    srv = cls((addr, port), handler)
    srv.seen = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def close(srv) -> None:
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def origin():
    """The client's service.  Its port stays out of the 47xxx block: a
    reserved port would refuse this root-run ssh client's own connects."""
    while True:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
        if not RESERVED_LOW <= srv.server_address[1] <= RESERVED_HIGH:
            break
        srv.server_close()
    srv.seen = []
    srv.port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        close(srv)


@pytest.fixture
def rfwd_group():
    """alice (not bob) in a group of her own; hatchway-keys reads her groups
    at each login."""
    run(["groupadd", "-f", GROUP])
    run(["gpasswd", "-a", "alice", GROUP])
    try:
        yield GROUP
    finally:
        run(["gpasswd", "-d", "alice", GROUP], check=False)
        run(["groupdel", GROUP], check=False)


# ------------------------------------------------------------------ helpers


def r_opt(port: int, origin_port: int) -> tuple:
    return ("-o", "ExitOnForwardFailure=yes", "-R", f"{port}:127.0.0.1:{origin_port}")


def host_listeners(port: int) -> set[str]:
    """The host addresses with a listening TCP socket on `port` (ss, so no
    connect: the guard would refuse this root process's)."""
    out = run(["ss", "-Hltn", f"sport = :{port}"]).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def listening_ports(text: str) -> set[int]:
    """The ports in LISTEN state (0A) in /proc/net/tcp{,6} text."""
    ports = set()
    for line in text.splitlines():
        f = line.split()
        if len(f) > 3 and f[3] == "0A" and ":" in f[1]:
            ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def inside(ctr: dict, script: str, check: bool = True) -> subprocess.CompletedProcess:
    """`sh -c script` in a session's container, run by the test itself
    (docker exec), not through Hatchway."""
    return run(["docker", "exec", ctr["ID"], "sh", "-c", script], check=check)


def ctr_listening(ctr: dict, port: int) -> bool:
    return port in listening_ports(inside(ctr, LISTENERS, check=False).stdout)


def rforward(hw, user: str, port: int, origin_port: int, where=("127.0.0.1", "[::1]")):
    """`ssh -N -R port:127.0.0.1:origin_port`; returns once sshd listens on
    the host on one of `where` (sshd accepted the forward)."""
    p = subprocess.Popen(hw.ssh_argv(user, None, options=("-N", *r_opt(port, origin_port))),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)

    def up():
        if p.poll() is not None:
            raise AssertionError(f"ssh -N -R exited ({p.returncode}): "
                                 f"{p.stderr.read().decode()[-500:]}")
        return host_listeners(port) & set(where)
    try:
        wait_for(up, 30, what=f"sshd's -R listener on port {port}")
    except BaseException:
        stop(p)
        raise
    return p


def refused_R(hw, user: str, port: int, origin_port: int) -> subprocess.CompletedProcess:
    """`ssh -N -R` that must fail: it exits at once with ExitOnForwardFailure.
    (Were the forward granted, ssh -N would stay: the timeout fails the test.)"""
    r = hw.ssh(user, None, options=("-N", *r_opt(port, origin_port)), timeout=60)
    assert r.returncode == 255, r
    assert f"remote port forwarding failed for listen port {port}".encode() in r.stderr, r.stderr
    return r


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
    p.wait(30)


def as_user(user: str, *argv) -> subprocess.CompletedProcess:
    """A host process of `user`."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                           *argv], capture_output=True, timeout=60)


def root_get(addr: str, port: int):
    """An HTTP GET from this (root) process to addr:port: "refused", or what
    came back."""
    try:
        s = socket.create_connection((addr, port), timeout=10)
    except ConnectionRefusedError:
        return "refused"
    with s:
        s.settimeout(10)
        try:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError as e:
            data += f" ({e})".encode()
        return data


class Holding:
    """`user`'s session with `-R port` that has fetched the token through it
    (so the forward and its in-container listener are up) and then sleeps."""

    def __init__(self, hw, user: str, port: int, origin_port: int):
        script = (RETRY + f"retry timeout 10 wget -qO- http://127.0.0.1:{port}/ && echo READY && "
                  "exec sleep 300")
        self.p = subprocess.Popen(hw.ssh_argv(user, script, options=r_opt(port, origin_port)),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        got = self.p.stdout.readline() + self.p.stdout.readline()
        if got != f"{TOKEN}\nREADY\n".encode():
            self.close()
            raise AssertionError(f"the forward did not serve: {got!r} "
                                 f"{self.p.stderr.read().decode()[-500:]}")

    def close(self):
        stop(self.p)


# ------------------------------------------------------------------ it works


@pytest.mark.config(RFWD)
def test_R_serves_the_clients_service_inside_the_container(hw, origin):
    port = 47101
    before = len(origin.seen)
    # the listener is on 127.0.0.1, and on ::1 too when the container has it
    script = (RETRY + f"retry timeout 10 wget -qO- http://127.0.0.1:{port}/ || exit 1; "
              "if grep -q '^00000000000000000000000000000001 ' /proc/net/if_inet6 2>/dev/null; "
              f"then echo V6; retry timeout 10 wget -qO- 'http://[::1]:{port}/'; "
              "else echo NOV6; fi")
    r = hw.ssh("alice", script, options=r_opt(port, origin.port))
    assert r.returncode == 0, r
    lines = r.stdout.decode().splitlines()
    assert lines[0] == TOKEN, r
    assert lines[1:] in (["NOV6"], ["V6", TOKEN]), r
    # the token came from the origin, by the client's ssh
    assert ("GET", "/") in origin.seen[before:]


@pytest.mark.config(RFWD)
def test_R_carries_10_mb_each_way_byte_exact(hw, origin):
    port = 47110
    # client -> container: the origin's BIG; container -> client: 10 MB and
    # more of the container's own, POSTed to the origin, which answers its
    # length and hash.  Text: busybox wget's --post-file stops at a NUL byte.
    script = (RETRY + f"retry timeout 60 wget -qO /tmp/big http://127.0.0.1:{port}/big.bin "
              "|| exit 1; sha256sum /tmp/big; "
              "head -c 7864320 /dev/urandom | base64 > /tmp/up && wc -c < /tmp/up && "
              "sha256sum /tmp/up && "
              f"retry timeout 60 wget -qO- --post-file /tmp/up http://127.0.0.1:{port}/sink")
    r = hw.ssh("alice", script, options=r_opt(port, origin.port))
    assert r.returncode == 0, r
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 4, r
    assert lines[0].split()[0] == BIG_SHA
    up_size, up_sha = int(lines[1]), lines[2].split()[0]
    assert up_size > 10 << 20
    assert lines[3] == f"{up_size} {up_sha}"


@pytest.mark.config(RFWD)
def test_a_forward_made_before_any_session_reaches_the_next_sessions_container(hw, origin):
    port = 47118
    f = rforward(hw, "alice", port, origin.port)
    try:
        # -N in session mode: no session, so no container to listen in
        assert hw.containers(user="alice") == []
        r = hw.ssh("alice", RETRY + f"retry timeout 10 wget -qO- http://127.0.0.1:{port}/")
        assert (r.returncode, r.stdout.decode()) == (0, TOKEN + "\n"), r
    finally:
        stop(f)


@pytest.mark.config(RFWD)
def test_the_listener_lands_in_the_running_container_and_goes_with_the_forward(hw, origin):
    port = 47117
    holder = subprocess.Popen(hw.ssh_argv("alice", "echo up; exec sleep 300"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"up\n"
        ctr = hw.one_container(user="alice")
        assert not ctr_listening(ctr, port)
        f = rforward(hw, "alice", port, origin.port)
        try:
            r = inside(ctr, RETRY + f"retry timeout 10 wget -qO- http://127.0.0.1:{port}/")
            assert r.stdout == TOKEN + "\n"
            assert ctr_listening(ctr, port)
        finally:
            stop(f)
        # the forward is gone: so is the container's listener (about 1-2 s)
        wait_for(lambda: not ctr_listening(ctr, port), 30,
                 what="the in-container listener to close")
        r = inside(ctr, f"timeout 5 wget -qO- http://127.0.0.1:{port}/", check=False)
        assert r.returncode != 0 and TOKEN not in r.stdout, r
        wait_for(lambda: host_listeners(port) == set(), 30, what="sshd's listener to close")
    finally:
        stop(holder)


# ------------------------------------------------------------------ it does not leak


@pytest.mark.config(RFWD)
def test_no_host_process_reaches_a_users_R_listener(hw, origin):
    port = 47112
    held = Holding(hw, "alice", port, origin.port)
    try:
        where = host_listeners(port)
        assert "127.0.0.1" in where, where          # sshd's, as alice
        seen = len(origin.seen)
        # root, in this process: reset by the guard, on every loopback address
        # sshd listens on
        for addr in sorted(where):
            got = root_get(addr.strip("[]"), port)
            assert got == "refused", (addr, got)
        # other host users: carol (no Hatchway user), bob and alice themselves
        # (covered: their loopback connects go to the -L relay, off here)
        for user in ("carol", "bob", "alice"):
            for url in (f"http://127.0.0.1:{port}/", f"http://[::1]:{port}/"):
                r = as_user(user, "curl", "-sS", "--max-time", "10", url)
                assert r.returncode != 0 and TOKEN.encode() not in r.stdout, (user, url, r)
        # none of it reached the client's service
        assert origin.seen[seen:] == []
        # while the forward itself still serves alice's container
        r = inside(hw.one_container(user="alice"), f"timeout 10 wget -qO- http://127.0.0.1:{port}/")
        assert r.stdout == TOKEN + "\n"
    finally:
        held.close()


@pytest.mark.config(RFWD)
def test_a_listed_port_is_reserved_on_the_hosts_loopback_without_any_forward(hw):
    """The guard refuses root's connects to a listed port whoever listens
    there; the same listener on an unlisted port answers."""
    reserved, control = 47113, UNLISTED
    servers = []
    try:
        for addr in ("127.0.0.1", "127.0.0.5", "::1"):
            servers.append(serve(_Impostor, addr, reserved))
        servers.append(serve(_Impostor, "127.0.0.1", control))
        assert IMPOSTOR in root_get("127.0.0.1", control)
        for addr in ("127.0.0.1", "127.0.0.5", "::1"):
            assert root_get(addr, reserved) == "refused", addr
        assert [s.seen for s in servers[:3]] == [[], [], []]
    finally:
        for s in servers:
            close(s)


@pytest.mark.config(RFWD)
def test_the_relay_joins_only_the_users_own_sshd_listener(hw, origin):
    """root holds 127.0.0.1:P, so alice's sshd gets only [::1]:P: the
    listener on 127.0.0.1:P is not alice's, and nothing from it may reach
    her container (nor her container's bytes it), whichever address the
    relay tries."""
    port = 47119
    impostor = serve(_Impostor, "127.0.0.1", port)
    try:
        f = rforward(hw, "alice", port, origin.port, where=("[::1]",))
        try:
            # up to 10 s for the container's listener (if the relay makes
            # one here at all), then a few requests, each given 3 s
            listening = (f"grep -qE ':{port:04X} [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6 "
                         "2>/dev/null")
            r = hw.ssh("alice", retry_def(10) + f"retry {listening} "
                                "&& echo LISTENER || echo NO-LISTENER; "
                                f"for i in 1 2 3 4 5; do timeout 3 wget -qO- "
                                f"http://127.0.0.1:{port}/ 2>&1; sleep 0.2; done; echo END")
            print(r.stdout.decode())
            assert r.stdout.endswith(b"END\n"), r
            assert IMPOSTOR not in r.stdout, r
            assert impostor.seen == []
        finally:
            stop(f)
    finally:
        close(impostor)


@pytest.mark.config(RFWD)
def test_another_user_neither_sees_nor_takes_a_held_port(hw, origin):
    port = 47116
    held = Holding(hw, "alice", port, origin.port)
    try:
        # bob's container: nothing there listens on the port, and for 3 s and
        # more (alice's listener took about 1 s to appear) no request gets the token
        r = hw.ssh("bob", "for i in $(seq 30); do timeout 2 wget -qO- "
                          f"http://127.0.0.1:{port}/ 2>/dev/null && echo GOT; sleep 0.1; done; "
                          "echo LISTENERS; " + LISTENERS)
        assert r.returncode == 0, r
        out = r.stdout.decode()
        assert TOKEN not in out and "GOT" not in out, out
        assert port not in listening_ports(out.split("LISTENERS", 1)[1])
        # bob's own -R on the port alice holds: sshd cannot listen there
        refused_R(hw, "bob", port, origin.port)
    finally:
        held.close()


# ------------------------------------------------------------------ refused


@pytest.mark.config(RFWD)
def test_a_port_outside_the_list_or_a_dynamic_one_is_refused(hw, origin):
    refused_R(hw, "alice", OUTSIDE, origin.port)
    assert host_listeners(OUTSIDE) == set()
    refused_R(hw, "alice", 0, origin.port)


@pytest.mark.config(RFWD)
def test_with_only_R_on_L_stays_refused(hw):
    """The two directions are independent: the -R list gives no -L/-W."""
    log = hw.tmp / "sshd.log"
    before = len(log.read_text(errors="replace"))
    r = hw.ssh("alice", None, options=("-W", "127.0.0.1:47101"), timeout=60)
    assert r.returncode == 255, r
    assert b"stdio forwarding failed" in r.stderr, r.stderr
    # sshd's refusal (the key's permitopen: "...but the request was denied";
    # no port-forwarding at all: "refused local port forward"), not some
    # other failure
    def refused():
        new = log.read_text(errors="replace")[before:]
        return ("to connect to host 127.0.0.1 port 47101, but the request was denied" in new
                or "refused local port forward" in new)
    wait_for(refused, 10, what="sshd to log the refusal")


@pytest.mark.config(RFWD)
def test_without_the_guard_R_is_refused(hw, netguard, origin):
    """Fail closed: with the guard's table gone the canary fails and the key
    line carries no port forwarding at all."""
    hw.stop_netguard()
    try:
        refused_R(hw, "alice", 47115, origin.port)
        assert host_listeners(47115) == set()
    finally:
        hw.start_netguard()


@pytest.mark.parametrize("policy", [
    pytest.param({}, marks=pytest.mark.config({}), id="all-off"),
    pytest.param({"session": {"port_forwarding": True}},
                 marks=pytest.mark.config({"session": {"port_forwarding": True}}), id="only-L"),
])
def test_without_a_list_R_is_refused(hw, origin, policy):
    # (-L on alone: its key options carry no permitlisten but a dead one)
    refused_R(hw, "alice", 47114, origin.port)
    assert host_listeners(47114) == set()


@pytest.mark.config({"session": {"remote_forward_ports": [47161]},
                     "groups": {GROUP: {"session": {"remote_forward_ports": [47160]}}}})
def test_a_group_entry_replaces_the_list_for_its_members(hw, origin, rfwd_group):
    # alice (in the group): the group's port, not the top-level one
    r = hw.ssh("alice", RETRY + "retry timeout 10 wget -qO- http://127.0.0.1:47160/",
               options=r_opt(47160, origin.port))
    assert (r.returncode, r.stdout.decode()) == (0, TOKEN + "\n"), r
    refused_R(hw, "alice", 47161, origin.port)
    # bob (not in it): the top-level port only
    refused_R(hw, "bob", 47160, origin.port)
    stop(rforward(hw, "bob", 47161, origin.port))


# ------------------------------------------------------------------ one environment


@pytest.mark.config({"session": {"remote_forward_ports": RANGE, "mode": "persistent"}})
def test_a_persistent_workspace_gets_each_connections_forward(hw, origin):
    first, second = 47120, 47121
    run(["hatchway", "workspaces", "rm", "alice"], check=False)
    try:
        r = hw.ssh("alice", RETRY + "echo kept > /root/mark; "
                                    f"retry timeout 10 wget -qO- http://127.0.0.1:{first}/",
                   options=r_opt(first, origin.port))
        assert (r.returncode, r.stdout.decode()) == (0, TOKEN + "\n"), r
        ws = hw.one_container(user="alice", mode="persistent")
        # a later connection's -N forward serves the same environment
        f = rforward(hw, "alice", second, origin.port)
        try:
            r = hw.ssh("alice", RETRY + "cat /root/mark; "
                                        f"retry timeout 10 wget -qO- http://127.0.0.1:{second}/")
            assert (r.returncode, r.stdout.decode()) == (0, f"kept\n{TOKEN}\n"), r
        finally:
            stop(f)
        # the workspace outlives both connections; their listeners do not
        wait_for(lambda: not (listening_ports(inside(ws, LISTENERS, check=False).stdout)
                              & {first, second}), 30,
                 what="the workspace's listeners to close")
        assert hw.one_container(user="alice", mode="persistent")["ID"] == ws["ID"]
    finally:
        run(["hatchway", "workspaces", "rm", "alice"], check=False)


@pytest.mark.config({"session": {"remote_forward_ports": RANGE, "mode": "persistent"}})
def test_a_held_forward_follows_the_workspace_when_it_starts_again(hw, origin):
    """A stopped workspace keeps its container id but starts with a new
    network namespace: the listener must be made again there."""
    port = 47122
    run(["hatchway", "workspaces", "rm", "alice"], check=False)
    f = None
    try:
        fetch = RETRY + f"retry timeout 10 wget -qO- http://127.0.0.1:{port}/"
        assert hw.ssh("alice", "true").returncode == 0
        ws = hw.one_container(user="alice", mode="persistent")
        f = rforward(hw, "alice", port, origin.port)
        r = hw.ssh("alice", fetch)
        assert (r.returncode, r.stdout.decode()) == (0, TOKEN + "\n"), r
        run(["hatchway", "workspaces", "stop", "alice"])
        # the next login starts the same workspace again; the held forward reaches it
        r = hw.ssh("alice", fetch)
        assert (r.returncode, r.stdout.decode()) == (0, TOKEN + "\n"), r
        assert hw.one_container(user="alice", mode="persistent")["ID"] == ws["ID"]
    finally:
        if f is not None:
            stop(f)
        run(["hatchway", "workspaces", "rm", "alice"], check=False)


# ------------------------------------------------------------------ sshd


@pytest.mark.config(RFWD)
def test_sshd_leaves_the_listen_ports_to_the_key_options(hw):
    """For a Hatchway user the drop-in allows TCP forwarding and any listen
    port (the key line's permitlisten options narrow it), never on other
    addresses than loopback and never on Unix sockets."""
    # (the drop-in is the package's, the same whatever hatchway.yaml says)
    out = run(["sshd", "-T", "-f", "/etc/ssh/sshd_config",
               "-h", str(hw.tmp / "ssh_host_ed25519_key"),
               "-C", "user=alice,host=localhost,addr=127.0.0.1"]).stdout
    conf = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        conf.setdefault(key, value)
    assert {k: conf.get(k) for k in ("allowtcpforwarding", "permitlisten",
                                     "allowstreamlocalforwarding", "gatewayports")} == {
        "allowtcpforwarding": "yes", "permitlisten": "any",
        "allowstreamlocalforwarding": "no", "gatewayports": "no"}
