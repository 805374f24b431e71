"""The port relay's Kubernetes way (hatchway/daemon/portfwd_k8s.py) and the
portforward framing (hatchway/backends/kubernetes/portforward.py): hand-built
frames, then the whole forward against a PROTOCOL FAKE of the kubelet's
portforward websocket (k8s_fake_portforward.py) joined to real TCP services on
this host.  The real cluster covers it end to end
(tests/e2e/test_kubernetes_port_forwarding.py)."""

import logging
import os
import socket
import struct
import threading

import pytest

from hatchway.backends import labels as L
from hatchway.backends.base import BackendError, Found
from hatchway.backends.kubernetes import portforward as PF
from hatchway.backends.kubernetes.api import Api
from hatchway.daemon import portfwd_k8s as K

from .k8s_fake_portforward import FakePortForwardServer
from .typed import section

PORT = 8080
prefix = struct.pack("<H", PORT)


# ------------------------------------------------------- hand-built frames


def test_the_port_prefixes_are_swallowed_then_data_passes():
    r = PF.PortReader(PORT)
    assert not r.ready
    assert r.feed(b"\x00" + prefix) == b""
    assert r.feed(b"\x01" + prefix) == b""
    assert r.ready
    assert r.feed(b"\x00hello") == b"hello"
    assert r.feed(b"\x00" + bytes(range(256))) == bytes(range(256))     # binary, untouched
    assert r.feed(b"") == b""


def test_data_may_come_before_the_error_channels_prefix():
    r = PF.PortReader(PORT)
    r.feed(b"\x00" + prefix)
    assert r.feed(b"\x00abc") == b"abc"
    r.feed(b"\x01" + prefix)
    assert r.ready


def test_error_text_collects_and_is_not_data():
    r = PF.PortReader(PORT)
    r.feed(b"\x00" + prefix)
    r.feed(b"\x01" + prefix)
    assert r.feed(b"\x01error forwarding port 8080 to pod p, uid u: ") == b""
    assert r.feed(b"\x01failed to connect to localhost:8080") == b""
    assert r.error_text() == ("error forwarding port 8080 to pod p, uid u: "
                              "failed to connect to localhost:8080")


@pytest.mark.parametrize("message, why", [
    (b"\x00" + struct.pack("<H", 8081), "for port 8081"),
    (b"\x00" + prefix + b"x", "3 bytes"),        # the prefix comes alone
    (b"\x00\x90", "1 bytes"),
    (b"\x02" + prefix, "channel 2"),             # one port asked for: channels 0 and 1
    (b"\x03" + prefix, "channel 3"),
])
def test_what_the_protocol_does_not_allow_is_an_error(message, why):
    with pytest.raises(PF.ProtocolError, match=why):
        PF.PortReader(PORT).feed(message)


def test_client_frames_are_on_the_data_channel():
    assert PF.data_frame(b"\x00\xff") == b"\x00\x00\xff"


# ------------------------------------------------------- which pod


def found(name, user="alice", mode="session", created=1.0, running=True, host=None):
    return Found(name, {L.MANAGED: "true", L.USER: user, L.MODE: mode,
                        L.HOST: host or L.host_id()}, "Running", running=running,
                 created=created)


class FakeBackend:
    def __init__(self, api=None, pods=(), fail=None):
        self.api, self.ns, self.pods, self.fail = api, "ns", list(pods), fail

    def list(self, user=None):
        if self.fail:
            raise BackendError(self.fail)
        return self.pods


def test_only_the_users_running_pods_on_this_host_are_chosen_workspace_first():
    way = K.KubernetesWay(FakeBackend(pods=[
        found("bobs", user="bob", created=9), found("elsewhere", host="other", created=9),
        found("stopped", running=False, created=9), found("old", created=1),
        found("new", created=5)]))
    assert way.pick("alice").name == "new"
    way.backend.pods.append(found("ws", mode="persistent", created=0))
    assert way.pick("alice").name == "ws"
    assert way.pick("carol") is None


# ------------------------------------------------------- whole forwards, protocol fake


@pytest.fixture
def fake(request):
    s = FakePortForwardServer(**getattr(request, "param", {}))
    yield s
    s.close()
    assert s.errors == []


