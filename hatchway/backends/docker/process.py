"""A session's command in a Docker container, as a byte pipe with signals
and an exit status: the container's own main process (session mode,
DockerProcess) or an exec into a workspace (workspace.py)."""

from __future__ import annotations

import logging
import mmap
import socket
import struct
import threading
import time

from ..base import ExitStatus, Process
from .api import ENGINE_GONE, Docker, DockerError, Stream, WaitHandle

log = logging.getLogger("hatchwayd")

# dockerd swallows its detach sequence even for API clients and it cannot be
# turned off; pick one nobody types: four ctrl-^ in a row.
DETACH_KEYS = "ctrl-^,ctrl-^,ctrl-^,ctrl-^"
RECV_BUFFER = 1 << 20       # one recv_into may bring this much output
# How long a session process keeps trying to remove its container while the
# engine does not answer (dockerd restarting): the client already has its
# answer; past this the daemon's reaper removes it.
REMOVE_FOR = 60.0


def _in_container(pid: int, cid: str) -> bool | None:
    """Is `pid` in container `cid`?  None: this process cannot see it."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="ascii", errors="replace") as f:
            return any(cid in line for line in f)
    except OSError:
        return None


def _real_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class DockerProcess(Process):
    def __init__(self, api: Docker, cid: str, stream: Stream, waiter: WaitHandle, tty: bool):
        self.api = api
        self.id = cid[:12]
        self.cid = cid
        self.stream = stream
        self.waiter = waiter
        self.tty = tty
        # anonymous memory: pages are only there once output fills them (an
        # interactive session touches one; bytearray() would zero all of it)
        self._buf = mmap.mmap(-1, RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._pos = self._end = 0       # unparsed bytes: _buf[_pos:_end]
        self._gone = False
        self._lock = threading.Lock()
        self._user_uid: int | None = None

    # -- bytes

    def agent_peer_ok(self, pid: int, uid: int) -> bool:
        # In this container: its cgroup path names the container's full id
        # (cgroup v1 and v2, cgroupfs and systemd drivers alike).  Under the
        # packaged unit (ProtectProc=invisible) other uids' processes are not
        # in /proc at all; then what remains is that only this container (and
        # root and hatchway on the host) can reach the socket's directory.
        if _in_container(pid, self.cid) is False:
            return False
        return uid == 0 or uid == self._container_uid()

    def _container_uid(self) -> int | None:
        """The uid the container's processes run as: its first process's
        (docker-init or the command) as the kernel has it, so a user name only
        the image's /etc/passwd knows needs no lookup; failing that, a numeric
        `User` (or none: root).  None: only root may use the agent."""
        if self._user_uid is None:
            info = (self.api.inspect(self.cid) if not self._gone else None) or {}
            pid = (info.get("State") or {}).get("Pid")
            if isinstance(pid, int) and pid > 0:
                self._user_uid = _real_uid(pid)
            if self._user_uid is None:
                user = str((info.get("Config") or {}).get("User") or "0").split(":")[0]
                self._user_uid = int(user) if user.isdigit() else None
        return self._user_uid

    def send(self, data: bytes) -> None:
        self.stream.sock.sendall(data)

    def stdin_fileno(self) -> int:
        """Where stdin bytes go as they are (the relay may splice into it)."""
        return self.stream.sock.fileno()

    def close_stdin(self) -> None:
        try:
            self.stream.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def recv(self) -> tuple[int, memoryview] | None:
        """The next output as (stream, view).  The view points into this
        process's receive buffer: valid until the next recv(), so the relay
        writes it out before asking again (no copy in Python)."""
        if self.tty:
            n = self._read_into(0)
            return (1, self._view[:n]) if n else None
        # Multiplexed: frames of [stream u8][0 0 0][length u32 BE] + payload.
        # Whole frames of one stream already in the buffer go out as one view:
        # payloads are moved down over the headers between them (memmove in C).
        buf, view = self._buf, self._view
        while True:
            pos, end = self._pos, self._end
            kind = out_start = out_end = None
            while end - pos >= 8:
                k, n = struct.unpack_from(">BxxxL", buf, pos)
                if end - pos < 8 + n:
                    break
                if n:
                    if kind is None:
                        kind, out_start, out_end = k, pos + 8, pos + 8 + n
                    elif k != kind:
                        break
                    else:
                        if pos + 8 != out_end:
                            buf[out_end:out_end + n] = view[pos + 8:pos + 8 + n]
                        out_end += n
                pos += 8 + n
            self._pos = pos
            if kind is not None:
                return (2 if kind == 2 else 1), view[out_start:out_end]
            # keep the incomplete frame's bytes, at the front of the buffer
            if pos:
                left = end - pos
                if left:
                    buf[:left] = view[pos:end]
                self._pos, self._end = 0, left
            if self._end == len(buf):           # a frame larger than the buffer
                self._grow()
                buf, view = self._buf, self._view
            got = self._read_into(self._end)
            if not got:
                return None
            self._end += got

    def _grow(self) -> None:
        buf = bytearray(2 * len(self._buf))
        buf[:self._end] = self._view[:self._end]
        self._buf, self._view = buf, memoryview(buf)

    def _read_into(self, at: int) -> int:
        try:
            return self.stream.recv_into(self._view[at:])
        except OSError:
            return 0

    # -- control

    def initial_resize(self, rows: int, cols: int) -> None:
        # API 1.41 has no ConsoleSize; the container must be running first, and
        # a resize right after start can still race it, so retry briefly.
        for attempt in range(10):
            try:
                self.api.resize(self.cid, rows, cols)
                return
            except DockerError:
                time.sleep(0.01 * (attempt + 1))

    def resize(self, rows: int, cols: int) -> None:
        try:
            self.api.resize(self.cid, rows, cols)
        except DockerError:
            pass

    def signal(self, name: str) -> None:
        try:
            self.api.kill(self.cid, name)
        except DockerError:
            pass

    def exit_status(self, timeout: float | None = None) -> ExitStatus:
        try:
            result = self.waiter.result(timeout)
        except DockerError as e:
            if getattr(e, "dropped", False):
                return ExitStatus(255, ENGINE_GONE)
            try:
                info = self.api.inspect(self.cid)
            except DockerError:             # no engine to ask
                return ExitStatus(255, ENGINE_GONE)
            state = (info or {}).get("State") or {}
            if state.get("Running") or not info:
                return ExitStatus(255, "lost the exit status of the container")
            result = {"StatusCode": state.get("ExitCode", 255)}
        code = int(result.get("StatusCode", 255)) & 0xFF
        note = None
        if code > 128 and not self._gone:
            # Killed by a signal: by the command's own doing, the kernel's OOM
            # killer, or dockerd stopping every container on its way down.
            # It closes its API before it stops them, so an engine that does
            # not answer now is the last of these.
            try:
                info = self.api.inspect(self.cid)
            except DockerError:
                return ExitStatus(255, ENGINE_GONE)
            if code == 137 and info and (info.get("State") or {}).get("OOMKilled"):
                note = "the session ran out of memory and was killed (exit 137)"
        return ExitStatus(code, note)

    def destroy(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
        self.stream.close()
        remove_container(self.api, self.cid)


def remove_container(api: Docker, cid: str) -> bool:
    """Remove a session's container, retrying while the engine does not
    answer (for up to REMOVE_FOR); False if it is still there."""
    end, pause = time.monotonic() + REMOVE_FOR, 0.2
    while not succeeds(lambda: api.remove(cid)):
        if time.monotonic() + pause > end:
            log.warning("could not remove container %s (the engine does not answer); "
                        "the reaper will", cid[:12])
            return False
        time.sleep(pause)
        pause = min(pause * 2, 2.0)
    return True


def succeeds(fn) -> bool:
    """Whether `fn()` ran without raising: best-effort engine calls (removal,
    cleanup) whose failure the reaper or a retry takes care of."""
    try:
        fn()
        return True
    except Exception:
        return False
