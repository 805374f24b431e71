"""Every boundary a hostile user or a broken webhook touches, fuzzed with
hypothesis (Debian's python3-hypothesis), not only the cases someone thought
of.  Invariants: no exception escapes but the boundary's own one-line error
(so no traceback reaches a user, sshd or an admin), and in doubt the answer
is no.  Real sockets and real HTTP on loopback carry the bytes."""

import json
import os
import pty
import socket
import string
import tempfile
import threading

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.core import config, http11
from hatchway.core.webhook_client import WebhookError, check_pubkey, fetch_config
from hatchway.daemon import containerssh, peer
from hatchway.shell import pack
from hatchway.webhook import admin_api
from hatchway.webhook import token as admin_token
from hatchway.webhook.store import Store
from tests.e2e.webhook_servers import RawServer, http_response

# The test run replays the same 150 examples every time (a CI run must not
# fail by luck); `make fuzz` explores: HATCHWAY_FUZZ_EXAMPLES=N, fresh seeds.
_EXPLORE = int(os.environ.get("HATCHWAY_FUZZ_EXAMPLES", "0"))
FAST = settings(max_examples=_EXPLORE or 150, derandomize=not _EXPLORE,
                deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# JSON the way a broken or hostile peer writes it: any shape, deep, odd types
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=30)
replies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["success", "hatchway", "authenticatedUsername", "config",
                                     "from", "expiry"]), json_values, max_size=4)
    .map(lambda d: json.dumps(d).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),          # nesting bombs
)


class Replies:
    """A loopback HTTP server answering whatever the example says."""

    def __init__(self):
        self.status, self.body = 200, b""
        self.srv = RawServer(lambda s: s.sendall(http_response(self.status, self.body)))

    def close(self):
        self.srv.close()


@pytest.fixture(scope="module")
def replies_server():
    r = Replies()
    yield r
    r.close()


def auth_conf(url):
    return {"url": url, "timeout": 2.0, "request_timeout": 2.0, "max_body": 65536}


@FAST
@given(status=st.sampled_from([200, 200, 200, 201, 301, 404, 500]), body=replies)
def test_any_auth_webhook_reply_is_a_decision_or_a_one_line_error(replies_server, status, body):
    replies_server.status, replies_server.body = status, body
    try:
        d = check_pubkey(auth_conf(replies_server.srv.url), username="alice",
                         public_key="ssh-ed25519 AAAA", remote_address="127.0.0.1:1",
                         connection_id="c", deadline=http11.Deadline(5))
    except WebhookError as e:
        assert "\n" not in str(e)
        return
    if d.allowed:                       # only the one shape means yes
        data = json.loads(body)
        assert status == 200 and data["success"] is True
        assert all("\n" not in o and "\r" not in o for o in d.options)


@FAST
@given(body=replies)
def test_any_config_webhook_reply_is_a_partial_config_or_a_refusal(replies_server, body):
    replies_server.status, replies_server.body = 200, body
    try:
        reply = fetch_config(auth_conf(replies_server.srv.url), username="alice",
                             remote_address="127.0.0.1:1", connection_id="c",
                             deadline=http11.Deadline(5))
        part = config.validate(containerssh.translate(reply))
    except (WebhookError, ValueError):
        return
    assert isinstance(part, dict)


yaml_keys = st.sampled_from(["auth", "webhook", "url", "docker", "image", "session", "mode",
                             "shell", "groups", "policy", "kubernetes", "pod", "metrics",
                             "listen", "memory", "mounts", "backend", "timeout", "x"])
yaml_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(string.printable, max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(yaml_keys, inner, max_size=4),
    max_leaves=25)


@FAST
@given(doc=st.one_of(yaml_docs.map(lambda d: yaml.safe_dump(d)), st.text(max_size=200)))
def test_any_config_file_loads_or_names_its_error(doc):
    try:
        cfg = config.load_text(doc, "fuzz.yaml")
    except config.ConfigError as e:
        assert str(e).startswith("fuzz.yaml:") and "\n" not in str(e)
        return
    config.typed(cfg)                   # whatever validates also builds


@pytest.fixture(scope="module")
def admin_store():
    d = tempfile.mkdtemp()
    store = Store(os.path.join(d, "keys.db"))
    admin_token.ensure(store, os.path.join(d, "token"))
    with open(os.path.join(d, "token")) as f:
        yield store, f.read().strip()


