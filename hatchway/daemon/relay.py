"""Where the bytes flow: the session's passed descriptors <-> the container.

Two threads move bytes, one per direction, with plain blocking I/O: the passed
descriptors share their open file description with sshd's side, so making them
non-blocking would change them for everyone (fcntl(2)).  The main thread
watches the control socket from hatchway-shell (resize, signals, its death),
the stdout pipe for a vanished reader, and the two pumps, and decides how the
session ends:

  output ends (the command exited)      -> exit status from the backend
  hangup (pty EOF/EIO, HUP, client or
          stdout reader gone)           -> SIGHUP to the command, removal after a grace
  a limit reached (limits.py)           -> one line to the user, then as a hangup;
                                           exit status 124
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import select
import socket
import stat
import threading
from dataclasses import dataclass

from hatchway.backends.base import ExitStatus, Process
from hatchway.shell import FORWARDED, FrameReader

from . import terminal
from .limits import EXIT_CODE as LIMIT_EXIT, Limits

log = logging.getLogger("hatchwayd")

PIPE_SIZE = 1 << 20     # /proc/sys/fs/pipe-max-size: what an unprivileged process may ask
CHUNK = 1 << 20


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _grow_pipe(fd: int) -> None:
    """Fewer, larger reads and writes on sshd's pipes (64 KiB by default)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


# Descriptors hatchway-shell may have in flight on the control socket: one per
# agent answer (shell.py), and it answers one request at a time.
MAX_FDS = 4


@dataclass
class Outcome:
    status: ExitStatus
    hangup: bool = False
    reason: str | None = None       # why the relay ended it: see Relay._hangup callers


