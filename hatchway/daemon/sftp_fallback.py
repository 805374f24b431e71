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

    # -- bytes

    def send(self, data: bytes) -> None:
        with self._cond:
            if self._responder is not None:
                self._answer(data)
                return
            watching = self._watching
            if watching:
                self._seen.append(data)
                self._seen_len += len(data)
                if self._seen_len > MAX_WATCHED:    # a talkative client: a real server
                    self._watching, watching, self._seen = False, False, []
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
            if item is None or item[0] != 1 or not self._watching:
                return item
            with self._cond:
                self._watching = False
                seen, self._seen = b"".join(self._seen), []
                if not item[1].startswith(MARKER):
                    return item
                self._responder = Responder(item[1].split(b"\n", 1)[0])
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
            with self._cond:
                if self._responder is not None:
                    self._ended = True
                    self._cond.notify_all()

    def exit_status(self, timeout: float | None = None) -> ExitStatus:
        return self.proc.exit_status(timeout)

    def destroy(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        self.proc.destroy()
