"""When the image has no sftp server, tell the SFTP client so in SFTP.

sshd throws a subsystem's stderr away (session.c hands the channel
CHAN_EXTENDED_IGNORE), so a line on stderr never reaches an sftp user: the
client just says "Connection closed".  The in-container fallback
(commands.sftp_argv) therefore prints its line on stdout instead.  A real sftp
server's first bytes are a VERSION packet; `hatchway:` read as a packet length
is 1.7 GB, so no server ever starts that way.

`Watch` wraps a subsystem session's process.  If the first output is that
line, Watch answers the client in the server's place: VERSION 3 for INIT,
then SSH_FX_OP_UNSUPPORTED carrying the line for every request, until the
client hangs up (the exit status stays the fallback's 127).  OpenSSH's sftp
prints it ("realpath .: hatchway: this environment has no sftp server (…)"),
paramiko raises it; scp and PuTTY's pscp show only the code's own text,
"Operation unsupported".

Once a real server answered, `Watch` also paces the client: at most
MAX_OUTSTANDING requests are forwarded that the server has not answered yet.
OpenSSH's sftp-server reads up to 16 KB per loop but handles one request per
loop, and grows its input buffer by copying all of it (recallocarray), so a
client with unbounded outstanding requests (PuTTY's pscp/psftp upload: 4 KB
writes, flow-controlled only by the SSH window) makes it quadratic once a
backlog forms: 100 MB took minutes with 100+ MB queued inside sftp-server.
Holding requests back here leaves the backlog in the SSH window, where it
belongs.
"""

from __future__ import annotations

import logging
import struct
import threading

from hatchway.backends.base import SIGNALS, ExitStatus, Process

log = logging.getLogger("hatchwayd")

MARKER = b"hatchway: this environment has no sftp server"

FXP_INIT, FXP_VERSION, FXP_STATUS = 1, 2, 101
FX_OP_UNSUPPORTED = 8
MAX_PACKET = 256 * 1024     # OpenSSH's own limit for one SFTP packet
MAX_PENDING = 1 << 20       # unread answers; a client that never reads is dropped
MAX_WATCHED = 64 * 1024     # client bytes kept until the server's first output
MAX_OUTSTANDING = 64        # unanswered requests forwarded to a real server (OpenSSH's sftp: 64)


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _packet(body: bytes) -> bytes:
    return _u32(len(body)) + body


class Responder:
    """The client's bytes in, our answers out (an SFTP v3 server that can do
    nothing but say why)."""

    def __init__(self, message: bytes):
        self.message = message
        self.buf = b""
        self.broken = False         # not SFTP: stop answering

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        while not self.broken and len(self.buf) >= 4:
            (n,) = struct.unpack_from(">I", self.buf)
            if n < 1 or n > MAX_PACKET:
                self.broken = True
                break
            if len(self.buf) < 4 + n:
                break
            body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
            if body[0] == FXP_INIT:
                out.append(_packet(bytes([FXP_VERSION]) + _u32(3)))
            elif len(body) >= 5:
                request_id = body[1:5]
                out.append(_packet(bytes([FXP_STATUS]) + request_id + _u32(FX_OP_UNSUPPORTED)
                                   + _u32(len(self.message)) + self.message
                                   + _u32(2) + b"en"))
            else:
                self.broken = True
        return b"".join(out)


class _Packets:
    """Counts whole SFTP packets in a byte stream, never copying the stream."""

    def __init__(self):
        self.need = 0               # body bytes still to come of the current packet
        self.head = b""             # a length prefix split across reads
        self.broken = False         # not SFTP framing: stop counting

    def count(self, data) -> int:
        """Packets completed by `data`."""
        done, i, n = 0, 0, len(data)
        while i < n and not self.broken:
            if self.need:
                k = min(self.need, n - i)
                i += k
                self.need -= k
                if not self.need:
                    done += 1
                continue
            k = min(4 - len(self.head), n - i)
            self.head += bytes(data[i:i + k])
            i += k
            if len(self.head) == 4:
                (self.need,) = struct.unpack(">I", self.head)
                self.head = b""
                if not 0 < self.need <= MAX_PACKET + 1024:
                    self.broken = True
        return done


