"""Labels on every container/pod a session creates, and what the reaper reads back.

`io.hatchway.process` names the session process that owns the container as
boot-id:pid:start-time.  The container is an orphan exactly when that process
no longer exists on this boot, which is what the reaper checks; it never has to
trust a pid alone (pids are reused).
"""

from __future__ import annotations

import socket

from hatchway.core import connection

PREFIX = "io.hatchway."
USER = PREFIX + "user"
SESSION = PREFIX + "session"
CONNECTION = PREFIX + "connection"
MODE = PREFIX + "mode"
HOST = PREFIX + "host"
PROCESS = PREFIX + "process"
MANAGED = PREFIX + "managed"
WORKSPACE = PREFIX + "workspace"     # connection and persistent modes: the workspace's name
SPEC = PREFIX + "spec"               # ... and a digest of what it was made from
POOL = PREFIX + "pool"               # a warm pool's spare (Docker): a digest of its settings


def host_id() -> str:
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            mid = f.read().strip()
        if mid:
            return mid
    except OSError:
        pass
    return socket.gethostname()


def process_token(pid: int) -> str:
    """pid:starttime of a live process (why no boot id: core/connection.py)."""
    _, _, start = connection.proc_stat(pid)
    return f"{pid}:{start}"


def process_alive(token: str) -> bool:
    try:
        # boot:pid:start is what earlier daemons wrote (a package
        # upgrade keeps their sessions); the boot part is not comparable
        pid_s, start_s = token.split(":")[-2:]
        _, _, start = connection.proc_stat(int(pid_s))
        return str(start) == start_s and not _zombie(int(pid_s))
    except (ValueError, OSError, IndexError):
        return False


def _zombie(pid: int) -> bool:
    """A dead session process whose parent (the old main process, or an init
    that does not reap) has not collected it yet still has its /proc entry."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()[0] in ("Z", "X")


def for_session(user: str, session_id: str, connection_id: str, mode: str,
                owner_pid: int) -> dict[str, str]:
    return {MANAGED: "true", USER: user, SESSION: session_id, CONNECTION: connection_id,
            MODE: mode, HOST: host_id(), PROCESS: process_token(owner_pid)}


def for_workspace(user: str, mode: str, name: str, connection_id: str,
                  spec_digest: str) -> dict[str, str]:
    """A workspace is shared by sessions that come and go, so no session
    process owns it (no `process` label): which sessions use it is recorded
    on the host (workspaces.py), and the reaper asks that instead."""
    out = {MANAGED: "true", USER: user, MODE: mode, HOST: host_id(), WORKSPACE: name,
           SPEC: spec_digest}
    if mode == "connection":
        out[CONNECTION] = connection_id
    return out


def for_spare(pool_key: str, keeper_pid: int) -> dict[str, str]:
    """A spare of the warm pool (backends/docker/pool.py): no user or session
    yet, owned by the process that keeps the pool."""
    return {MANAGED: "true", HOST: host_id(), POOL: pool_key, PROCESS: process_token(keeper_pid)}


def owner_alive(labels: dict[str, str]) -> bool:
    """What the reaper asks of every session-mode container: is its owner
    alive?  (Workspaces have no owner; Backend.reap asks workspaces.py.)"""
    return process_alive(labels.get(PROCESS, ""))


def selector(user: str | None = None) -> dict[str, str]:
    """The labels that pick this host's session containers (of one user): a
    container engine may serve several hosts, each reaping only its own."""
    out = {MANAGED: "true", HOST: host_id()}
    if user is not None:
        out[USER] = user
    return out