class Headers(dict):
    def get(self, k, default=None):
        return super().get(k, default)


@FAST
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
       path=st.one_of(st.sampled_from(["/v1/users", "/v1/users/dave", "/v1/users/dave/keys",
                                       "/v1/users/dave/keys/SHA256%3Ax", "/v1/users/dave/password",
                                       "/v1", "/v1/users/%ff"]),
                      st.text(max_size=40).map(lambda s: "/v1/" + s)),
       body=replies, authorized=st.booleans())
def test_the_admin_api_answers_anything_with_a_status(admin_store, method, path, body, authorized):
    store, token = admin_store
    headers = Headers({"Authorization": f"Bearer {token}"} if authorized else {})
    status, reply, extra = admin_api.handle(store, method, path, headers, body)
    assert 200 <= status < 500, (status, reply)
    if not authorized:
        assert status == 401
    if status >= 400:
        assert set(reply) == {"error"} and "\n" not in reply["error"]


# ------------------------------------------------------------------ the daemon's hello

def fds_of(kind: str, stack):
    """Three descriptors of one kind, as a client might pass them."""
    if kind == "pipes":
        out = []
        for _ in range(3):
            r, w = os.pipe()
            stack += [r, w]
            out.append(r)
        return out
    if kind == "file":
        fd = os.open("/etc/hostname", os.O_RDONLY)
    elif kind == "dir":
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    elif kind == "opath":
        fd = os.open("/etc/passwd", os.O_PATH)
    elif kind == "socket":
        a, b = socket.socketpair()
        stack += [a, b]
        fd = os.dup(a.fileno())
    else:                               # a pty that belongs to root, not to the peer
        master, fd = pty.openpty()
        stack.append(master)
    stack.append(fd)
    return [fd, fd, fd]


@FAST
@given(prefix=st.binary(max_size=64),
       hello=st.one_of(
           st.just({"type": "hello", "v": 1, "pty": False}),
           st.dictionaries(st.sampled_from(["type", "v", "pty", "command_b64", "env", "term"]),
                           json_values, max_size=6),
           json_values),
       mangle=st.sampled_from(["none", "truncate", "huge-length", "prefix", "bomb"]),
       kind=st.sampled_from(["pipes", "file", "dir", "opath", "socket", "pty", "none"]))
def test_any_hello_is_accepted_or_refused_in_one_line_and_leaks_no_descriptor(
        prefix, hello, mangle, kind):
    stack = []
    client, server = socket.socketpair()
    try:
        data = pack(hello) if isinstance(hello, dict) else json.dumps(hello).encode()
        if mangle == "truncate":
            data = data[:max(1, len(data) // 2)]
        elif mangle == "huge-length":
            data = b"\xff\xff\xff\xff" + data
        elif mangle == "prefix":
            data = prefix + data
        elif mangle == "bomb":
            data = pack({"type": "hello", "v": 1}).replace(b"}", b', "x": ' + b"[" * 5000
                                                           + b"]" * 5000 + b"}")
            data = len(data[4:]).to_bytes(4, "big") + data[4:]
        fds = fds_of(kind, stack) if kind != "none" else []
        before = set(os.listdir("/proc/self/fd"))
        def send():
            try:
                if fds:
                    socket.send_fds(client, [data], fds)
                else:
                    client.sendall(data)
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass                    # the daemon side refused and closed first
        t = threading.Thread(target=send, daemon=True)
        t.start()
        try:
            hello_got, got, _, _ = peer.receive_hello(server, 2)
            try:
                peer.check_fds(got, os.getuid() + 1, hello_got.get("pty") is True)
            except peer.Refused as e:
                assert "\n" not in e.message
            for fd in got:
                os.close(fd)
        except peer.Refused as e:
            assert "\n" not in e.message
        t.join(5)
        # received descriptors are closed on refusal: none is left behind
        assert set(os.listdir("/proc/self/fd")) <= before | {str(fd) for fd in stack}
    finally:
        client.close()
        server.close()
        for fd in stack:
            try:
                os.close(fd) if isinstance(fd, int) else fd.close()
            except OSError:
                pass
