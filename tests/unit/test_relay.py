"""The relay (daemon/relay.py) against a FAKE process: what it does with the
session's descriptors, the control socket and the process, decided without a
container.  The real thing is tests/e2e; these pin down the rules."""

import fcntl
import os
import queue
import socket
import struct
import termios
import threading
import time


from hatchway.backends.base import ExitStatus, Process
from hatchway.daemon.relay import Relay
from hatchway.shell import FrameReader, pack


class FakeProcess(Process):
    """Output is whatever the test puts in `out` (None ends it); everything
    the relay does to it is recorded."""

    def __init__(self, code=0):
        self.id = "fake"
        self.out = queue.Queue()
        self.sent = bytearray()
        self.stdin_closed = threading.Event()
        self.signals, self.sizes = [], []
        self.destroyed = False
        self.code = code

    def send(self, data):
        self.sent += data

    def close_stdin(self):
        self.stdin_closed.set()

    def recv(self):
        return self.out.get()

    def resize(self, rows, cols):
        self.sizes.append((rows, cols))

    def signal(self, name):
        self.signals.append(name)

    def exit_status(self, timeout=None):
        return ExitStatus(self.code)

    def destroy(self):
        self.destroyed = True
        self.out.put(None)


class Pipes:
    """A non-pty session: the relay's three fds and the client's ends."""

    def __init__(self):
        (self.in_r, self.in_w), (self.out_r, self.out_w), (self.err_r, self.err_w) = \
            os.pipe(), os.pipe(), os.pipe()
        self.fds = [self.in_r, self.out_w, self.err_w]


def relay(proc, fds, pty=False, grace=0.2, pending=(), limits=None):
    ours, theirs = socket.socketpair()
    r = Relay(proc, fds, pty, ours, FrameReader(), list(pending), grace, limits=limits)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("outcome", r.run()), daemon=True)
    t.start()
    return r, theirs, t, result


def read_all(fd):
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def test_output_goes_to_its_stream_and_stdin_eof_reaches_the_process():
    p, proc = Pipes(), FakeProcess(code=3)
    r, control, t, result = relay(proc, p.fds)
    os.write(p.in_w, b"typed")
    os.close(p.in_w)
    assert proc.stdin_closed.wait(5)
    for item in ((1, b"out1 "), (2, b"err"), (1, b"out2"), None):
        proc.out.put(item)
    t.join(5)
    os.close(p.out_w), os.close(p.err_w)
    assert read_all(p.out_r) == b"out1 out2" and read_all(p.err_r) == b"err"
    assert bytes(proc.sent) == b"typed"
    assert result["outcome"].status.code == 3 and not result["outcome"].hangup
    assert (r.bytes_in, r.bytes_out) == (5, 12)


def test_a_vanished_reader_is_a_hangup_and_a_deaf_process_is_destroyed():
    p, proc = Pipes(), FakeProcess()
    r, control, t, result = relay(proc, p.fds, grace=0.2)
    os.close(p.out_r)                           # the client stopped reading stdout
    t.join(5)
    assert not t.is_alive()
    assert proc.signals == ["HUP"] and proc.destroyed
    assert result["outcome"].hangup and result["outcome"].status.code == 129


def test_the_clients_death_is_a_hangup_but_a_process_ending_in_the_grace_keeps_its_status():
    p, proc = Pipes(), FakeProcess(code=0)
    r, control, t, result = relay(proc, p.fds, grace=5)
    control.close()                             # hatchway-shell went away

    def exits_on_hup():
        while "HUP" not in proc.signals:
            threading.Event().wait(0.01)
        proc.code = 129
        proc.out.put(None)
    threading.Thread(target=exits_on_hup, daemon=True).start()
    t.join(5)
    assert result["outcome"].hangup and result["outcome"].status.code == 129
    assert not proc.destroyed                   # it ended by itself; the session removes it


def test_signals_from_the_client_reach_the_process_and_hup_hangs_up():
    p, proc = Pipes(), FakeProcess()
    r, control, t, result = relay(proc, p.fds, pending=[{"type": "signal", "signal": "INT"}])
    control.sendall(pack({"type": "signal", "signal": "TERM"}) +
                    pack({"type": "signal", "signal": "USR1"}))       # not forwarded
    control.sendall(pack({"type": "signal", "signal": "HUP"}))
    t.join(5)
    assert proc.signals == ["INT", "TERM", "HUP"]
    assert result["outcome"].hangup


def test_garbage_on_the_control_socket_ends_the_session():
    p, proc = Pipes(), FakeProcess()
    r, control, t, result = relay(proc, p.fds)
    control.sendall(struct.pack(">I", 3) + b"{{{")
    t.join(5)
    assert result["outcome"].hangup and r.hangup_reason == "garbled control stream"


def test_a_resize_is_read_from_the_terminal_itself():
    master, slave = os.openpty()
    proc = FakeProcess()
    fds = [slave, os.dup(slave), os.dup(slave)]
    r, control, t, result = relay(proc, fds, pty=True)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))
    # what the client says about the size is not trusted: the pty is asked
    control.sendall(pack({"type": "resize", "size": [1, 1, 0, 0]}))
    for _ in range(500):
        if proc.sizes:
            break
        threading.Event().wait(0.01)
    assert proc.sizes == [(50, 132)]
    # raw mode: ^C is a byte for the container, not a signal here
    os.write(master, b"\x03")
    for _ in range(500):
        if proc.sent:
            break
        threading.Event().wait(0.01)
    assert bytes(proc.sent) == b"\x03"
    proc.out.put((1, b"x"))
    proc.out.put(None)
    t.join(5)
    assert os.read(master, 10) == b"x"
    for fd in fds + [master]:
        os.close(fd)


def test_the_terminal_is_cooked_again_after_the_relay():
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    proc = FakeProcess()
    r, control, t, result = relay(proc, [slave, slave, slave], pty=True)
    for _ in range(500):
        if not termios.tcgetattr(slave)[3] & termios.ICANON:
            break
        threading.Event().wait(0.01)
    assert not termios.tcgetattr(slave)[3] & termios.ICANON        # raw while relaying
    proc.out.put(None)
    t.join(5)
    assert termios.tcgetattr(slave) == before
    os.close(master), os.close(slave)


class SocketProcess(FakeProcess):
    """stdin is a real socket the relay may splice into, non-blocking as a
    Python socket with a timeout is underneath (Docker exec streams)."""

    def __init__(self):
        super().__init__()
        self.sock, self.peer = socket.socketpair()
        self.sock.setblocking(False)

    def stdin_fileno(self):
        return self.sock.fileno()

    def close_stdin(self):
        self.sock.shutdown(socket.SHUT_WR)
        super().close_stdin()


def test_stdin_spliced_into_a_non_blocking_stream_arrives_whole_and_then_eof():
    # more than the socket buffers hold, so the splice meets EAGAIN while the
    # reader below is still slow to start
    proc, p = SocketProcess(), Pipes()
    data = os.urandom(8 << 20)
    got = bytearray()

    def reader():
        time.sleep(0.3)
        while chunk := proc.peer.recv(1 << 16):
            got.extend(chunk)

    rd = threading.Thread(target=reader, daemon=True)
    rd.start()
    r, ctl, t, result = relay(proc, p.fds)
    threading.Thread(target=lambda: (_write_all(p.in_w, data), os.close(p.in_w)),
                     daemon=True).start()
    rd.join(30)
    assert not rd.is_alive(), "stdin never reached its end"
    assert proc.stdin_closed.is_set()
    assert bytes(got) == data and r.bytes_in == len(data)
    proc.out.put(None)
    t.join(10)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