def service(handler):
    """A TCP service on this host's 127.0.0.1 (the fake's "pod"): its port."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)

    def serve():
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(10)
            handler(conn)
        lsock.close()
    threading.Thread(target=serve, daemon=True).start()
    return lsock.getsockname()[1]


def run_forward(fake, port, pods=None, held=lambda conn: True):
    """The relay's side of a socketpair goes to the way; the test's side back."""
    api = Api(section("kubernetes", server=fake.url))
    way = K.KubernetesWay(FakeBackend(api, pods if pods is not None else [found("p1")]))
    way.client_held = held
    mine, theirs = socket.socketpair()
    mine.settimeout(20)
    t = threading.Thread(target=lambda: (way.forward(theirs, "alice", port), theirs.close()),
                         daemon=True)
    t.start()
    return mine, t


def read_all(s) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_bytes_cross_both_ways_exactly_and_the_pods_close_ends_it(fake):
    blob = os.urandom(3 << 20)

    def echo_then_close(conn):
        got = b""
        while len(got) < len(blob):
            got += conn.recv(65536)
        conn.sendall(got[::-1])             # a reply that is not just the same bytes
    client, t = run_forward(fake, service(echo_then_close))
    client.sendall(blob)
    assert read_all(client) == blob[::-1]
    t.join(20)
    assert not t.is_alive()
    assert fake.paths == ["/api/v1/namespaces/ns/pods/p1/portforward"]


def test_the_clients_eof_is_held_until_the_client_closes(fake):
    """v4 has no half-close: the pod's service never sees the EOF; the
    websocket stays until the client's socket is closed for good."""
    said = threading.Event()

    def greet_and_wait(conn):
        conn.sendall(b"hello\n")
        conn.recv(1)                        # blocks: no EOF comes through
        said.set()
    closed = threading.Event()
    client, t = run_forward(fake, service(greet_and_wait),
                            held=lambda conn: not closed.is_set())
    client.shutdown(socket.SHUT_WR)
    assert client.recv(6) == b"hello\n"
    assert not fake.client_closed.wait(2.5)   # more than two HELD_CHECKs: still open
    closed.set()
    t.join(10)
    assert not t.is_alive() and fake.client_closed.wait(10)
    assert said.wait(10)                    # the service saw the end with the websocket's


def test_nothing_listening_in_the_pod_is_one_log_line_and_an_empty_reply(fake, caplog):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                               # nothing listens there
    with caplog.at_level(logging.INFO, logger="hatchway-portrelay"):
        client, t = run_forward(fake, port)
        assert read_all(client) == b""
        t.join(10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "failed to connect to localhost" in warnings[0], warnings


@pytest.mark.parametrize("fake", [{"wrong_port": True}], indirect=True)
def test_a_server_that_breaks_the_protocol_ends_the_forward(fake, caplog):
    client, t = run_forward(fake, service(lambda conn: conn.sendall(b"x")))
    assert read_all(client) == b""
    t.join(10)
    assert "asked for" in caplog.text


@pytest.mark.parametrize("fake", [{"status": 404}], indirect=True)
def test_a_pod_gone_is_one_log_line(fake, caplog):
    client, t = run_forward(fake, 1234)
    assert read_all(client) == b""
    t.join(10)
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "pod=p1: portforward:" in line and "404" in line


def test_no_pod_and_an_unreachable_api_server_are_one_log_line_each(fake, caplog):
    client, t = run_forward(fake, 1234, pods=[found("bobs", user="bob")])
    assert read_all(client) == b""
    t.join(10)
    way = K.KubernetesWay(FakeBackend(fail="cannot list session pods: connection refused"))
    a, b = socket.socketpair()
    way.forward(b, "alice", 1234)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == ["refused user=alice port=1234: no running pod",
                     "refused user=alice port=1234: cannot list session pods: connection refused"]
    assert fake.paths == []
    a.close()
    b.close()


def test_with_a_fresh_backend_factory_each_forward_gets_a_new_client(caplog):
    made = []

    def fresh():
        made.append(FakeBackend(pods=[]))
        return made[-1]
    way = K.KubernetesWay(FakeBackend(fail="the cached client must not be used"), fresh=fresh)
    for _ in range(2):
        a, b = socket.socketpair()
        way.forward(b, "alice", 1234)
        a.close()
        b.close()
    assert len(made) == 2
    assert "cached" not in caplog.text