class Relay:
    def __init__(self, proc: Process, fds: list[int], pty: bool, control: socket.socket,
                 reader: FrameReader, pending: list[dict], grace: float,
                 on_activity=None, recorder=None, limits: Limits | None = None):
        """`on_activity()` is called whenever bytes moved (from the pump
        threads: it must be cheap and thread-safe); `recorder`
        (daemon/recording.py) sees a pty session's bytes and sizes; `limits`
        (daemon/limits.py) may end the session."""
        self.proc = proc
        self.fds = fds
        self.pty = pty
        self.control = control
        self.reader = reader
        self.pending = pending
        self.grace = grace
        self.limits = limits if limits else None
        self.bytes_in = 0
        self.bytes_out = 0
        self.wake_r, self.wake_w = os.pipe()
        self.eof = threading.Event()        # the command's output ended: it exited
        self.hangup_reason: str | None = None
        self.on_activity = on_activity or (lambda: None)
        self.recorder = recorder
        # agent forwarding (daemon/agent.py): answer(frame, fd) for `agent`
        # frames; None when this session has no agent socket
        self.agent = None
        self.fds_in: list[int] = []     # descriptors received, not yet claimed by a frame

    # -- the two pumps

    def _pump_in(self) -> None:
        fd = self.fds[0]
        target = getattr(self.proc, "stdin_fileno", lambda: None)()
        if target is not None and not self.pty and _is_pipe(fd):
            if self._splice_in(fd, target):
                return
        while True:
            try:
                data = os.read(fd, CHUNK)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                data = b""      # EIO: the terminal hung up
            if not data:
                if self.pty:
                    # raw mode: ^D is a byte, so an empty read is the terminal going away
                    self._hangup("terminal closed")
                else:
                    self.proc.close_stdin()
                return
            try:
                self.proc.send(data)
            except OSError:
                return          # the command is gone; the output side ends the session
            self.bytes_in += len(data)
            self.on_activity()
            if self.recorder:
                self.recorder.input(data)

    def _splice_in(self, fd: int, target: int) -> bool:
        """sshd's stdin pipe straight into the container's stream, in the
        kernel.  False if splice is not possible here (then nothing was moved)."""
        while True:
            try:
                n = os.splice(fd, target, CHUNK)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                if e.errno == errno.EAGAIN:
                    # a socket with a timeout is O_NONBLOCK underneath (an
                    # exec's stream is): wait until both ends can move bytes
                    select.select([], [target], [])
                    select.select([fd], [], [])
                    continue
                if e.errno in (errno.EINVAL, errno.ENOSYS) and not self.bytes_in:
                    return False
                return True     # the command is gone; the output side ends the session
            if not n:
                self.proc.close_stdin()
                return True
            self.bytes_in += n
            self.on_activity()

    def _pump_out(self) -> None:
        while True:
            item = self.proc.recv()
            if item is None:
                self.eof.set()      # everything before it is already written
                self._wake()
                return
            stream, data = item
            fd = self.fds[2] if stream == 2 and not self.pty else self.fds[1]
            if not self._write_all(fd, data):
                self._hangup("client stopped reading")
                return
            self.bytes_out += len(data)
            self.on_activity()
            if self.recorder:
                self.recorder.output(data)

    @staticmethod
    def _write_all(fd: int, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                return False    # EPIPE / EIO: nobody is reading any more
            view = view[n:]
        return True

    def _hangup(self, reason: str) -> None:
        if self.hangup_reason is None:
            self.hangup_reason = reason
        self._wake()

    def end(self, reason: str) -> None:
        """End the session as a hangup would (SIGHUP, then removal after the
        grace).  Safe from a signal handler."""
        self._hangup(reason)

    def _wake(self) -> None:
        try:
            os.write(self.wake_w, b"!")
        except OSError:
            pass

    # -- control

    def _handle(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "agent":
            # An answer carries its descriptor (it arrived with the frame's bytes).
            fd = self.fds_in.pop(0) if frame.get("ok") is True and self.fds_in else None
            if self.agent is not None:
                self.agent.answer(frame, fd)
            elif fd is not None:
                os.close(fd)
        elif kind == "resize" and self.pty:
            size = terminal.size(self.fds[0])   # our own copy is the authority
            if size:
                self.proc.resize(*size)
                if self.recorder:
                    self.recorder.resize(*size)
        elif kind == "signal":
            name = frame.get("signal")
            if name == "HUP":
                self._hangup("client hung up")
            elif name in FORWARDED:
                self.proc.signal(name)

    def run(self) -> Outcome:
        saved = terminal.make_raw(self.fds[0]) if self.pty else None
        if not self.pty:
            for fd in self.fds:
                if _is_pipe(fd):
                    _grow_pipe(fd)
        threads = [threading.Thread(target=self._pump_in, daemon=True, name="in"),
                   threading.Thread(target=self._pump_out, daemon=True, name="out")]
        for t in threads:
            t.start()
        for frame in self.pending:
            self._handle(frame)

        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        poller.register(self.control, select.POLLIN)
        if not self.pty:
            poller.register(self.fds[1], 0)     # POLLERR arrives when the reader is gone

        while not self.eof.is_set() and self.hangup_reason is None:
            wait = self.limits.wait() if self.limits else None
            for fd, ev in poller.poll(None if wait is None else int(wait * 1000) + 1):
                if fd == self.wake_r:
                    os.read(self.wake_r, 4096)
                elif fd == self.control.fileno():
                    data, garbled = self._read_control()
                    if not data:
                        poller.unregister(self.control)
                        self._hangup("hatchway-shell went away")
                        continue
                    try:
                        if garbled:
                            raise ValueError(garbled)
                        for frame in self.reader.feed(data):
                            self._handle(frame)
                        if len(self.fds_in) > MAX_FDS:
                            raise ValueError("descriptors without frames")
                    except (ValueError, UnicodeDecodeError) as e:
                        log.warning("garbled control frame (%s); ending the session", e)
                        poller.unregister(self.control)
                        self._hangup("garbled control stream")
                elif fd == self.fds[1] and ev & (select.POLLERR | select.POLLHUP):
                    poller.unregister(self.fds[1])
                    self._hangup("client went away")
            if self.limits and self.limits.check(self.bytes_in + self.bytes_out) \
                    and self.hangup_reason is None and not self.eof.is_set():
                self._tell(self.limits.message())
                self._hangup(self.limits.reached)

        hangup = not self.eof.is_set()
        if hangup:
            # Like a terminal hangup on a host: SIGHUP first, and whatever
            # outlives the grace period goes with the container.
            log.debug("hangup: %s", self.hangup_reason)
            self.proc.signal("HUP")
            if self.eof.wait(self.grace):
                status = self.proc.exit_status(timeout=1.0)
            else:
                self.proc.destroy()
                status = ExitStatus(129)
        else:
            status = self.proc.exit_status(timeout=30.0)
        if self.pty:
            terminal.restore(self.fds[0], saved)
        if self.limits and self.limits.reached:
            status = ExitStatus(LIMIT_EXIT)
        return Outcome(status, hangup, self.hangup_reason)

    def _read_control(self) -> tuple[bytes, str | None]:
        """Bytes from hatchway-shell and any descriptors that came with them
        (queued in fds_in, close-on-exec).  The second value names a
        protocol violation."""
        try:
            data, anc, flags, _ = self.control.recvmsg(
                65536, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize),
                socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return b"", None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self.fds_in.extend(fds)
        if flags & socket.MSG_CTRUNC:
            return data or b"!", "too many descriptors"
        return data, None
    def _tell(self, line: str) -> None:
        """One line to the user: on the terminal (raw, so CR LF) or on stderr.
        From a thread, bounded: a client that reads nothing (which is also
        what an idle session can be) must not hold up the end."""
        fd, data = (self.fds[1], f"\r\n{line}\r\n") if self.pty else (self.fds[2], f"{line}\n")
        t = threading.Thread(target=self._write_all, args=(fd, data.encode()), daemon=True)
        t.start()
        t.join(1.0)

    def close(self) -> None:
        for fd in self.fds_in:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds_in = []
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
