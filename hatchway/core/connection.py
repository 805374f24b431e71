"""The connection id: one value per SSH connection, computed independently by the
key helper (at authentication) and by hatchwayd (at session start).

Both descend from the same per-connection sshd process, the privileged monitor
(`sshd: alice [priv]`): the AuthorizedKeysCommand is its direct child, and the
ForceCommand is a child of its unprivileged session child.  The monitor's pid
plus its start time (pids get reused, start times on one boot do not) plus the
boot id name it uniquely; hashing them gives an opaque id that leaks nothing.
"""

from __future__ import annotations

from .digest import sha256



def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def proc_stat(pid: int) -> tuple[str, int, int]:
    """(comm, ppid, starttime) from /proc/<pid>/stat."""
    data = _read(f"/proc/{pid}/stat")
    # comm may contain spaces and parentheses: split at the last ')'
    lpar, rpar = data.index("("), data.rindex(")")
    comm = data[lpar + 1:rpar]
    rest = data[rpar + 2:].split()
    ppid = int(rest[1])
    starttime = int(rest[19])
    return comm, ppid, starttime


def boot_id() -> str:
    try:
        return _read("/proc/sys/kernel/random/boot_id").strip()
    except OSError:
        return "unknown-boot"


def connection_id_for(monitor_pid: int) -> str:
    _, _, start = proc_stat(monitor_pid)
    raw = f"{boot_id()}:{monitor_pid}:{start}".encode()
    return sha256(raw).hexdigest()[:32]
