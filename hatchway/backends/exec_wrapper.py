"""What runs inside a container around a session's command when the session
is an *exec* into a container that is already there (every Kubernetes
session; Docker's `connection` and `persistent` modes), in plain /bin/sh.

Neither engine can signal an exec'd process (Docker has no API for it,
Kubernetes neither), and hatchwayd, an unprivileged user on the host, cannot
signal a container's processes from outside.  So the command runs under a
tiny wrapper that first prints one line, `hatchway-pid:<pid>:<start>`, its
pid inside the container and that process's start time (field 22 of
/proc/<pid>/stat), and then replaces itself with the command, which keeps
both.  The backend strips that line from the output (`read_pid`) and signals
with a second exec of `SIGNAL`.

Every exec is a process session of its own (runc calls setsid(); pid = pgid =
sid), so "this session's processes" is exactly the processes whose session id
is that pid; only what starts a session of its own (setsid, tmux, screen, a
daemon) leaves it.  The kernel does not hand out a pid that is still some
process's session id, and the start time tells a reused pid from the
original, so a sweep never hits another session's processes.

The image needs /bin/sh and `kill`, plus `stty` for terminals (any
distribution or busybox image has them); arguments travel as separate argv
entries, never through a host shell.
"""

from __future__ import annotations

import re

# The first line of output; the start time is optional only so that a
# container without /proc still runs its sessions (they just cannot be swept).
PID_LINE = re.compile(rb"hatchway-pid:(\d+)(?::(\d+))?\r?\n")
_PREFIX = b"hatchway-pid:"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# $1.. are: the terminal size (rows cols) or "- -"; a FIFO to make and read
# stdin from, or "-" (Kubernetes without a terminal: its feeder writes
# there, see kubernetes/backend.py); `--`-terminated NAME=value pairs to
# export; then the command.  The pid line comes after stty, so that a command
# asking for its size at once gets the real one (a resize can reach the
# engine only once the process runs), and after the FIFO exists.
WRAP = ('if [ "$1" != - ]; then stty rows "$1" cols "$2" 2>/dev/null; fi; f=$3; shift 3; '
        'while [ "$1" != -- ]; do export "$1"; shift; done; shift; '
        'if [ "$f" != - ]; then mkfifo -m 600 "$f" || exit 125; fi; '
        'st=$(read -r s </proc/$$/stat && set -- ${s##*) } && echo ":${20}"); '
        'echo "hatchway-pid:$$$st"; '
        'if [ "$f" != - ]; then exec "$@" <"$f"; fi; exec "$@"')
FIFO_FAILED = 125

# SIGNAL sig pid start scope: `one` signals the command, `group` its process
# group (what a terminal hangup reaches), `session` every process of the
# session, even once the command itself has gone.  Nothing happens when the
# pid now belongs to another process (its start time differs).  Sweeps /proc
# rather than `kill -- -pgid`, which busybox and dash spell differently.
SIGNAL = ('sig=$1 pid=$2 start=$3 scope=$4; '
          'if read -r s 2>/dev/null </proc/$pid/stat; then set -- ${s##*) }; '
          '[ "$start" = - ] || [ "${20}" = "$start" ] || exit 0; '
          'if [ "$scope" = one ]; then kill -s "$sig" "$pid" 2>/dev/null; exit 0; fi; '
          'elif [ "$scope" != session ]; then exit 0; fi; '
          'f=4; [ "$scope" = group ] && f=3; '
          'for d in /proc/[0-9]*; do read -r s 2>/dev/null <"$d/stat" || continue; '
          'set -- ${s##*) }; eval "v=\\${$f}"; '
          '[ "$v" = "$pid" ] && kill -s "$sig" "${d#/proc/}" 2>/dev/null; done; exit 0')

SCOPES = {"HUP": "group", "KILL": "session"}    # TERM, INT, QUIT: the command alone


def wrap(argv: list[str], size: tuple[int, int] | None = None,
         env: dict[str, str] | None = None, fifo: str | None = None) -> list[str]:
    """The argv of an exec that runs `argv` under the wrapper."""
    rows, cols = (str(size[0]), str(size[1])) if size else ("-", "-")
    # a name `export` refuses would end the wrapper before the command runs
    exports = [f"{k}={v}" for k, v in (env or {}).items() if _NAME.fullmatch(k)]
    return ["/bin/sh", "-c", WRAP, "hatchway", rows, cols, fifo or "-", *exports, "--", *argv]


def signal_argv(sig: str, pid: int, start: int | None, scope: str | None = None) -> list[str]:
    """The argv of an exec that delivers `sig` (a name from base.SIGNALS)."""
    return ["/bin/sh", "-c", SIGNAL, "hatchway", sig, str(int(pid)),
            "-" if start is None else str(int(start)), scope or SCOPES.get(sig, "one")]


def read_pid(next_item, limit: int = 96):
    """Consume the pid line from the first output.  `next_item()` returns
    (stream, bytes) or None at the end.  Returns (pid, start, pending): pid None
    when the first output is not the line (then all of it is output), and
    `pending` the items read that are output, in order."""
    pending, buf = [], b""
    while len(buf) < limit:
        item = next_item()
        if item is None:
            break
        stream, data = item
        if stream != 1:
            pending.append(item)
            continue
        buf += data
        m = PID_LINE.match(buf)
        if m:
            rest = buf[m.end():]
            if rest:
                pending.append((1, rest))
            return int(m.group(1)), (int(m.group(2)) if m.group(2) else None), pending
        if not _PREFIX.startswith(buf[:len(_PREFIX)]) or b"\n" in buf:
            break
    if buf:
        pending.append((1, buf))
    return None, None, pending