class Pacer:
    """Forwards the client's requests so that at most `limit` are unanswered."""

    def __init__(self, send, limit: int = MAX_OUTSTANDING):
        self._send = send
        self.limit = limit
        self.sent = 0               # requests started (pump_in thread only)
        self.answered = 0           # responses seen (pump_out thread only)
        self.need = 0               # body bytes still to forward of the current request
        self.head_bytes = b""       # a length prefix split across reads
        self.off = False            # not SFTP (or the end): plain forwarding
        self._answers = _Packets()
        self._cond = threading.Condition()
        self._waiting = False

    def send(self, data, forwarded: bool = False) -> None:
        """Forward `data`, holding back requests beyond the limit.  `forwarded`:
        only count them (bytes that already went to the server)."""
        if self.off:
            if not forwarded:
                self._send(data)
            return
        view = memoryview(data)
        i, n, start = 0, len(view), 0
        while i < n:
            if self.need:
                k = min(self.need, n - i)
                i += k
                self.need -= k
                continue
            if not self.head_bytes and not forwarded and self.sent - self.answered >= self.limit:
                if i > start:           # what is already allowed goes first
                    self._send(bytes(view[start:i]))
                    start = i
                self._wait()
                if self.off:
                    break
            if not self.head_bytes:
                self.sent += 1          # a new request starts here
            k = min(4 - len(self.head_bytes), n - i)
            self.head_bytes += bytes(view[i:i + k])
            i += k
            if len(self.head_bytes) == 4:
                (self.need,) = struct.unpack(">I", self.head_bytes)
                self.head_bytes = b""
                if not 0 < self.need <= MAX_PACKET + 1024:
                    self.off = True     # not SFTP: stop pacing
                    break
        if forwarded:
            return
        if start == 0:
            self._send(data)
        elif start < n:
            self._send(bytes(view[start:]))

    def _wait(self) -> None:
        with self._cond:
            self._waiting = True
            while not self.off and self.sent - self.answered >= self.limit:
                self._cond.wait()
            self._waiting = False

    def answered_by(self, data) -> None:
        done = self._answers.count(data)
        if self._answers.broken:
            self.stop()
        elif done:
            with self._cond:
                self.answered += done
                if self._waiting:
                    self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self.off = True
            self._cond.notify_all()


class Watch(Process):
    """A subsystem session's process, or our Responder once its first output
    says there is no sftp server.  Thread-safe for the relay's two pumps."""

    def __init__(self, proc: Process):
        self.proc = proc
        self.id = proc.id
        self._cond = threading.Condition()
        self._watching = True           # until the first stdout bytes
        self._seen: list[bytes] = []    # the client's bytes so far, while watching
        self._seen_len = 0
        self._responder: Responder | None = None
        self._answers = bytearray()
        self._ended = False
        self._pacer: Pacer | None = None    # once a real server answered

    # -- bytes

    def send(self, data: bytes) -> None:
        pacer = self._pacer
        if pacer is None:
            with self._cond:
                pacer = self._pacer
                if pacer is None:
                    if self._responder is not None:
                        self._answer(data)
                        return
                    watching = self._watching
                    if watching:
                        self._seen.append(data)
                        self._seen_len += len(data)
                        if self._seen_len > MAX_WATCHED:    # a talkative client: a real server
                            self._watching, watching, self._seen = False, False, []
        if pacer is not None:
            pacer.send(data)
            return
        try:
            self.proc.send(data)
        except OSError:
            if not watching:
                raise
            # the fallback exits at once; what the client said is kept for the
            # Responder, and the relay must keep reading the client for it

    def close_stdin(self) -> None:
        with self._cond:
            if self._responder is not None:
                self._ended = True
                self._cond.notify_all()
        self.proc.close_stdin()

    def recv(self) -> tuple[int, bytes] | None:
        if self._responder is None:
            item = self.proc.recv()
            pacer = self._pacer
            if pacer is not None:
                if item is None:
                    pacer.stop()
                elif item[0] == 1:
                    pacer.answered_by(item[1])
                return item
            if item is None or item[0] != 1 or not self._watching:
                return item
            with self._cond:
                self._watching = False
                seen, self._seen = b"".join(self._seen), []
                if bytes(item[1][:len(MARKER)]) != MARKER:
                    # a real server: from now on only pace the client's requests
                    pacer = Pacer(self.proc.send)
                    pacer.send(seen, forwarded=True)
                    pacer.answered_by(item[1])
                    self._pacer = pacer
                    return item
                self._responder = Responder(bytes(item[1]).split(b"\n", 1)[0])
                log.info("container %s has no sftp server; telling the client in SFTP", self.id)
                self._answer(seen)
        with self._cond:
            while not self._answers and not self._ended:
                self._cond.wait()
            if self._answers:
                out = bytes(self._answers)
                self._answers.clear()
                return 1, out
            return None

    def _answer(self, data: bytes) -> None:
        """With the lock held."""
        if self._ended:
            return
        self._answers += self._responder.feed(data)
        if self._responder.broken or len(self._answers) > MAX_PENDING:
            self._ended = True
        self._cond.notify_all()

    # -- control: the container's, whatever answers the client

    def resize(self, rows: int, cols: int) -> None:
        self.proc.resize(rows, cols)

    def signal(self, name: str) -> None:
        self.proc.signal(name)
        if name in SIGNALS:
            if self._pacer is not None:
                self._pacer.stop()
            with self._cond:
                if self._responder is not None:
                    self._ended = True
                    self._cond.notify_all()

    def exit_status(self, timeout: float | None = None) -> ExitStatus:
        return self.proc.exit_status(timeout)

    def destroy(self) -> None:
        if self._pacer is not None:
            self._pacer.stop()
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        self.proc.destroy()

    def release(self) -> None:
        self.proc.release()
