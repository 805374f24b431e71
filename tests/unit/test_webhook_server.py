"""The bundled webhook server, in this process on a loopback port: the
ContainerSSH answers it gives, its admin API's token check, and that no
client — garbage, huge, chunked, half-sent, stalled, too many — takes it down.
(The end-to-end suite runs the installed server; see tests/e2e/test_admin.py.)"""

import base64
import http.client
import json
import socket
import threading
import time

import pytest

from hatchway.webhook import token as admin_token
from hatchway.webhook import server as webhook_server
from hatchway.webhook.store import Store

from .test_store import make_key


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setattr(webhook_server.Handler, "timeout", 1.0)
    db = str(tmp_path / "keys.db")
    store = Store(db)
    store.add_user("dave", "busybox:1", [make_key(1, "dave@laptop")])
    store.add_key("dave", make_key(2), "10.0.0.0/8", "2099-01-31T18:00:00Z")
    srv = webhook_server.Server(("127.0.0.1", 0), db)
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    srv.token_file = str(tmp_path / "admin-token")
    yield srv
    srv.shutdown()
    srv.server_close()


def call(srv, method, path, body=None, headers=None, raw=None):
    c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    c.request(method, path, data, headers or {})
    r = c.getresponse()
    payload = r.read()
    c.close()
    return r.status, (json.loads(payload) if payload else None), r


def pubkey(srv, user, key, remote="192.0.2.1:40000"):
    return call(srv, "POST", "/pubkey", {"username": user, "publicKey": key.openssh(),
                                         "remoteAddress": remote, "connectionId": "c1"})


def alive(srv) -> bool:
    return pubkey(srv, "dave", make_key(1))[1] == {"success": True,
                                                   "authenticatedUsername": "dave"}


# ------------------------------------------------------------------ webhook

def test_pubkey_yes_only_for_a_registered_key_of_that_user(server):
    assert alive(server)
    assert pubkey(server, "dave", make_key(3))[:2] == (200, {"success": False})
    assert pubkey(server, "erin", make_key(1))[1] == {"success": False}


def test_pubkey_carries_the_hatchway_extension(server):
    status, reply, _ = pubkey(server, "dave", make_key(2))
    assert status == 200 and reply["success"] is True
    assert reply["hatchway"] == {"from": ["10.0.0.0/8"], "expiry": "2099-01-31T18:00:00Z"}
    # the key helper's side turns it into sshd options
    from hatchway.core.webhook_client import extension_options
    assert extension_options(reply["hatchway"]) == ['from="10.0.0.0/8"',
                                                    'expiry-time="20990131180000Z"']


def test_an_expired_key_is_refused_by_the_server_too(server):
    s = Store(server.db_path)
    s.add_key("dave", make_key(4), expiry="2099-01-01T00:00:00Z")
    s.db.execute("UPDATE keys SET expiry = '2001-01-01T00:00:00Z'")
    assert pubkey(server, "dave", make_key(4))[1] == {"success": False}


def test_config_gives_the_users_image(server):
    assert call(server, "POST", "/config", {"username": "dave"})[1] == \
        {"config": {"docker": {"execution": {"container": {"image": "busybox:1"}}}}}
    assert call(server, "POST", "/config", {"username": "erin"})[1] == {"config": {}}


def test_password_is_no_unless_enabled(server):
    Store(server.db_path).set_password("dave", "s3cret")
    right = {"username": "dave", "passwordBase64": base64.b64encode(b"s3cret").decode()}
    wrong = {"username": "dave", "passwordBase64": base64.b64encode(b"guess").decode()}
    assert call(server, "POST", "/password", right)[1] == {"success": False}
    server.allow_passwords = True
    assert call(server, "POST", "/password", right)[1] == {"success": True}
    assert call(server, "POST", "/password", wrong)[1] == {"success": False}
    assert call(server, "POST", "/password", {"username": "dave", "passwordBase64": "%%"})[1] \
        == {"success": False}


# ------------------------------------------------------------------ admin API

