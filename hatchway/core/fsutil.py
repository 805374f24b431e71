"""The file system and /proc the way every part of Hatchway touches them.

Cheap to import (os only): the key helper uses it on every call.
"""

from __future__ import annotations

import os


def stat_tag(path: str) -> tuple | None:
    """What tells a changed file from an unchanged one without reading it
    (a replaced file has another inode; an edited one another size or
    mtime); None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def atomic_write(path: str, data: bytes, mode: int = 0o644, durable: bool = False) -> None:
    """Replace `path` with `data` in one step: readers see the old file or the
    new, never a part.  The temporary file is made O_EXCL|O_NOFOLLOW next to
    it (a planted symlink is never followed); `durable` also fsyncs it, for
    files a crash must not leave empty (sshd's drop-in, the admin token).
    Raises OSError, leaving nothing behind."""
    tmp = f"{path}.tmp-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:         # left by a crashed process that had our pid
        os.unlink(tmp)
        fd = os.open(tmp, flags, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)             # whatever the umask took away
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def proc_uids(pid: int) -> tuple[int, ...] | None:
    """(real, effective, saved, file system) uid of a process, from
    /proc/<pid>/status; None if it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return tuple(int(x) for x in line.split()[1:5])
    except (OSError, ValueError):
        pass
    return None
