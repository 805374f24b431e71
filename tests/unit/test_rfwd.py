"""The -R watcher and joiner (daemon/rfwd.py) with real sockets on this
host's loopback.  FAKES, named as such: FakeGuard hands out a listener on
127.0.0.1 in place of one inside a container's network namespace (only
hatchway-netguard, as root, makes those: the e2e tests cover it), and FakeWay
names a container without an engine.  The host listener standing in for
sshd's is a real socket of a real uid; sock_diag, the owner check and the
byte copy are the real ones."""

import os
import socket
import threading

import pytest

from hatchway.core import portfwd as P
from hatchway.daemon import rfwd
from hatchway.daemon.portfwd import Settings

CID = "c" * 64


class FakeGuard:
    def __init__(self):
        self.asked = []

    def listen(self, pid, container, port):
        self.asked.append((pid, container, port))
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        return [s]


class FakeWay:
    def __init__(self):
        self.target = (CID, 4242)

    def container_pid(self, user):
        return self.target


class FakeRelay:
    def __init__(self, ports):
        self.way = FakeWay()
        self.ports = ports

    def settings(self):
        return Settings({"default": False, "groups": []},
                        {"default": list(self.ports), "groups": []}, self.way)


@pytest.fixture
def host(tmp_path, monkeypatch):
    """sshd's stand-in: a listener on the host's loopback owned by this uid,
    answering each connection with what it got, upper-cased."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            data = b""
            while True:
                part = c.recv(65536)
                if not part:
                    break
                data += part
            c.sendall(data.upper())
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    (tmp_path / "uids").write_text(f"{os.getuid()}\n")
    (tmp_path / "rports").write_text(f"{port}\n")
    monkeypatch.setattr(P, "UIDS_FILE", str(tmp_path / "uids"))
    monkeypatch.setattr(P, "RPORTS_FILE", str(tmp_path / "rports"))
    yield srv, port
    end(srv)


def end(srv: socket.socket) -> None:
    """Close a listener a thread is accepting on (close alone would leave
    the socket listening until that accept returns)."""
    try:
        srv.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    srv.close()


def ask(listener: rfwd.Listener, payload: bytes) -> bytes:
    with socket.create_connection(listener.socks[0].getsockname()[:2], timeout=10) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)      # half-close: the answer still comes back
        out = b""
        while True:
            part = c.recv(65536)
            if not part:
                return out
            out += part


def test_a_users_host_listener_gets_a_container_listener_joined_to_it(host):
    srv, port = host
    guard = FakeGuard()
    w = rfwd.RemoteForwards(FakeRelay([port]), guard)
    w.step()
    assert guard.asked == [(4242, CID, port)]
    listener = w.active[(os.getuid(), port)]
    payload = os.urandom(300_000).hex().encode()
    assert ask(listener, payload) == payload.upper()
    # one listener per port: the next look keeps it
    w.step()
    assert len(guard.asked) == 1
    # sshd's listener gone (the forward ended): the container's is closed
    end(srv)
    w.step()
    assert (os.getuid(), port) not in w.active and listener.closed


def test_no_listener_for_a_port_outside_the_users_list_or_not_reserved(host, tmp_path):
    _srv, port = host
    guard = FakeGuard()
    w = rfwd.RemoteForwards(FakeRelay([port + 1]), guard)
    w.step()
    assert guard.asked == [] and not w.active
    (tmp_path / "rports").write_text("")
    w = rfwd.RemoteForwards(FakeRelay([port]), guard)
    w.step()
    assert guard.asked == [] and not w.active


def test_an_uncovered_uid_gets_nothing(host, tmp_path):
    _srv, port = host
    (tmp_path / "uids").write_text(f"{os.getuid() + 1}\n")
    guard = FakeGuard()
    w = rfwd.RemoteForwards(FakeRelay([port]), guard)
    w.step()
    assert guard.asked == [] and not w.active


def test_a_new_container_moves_the_listener(host):
    _srv, port = host
    relay = FakeRelay([port])
    guard = FakeGuard()
    w = rfwd.RemoteForwards(relay, guard)
    w.step()
    first = w.active[(os.getuid(), port)]
    relay.way.target = ("d" * 64, 4343)
    w.containers.clear()            # as after CHECK seconds
    w.step()
    assert first.closed and w.active[(os.getuid(), port)].container == "d" * 64
    # the same container started again (a stopped workspace): a new process,
    # a new network namespace, so a new listener
    second = w.active[(os.getuid(), port)]
    relay.way.target = ("d" * 64, 4444)
    w.containers.clear()
    w.step()
    assert second.closed and w.active[(os.getuid(), port)].pid == 4444


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another uid")
def test_a_host_port_now_held_by_another_uid_is_never_joined(host, caplog):
    srv, port = host
    guard = FakeGuard()
    w = rfwd.RemoteForwards(FakeRelay([port]), guard)
    w.step()
    listener = w.active[(os.getuid(), port)]
    end(srv)
    # another uid takes the port before the watcher looks again
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(65534)
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(8)
            os.write(wfd, b"x")
            while True:
                c, _ = s.accept()
                c.sendall(b"STOLEN")
                c.close()
        finally:
            os._exit(0)
    try:
        assert os.read(r, 1) == b"x"
        try:
            got = ask(listener, b"secret")
        except ConnectionResetError:    # closed with our bytes unread
            got = b""
        assert b"STOLEN" not in got
        assert "now belongs to uid 65534" in caplog.text
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_the_watcher_starts_only_with_the_guards_channel():
    assert rfwd.start(FakeRelay([]), env={}) is None
    assert rfwd.start(FakeRelay([]), env={"HATCHWAY_GUARD_FD": "x"}) is None


def test_an_unreadable_guard_answer_is_an_oserror():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    chan = rfwd.GuardChannel(ours)

    def answer():
        theirs.recv(4096)
        theirs.send(b"not json")
    t = threading.Thread(target=answer)
    t.start()
    with pytest.raises(OSError, match="unreadable answer"):
        chan.listen(1, CID, 8080)
    t.join()