def test_admin_api_needs_the_token(server):
    status, reply, r = call(server, "GET", "/v1/users")
    assert status == 401 and "hatchway webhook token" in reply["error"]
    assert admin_token.ensure(Store(server.db_path), server.token_file) == "created"
    token = open(server.token_file).read().strip()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token},
                    {"Authorization": f"Basic {token}"}):
        status, reply, r = call(server, "GET", "/v1/users", headers=headers)
        assert status == 401 and r.getheader("WWW-Authenticate").startswith("Bearer")
    # even a path that does not exist says nothing before the token is right
    assert call(server, "GET", "/v1/nothing")[0] == 401
    auth = {"Authorization": f"Bearer {token}"}
    status, users, _ = call(server, "GET", "/v1/users", headers=auth)
    assert status == 200 and [u["name"] for u in users] == ["dave"]
    assert call(server, "GET", "/v1/nothing", headers=auth)[0] == 404
    # rotation takes effect at once, without a restart
    assert admin_token.ensure(Store(server.db_path), server.token_file, rotate=True) == "rotated"
    assert call(server, "GET", "/v1/users", headers=auth)[0] == 401


def test_token_file_is_private(tmp_path):
    store = Store(str(tmp_path / "keys.db"))
    path = tmp_path / "admin-token"
    admin_token.ensure(store, str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(admin_token.TokenError, match="mode 0600"):
        admin_token.ensure(store, str(path))


# ------------------------------------------------------------------ bad clients

def raw_exchange(srv, data: bytes, timeout: float = 10) -> bytes:
    s = socket.create_connection(srv.server_address, timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


@pytest.mark.parametrize("request_bytes,status", [
    (b"POST /pubkey HTTP/1.1\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{garbage}", b"400"),
    (b"POST /pubkey HTTP/1.1\r\nContent-Length: 4\r\nConnection: close\r\n\r\n\xff\xfe\x00\x01",
     b"400"),
    (b"POST /pubkey HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]", b"400"),
    (b"POST /pubkey HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"400"),
    (b"POST /pubkey HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{", b"413"),
    (b"POST /pubkey HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     b"411"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n", b"400"),
    (b"GET /pubkey HTTP/1.1\r\nConnection: close\r\n\r\n", b"405"),
    (b"POST /nothing HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", b"404"),
    (b"POST /pubkey HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"431"),
])
def test_bad_requests_get_an_error_and_the_server_goes_on(server, request_bytes, status, caplog):
    reply = raw_exchange(server, request_bytes)
    assert reply.split(b" ", 2)[1] == status, reply[:200]
    assert alive(server)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []   # no tracebacks


def test_a_body_over_the_limit_is_refused_without_reading_it(server):
    huge = b"POST /pubkey HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (50 << 20)
    s = socket.create_connection(server.server_address, timeout=10)
    s.sendall(huge)
    try:
        s.sendall(b"{" + b"x" * (1 << 20))     # the server may close before all of it
    except OSError:
        pass
    assert s.recv(100).split(b" ", 2)[1] == b"413"
    s.close()
    assert alive(server)


def test_stalled_clients_are_dropped_and_do_not_block_others(server, caplog):
    stalled = []
    for partial in (b"POST /pubkey HTTP/1.1\r\nContent-Le",
                    b"POST /pubkey HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"user",
                    b""):
        s = socket.create_connection(server.server_address, timeout=10)
        s.sendall(partial)
        stalled.append(s)
    assert alive(server)                     # answered while three clients stall
    for s in stalled:                        # the server hangs up on each (timeout 1 s here)
        s.settimeout(10)
        try:
            data = s.recv(1000)
        except ConnectionResetError:
            data = b""
        assert b"200 OK" not in data
        s.close()
    assert alive(server)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def test_clients_that_vanish_mid_request_leave_no_traceback(server, caplog):
    for data in (b"POST /pubkey HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", b"POST /pub"):
        s = socket.create_connection(server.server_address, timeout=10)
        s.sendall(data)
        # RST instead of FIN: the server sees "connection reset"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    time.sleep(0.3)
    assert alive(server)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def test_connections_over_the_cap_are_closed_not_queued(server, monkeypatch):
    monkeypatch.setattr(webhook_server, "MAX_CONNECTIONS", 3)
    held = [socket.create_connection(server.server_address, timeout=10) for _ in range(3)]
    time.sleep(0.2)                          # let the server accept them
    extra = socket.create_connection(server.server_address, timeout=10)
    extra.sendall(b"POST /pubkey HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    try:
        assert extra.recv(100) == b""
    except ConnectionResetError:
        pass
    extra.close()
    for s in held:
        s.close()
    time.sleep(0.2)
    assert alive(server)


def test_keep_alive_serves_several_requests_on_one_connection(server):
    c = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    for _ in range(3):
        c.request("POST", "/pubkey", json.dumps({"username": "dave",
                                                  "publicKey": make_key(1).openssh()}))
        r = c.getresponse()
        assert json.loads(r.read())["success"] is True
    c.close()


def test_a_nesting_bomb_is_a_bad_request_not_an_internal_error(server):
    bomb = b"[" * 10_000 + b"]" * 10_000
    for path in ("/pubkey", "/v1/users"):
        headers = {"Content-Type": "application/json"}
        if path.startswith("/v1"):
            headers["Authorization"] = "Bearer " + admin_token_for(server)
        status, reply, _ = call(server, "POST", path, raw=bomb, headers=headers)
        assert status == 400, (path, status, reply)
    assert alive(server)


def admin_token_for(srv) -> str:
    admin_token.ensure(Store(srv.db_path), srv.token_file)
    with open(srv.token_file) as f:
        return f.read().strip()


# ------------------------------------------------------------------ slow clients, one peer

def test_a_client_trickling_bytes_is_cut_off_at_the_request_deadline(server):
    """Every read is within the per-read timeout (1 s here), so only a
    deadline on the whole request ends this: a header byte every 0.3 s."""
    server.request_deadline = 2.0
    s = socket.create_connection(server.server_address, timeout=10)
    trickle = b"POST /pubkey HTTP/1.1\r\nX-Slow: " + b"x" * 200
    sent = 0
    try:
        for byte in trickle:
            s.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.3)
    except OSError:
        pass                     # the server hung up mid-request
    s.settimeout(10)
    try:
        rest = s.recv(1000)
    except OSError:
        rest = b""
    s.close()
    assert sent < len(trickle), "the server let a trickling client hold its connection"
    assert b"200 OK" not in rest
    assert alive(server)


HOLD = r"""
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /pubkey HTTP/1.1\r\nContent-Le")
    held.append(s)
print("holding", flush=True)
sys.stdin.read()
"""


def test_one_local_user_cannot_take_every_connection(server, monkeypatch):
    """A local user (here `nobody`) opens connections and stalls in each: past
    its share they are closed, and sshd's key helper (here root) still gets
    answers, though every connection the server would take is in use."""
    import subprocess
    import sys
    monkeypatch.setattr(webhook_server, "MAX_CONNECTIONS", 8)
    server.max_per_peer = 4
    server.request_deadline = 60.0
    p = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          sys.executable, "-c", HOLD, str(server.server_address[1]), "8"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "holding\n"
        deadline = time.monotonic() + 10
        while server._active < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)         # the other four reach the server too
        assert server._active == 4 and server._per_peer == {"uid:65534": 4}
        assert alive(server)
    finally:
        p.stdin.close()
        p.wait(10)


def test_password_checks_are_rate_limited_per_peer(server, monkeypatch):
    monkeypatch.setattr(webhook_server, "PASSWORD_RATE", 0.0)     # no refill: the burst only
    Store(server.db_path).set_password("dave", "s3cret")
    server.allow_passwords = True
    wrong = {"username": "dave", "passwordBase64": base64.b64encode(b"guess").decode()}
    answers = [call(server, "POST", "/password", wrong) for _ in range(
        webhook_server.PASSWORD_BURST + 5)]
    statuses = [a[0] for a in answers]
    assert statuses == [200] * webhook_server.PASSWORD_BURST + [429] * 5, statuses
    limited = next(a for a in answers if a[0] == 429)
    assert limited[2].getheader("Retry-After") == "1"
    assert limited[1] == {"error": "too many password checks; try again later"}
