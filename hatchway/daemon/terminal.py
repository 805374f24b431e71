"""The host side of a pty session: raw mode and window size.

termios state belongs to the terminal, not to a descriptor, so the daemon can
set it through its copy of the passed slave.  TCSANOW, not tty.setraw's default
TCSAFLUSH, which would throw away what the user already typed.
"""

from __future__ import annotations

import fcntl
import struct
import termios
import tty


def make_raw(fd: int):
    """Put the terminal in raw mode; returns what to restore later (or None)."""
    try:
        saved = termios.tcgetattr(fd)
        tty.setraw(fd, termios.TCSANOW)
        return saved
    except (termios.error, OSError):
        return None


def restore(fd: int, saved) -> None:
    if saved is None:
        return
    try:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    except (termios.error, OSError):
        pass  # the terminal is gone (hangup): nothing to restore


def size(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None
