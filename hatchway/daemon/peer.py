"""Who is on the other end of the socket, and what did they hand us.

Identity comes from the kernel only: SO_PEERCRED gives the uid (and pid) that
connected.  Everything in the hello is a request to validate, never identity.
The passed descriptors must be what sshd gives a session: one pty slave owned
by that user (all three fds), or three pipes.
"""

from __future__ import annotations

import array
import os
import pwd
import socket
import stat
import struct
import time

from hatchway.core import connection, fsutil, identity
from hatchway.core.errors import HatchwayError
from hatchway.shell import MAX_FRAME, VERSION, FrameReader


PTY_MAJORS = range(136, 144)      # Unix98 pty slaves


class Refused(HatchwayError):
    """This connection is refused.  `message` is safe to show the peer."""
    code = 255


def peercred(conn: socket.socket) -> tuple[int, int, int]:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def receive_hello(conn: socket.socket,
                  timeout: float) -> tuple[dict, list[int], FrameReader, list[dict]]:
    """Read the first frame and exactly three descriptors that came with it.
    Descriptors are received close-on-exec (recv_fds would make them inheritable).
    Returns the hello, the fds, the reader and any frames that followed the hello."""
    reader = FrameReader()
    fds: list[int] = []
    deadline = time.monotonic() + timeout
    first = True
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Refused("timed out waiting for the session hello", "hello timeout")
            conn.settimeout(left)
            try:
                data, ancdata, flags, _ = conn.recvmsg(
                    MAX_FRAME + 4, socket.CMSG_SPACE(4 * array.array("i").itemsize),
                    socket.MSG_CMSG_CLOEXEC)
            except socket.timeout:
                raise Refused("timed out waiting for the session hello", "hello timeout") from None
            got: list[int] = []
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(payload[:len(payload) - len(payload) % arr.itemsize])
                    got.extend(arr)
            fds.extend(got)
            if flags & socket.MSG_CTRUNC:
                raise Refused("too many descriptors", "control data truncated (too many fds)")
            # A big hello arrives in several reads; the fds come with the first.
            if got and not first:
                raise Refused("descriptors sent after the hello", "late fds")
            first = False
            if not data:
                raise Refused("connection closed before the hello", "EOF before hello")
            try:
                frames = reader.feed(data)
            except (ValueError, UnicodeDecodeError) as e:
                raise Refused("malformed hello", f"garbage on the socket: {e}") from None
            if frames:
                break
        hello = frames[0]
        if hello.get("type") != "hello" or hello.get("v") != VERSION:
            raise Refused(f"unsupported protocol (this daemon speaks version {VERSION})",
                          f"bad hello type/version: {hello.get('type')!r} v{hello.get('v')!r}")
        if len(fds) != 3:
            raise Refused("expected exactly three descriptors (stdin, stdout, stderr)",
                          f"got {len(fds)} fds")
        return hello, fds, reader, frames[1:]
    except BaseException:
        for fd in fds:
            _close(fd)
        raise


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def check_fds(fds: list[int], uid: int, pty: bool) -> None:
    sts = [os.fstat(fd) for fd in fds]
    if pty:
        for st in sts:
            if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) not in PTY_MAJORS:
                raise Refused("a terminal session must pass its pty", "pty fd is not a pty slave")
            if st.st_uid != uid:
                raise Refused("the terminal does not belong to you", "pty not owned by peer uid")
        if len({st.st_rdev for st in sts}) != 1:
            raise Refused("stdin, stdout and stderr must be the same terminal", "mixed ptys")
    else:
        for st in sts:
            if not stat.S_ISFIFO(st.st_mode):
                raise Refused("a non-terminal session must pass pipes", "fd is not a pipe")


def account(uid: int) -> pwd.struct_passwd:
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        raise Refused("you have no account here", f"uid {uid} has no passwd entry") from None
    if identity.group_id() is None:
        raise Refused(f"Hatchway is not set up on this host (no {identity.GROUP} group)",
                      f"group {identity.GROUP} missing")
    if not identity.is_member(pw):
        raise Refused("you are not a Hatchway user", f"{pw.pw_name} not in {identity.GROUP}")
    return pw


def sshd_monitor(pid: int) -> int | None:
    """The per-connection privileged sshd process above the client, if any.
    hatchway-shell's parent is the unprivileged `sshd: user@…` child; its parent,
    running as root, is the monitor that also spawned the key helper."""
    for _ in range(6):
        try:
            comm, ppid, _ = connection.proc_stat(pid)
        except (OSError, ValueError, IndexError):
            return None
        if comm == "sshd" and (fsutil.proc_uids(pid) or (None,))[0] == 0:
            return pid
        if ppid <= 1:
            return None
        pid = ppid
    return None


def connection_id(peer_pid: int) -> str:
    monitor = sshd_monitor(peer_pid)
    if monitor is None:
        # not under sshd (e.g. an admin testing by hand): a fresh id
        return os.urandom(16).hex()
    try:
        return connection.connection_id_for(monitor)
    except (OSError, ValueError, IndexError):
        return os.urandom(16).hex()
