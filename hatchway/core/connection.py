"""The connection id: one value per SSH connection, computed independently by the
key helper (at authentication) and by hatchwayd (at session start).

Both descend from the same per-connection sshd process, the privileged monitor
(`sshd: alice [priv]`): the AuthorizedKeysCommand is its direct child, and the
ForceCommand is a child of its unprivileged session child.  The monitor's pid
plus its start time (pids get reused, start times on one boot do not) name it;
hashing them gives an opaque id that leaks nothing.

Not the boot id, though it would tell boots apart: inside a container
(systemd-nspawn, LXC) the host's boot id file is overmounted with the
container's, and a unit with ProtectKernelTunables= gets a fresh /proc/sys
that shows the kernel's own, so the sandboxed daemon and sshd's children read
two different "boot ids" on one boot.  For the same pid to come back at the
same clock tick after a reboot is the price, and what it costs is small: a
log line correlated wrongly, a dead session's container kept until that
process ends.
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


def connection_id_for(monitor_pid: int) -> str:
    _, _, start = proc_stat(monitor_pid)
    raw = f"{monitor_pid}:{start}".encode()
    return sha256(raw).hexdigest()[:32]
