"""Workspaces: containers (or pods) that outlive one SSH session, and this
host's record of which session processes use them.

  connection mode   one per SSH connection, shared by all its sessions
                    (ControlMaster multiplexing, an sftp beside a shell);
                    removed when its last session has gone, after
                    workspace.connection_grace
  persistent mode   one per user (and host), kept between logins; stopped
                    after workspace.idle_timeout without a session, removed by
                    `hatchway workspaces rm` or after workspace.remove_after

Each session of such a mode is an exec into the workspace (exec_wrapper.py).
Container labels cannot change after creation, and which sessions use a
workspace changes all the time, so that is recorded here, on the host,
under /run/hatchway/workspaces (the daemon's, mode 0700):

  <name>.lock       flock(2): finding, creating, starting, stopping and
                    removing a workspace happen under it, so two first logins
                    of one user get one workspace, and nothing is stopped or
                    removed while a session is being attached
  <name>.json       what the last session knew: user, mode, its workspace.*
                    settings, when it was started, since when it is idle
  <name>.d/<sid>    one file per attached session: its process token
                    (labels.process_token) and its command's pid inside

A session is live while its process is (labels.process_alive), so a session
process killed with -9 leaves a record the reaper recognises: it kills what
that session left running inside the workspace (exec_wrapper.SIGNAL) and
drops the record.  The files survive a daemon restart (sessions do too) and
vanish with a reboot, when every session process is gone anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time

from hatchway.core import fsutil
from hatchway.core.digest import sha256

from . import labels as L

SHARED = ("connection", "persistent")


def root_for(cfg) -> str:
    """The record directory, beside the daemon's socket (/run/hatchway)."""
    return os.path.join(os.path.dirname(cfg.daemon.socket), "workspaces")


def name_for(mode: str, user: str, connection_id: str = "") -> str:
    """The workspace's container or pod name.  Deterministic, so that every
    session finds it; valid as a Docker name and as a Kubernetes pod name (a
    DNS label: lower case, digits and '-', at most 63); one per user *and
    host* in persistent mode (a container engine may serve several hosts,
    each with its own reaper), the hash keeping users apart whose names read
    the same once lower-cased and cleaned."""
    safe = re.sub(r"[^a-z0-9-]", "-", user.lower()).strip("-")[:30] or "user"
    if mode == "connection":
        return f"hatchway-cn-{safe}-{connection_id[:16]}"
    digest = sha256(f"{L.host_id()}\0{user}".encode()).hexdigest()[:10]
    return f"hatchway-ws-{safe}-{digest}"


def settings_of(cfg) -> dict:
    """A session's workspace.* settings, for its record: the reaper applies
    what the last session was configured with (groups and webhook included)."""
    w = cfg.workspace
    return {"idle_timeout": w.idle_timeout, "remove_after": w.remove_after,
            "connection_grace": w.connection_grace}


class Record:
    """One workspace's record on this host (see the module's docstring)."""

    def __init__(self, name: str, root: str):
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            raise ValueError(f"not a workspace name: {name!r}")
        self.name = name
        self.root = root
        self.base = os.path.join(root, name)
        self.dir = self.base + ".d"

    # -- the lock

    @contextlib.contextmanager
    def lock(self, wait: bool = True):
        """Hold the workspace's lock; yields False (and holds nothing) when
        `wait` is off and someone else has it."""
        _make_dir(self.root, self.root)
        fd = os.open(self.base + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _own(self.base + ".lock", self.root)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)        # releases the lock

    # -- sessions

    def attach(self, session_id: str, token: str, **info) -> None:
        """Record a session as using the workspace (under the lock, before
        the workspace is looked for: a reaper holding the lock next sees it)."""
        _make_dir(self.root, self.root)
        _make_dir(self.dir, self.root)
        self._write(os.path.join(self.dir, _sid(session_id)),
                    dict(info, session=session_id, token=token, since=time.time()))
        self.set_meta(idle_since=None)

    def update(self, session_id: str, **info) -> None:
        path = os.path.join(self.dir, _sid(session_id))
        entry = _read(path)
        if entry is not None:
            self._write(path, dict(entry, **info))

    def detach(self, session_id: str) -> int:
        """The session is over; returns how many live sessions are left.  The
        last one out starts the idle clock."""
        try:
            os.unlink(os.path.join(self.dir, _sid(session_id)))
        except FileNotFoundError:
            pass
        left = len(self.live())
        if not left:
            # Not waiting: whoever holds the lock is attaching a session (then
            # nothing is idle) or stopping the workspace; the reaper starts the
            # clock of a workspace it finds idle without one.
            with self.lock(wait=False) as got:
                if got and not self.live():
                    self.set_meta(idle_since=time.time())
        return left

    def sessions(self) -> list[dict]:
        """Every recorded session, with `alive` set from its process token."""
        out = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return out
        for n in names:
            entry = _read(os.path.join(self.dir, n))
            if entry is None:
                continue
            entry["alive"] = L.process_alive(str(entry.get("token", "")))
            out.append(entry)
        return out

    def live(self, exclude: str | None = None) -> list[dict]:
        return [s for s in self.sessions() if s["alive"] and s.get("session") != exclude]

    def drop(self, session_id: str) -> None:
        try:
            os.unlink(os.path.join(self.dir, _sid(session_id)))
        except FileNotFoundError:
            pass

    # -- what the last session knew

    def meta(self) -> dict:
        return _read(self.base + ".json") or {}

    def exists(self) -> bool:
        """Whether the workspace is on record (forget() ends that)."""
        return os.path.exists(self.base + ".json")

    def set_meta(self, **values) -> None:
        _make_dir(self.root, self.root)
        self._write(self.base + ".json", dict(self.meta(), **values))

    def forget(self) -> None:
        """The workspace is gone: drop its record (not the lock file, which
        someone may hold right now)."""
        for n in _listdir(self.dir):
            try:
                os.unlink(os.path.join(self.dir, n))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass
        try:
            os.unlink(self.base + ".json")
        except FileNotFoundError:
            pass

    def _write(self, path: str, data: dict) -> None:
        fsutil.atomic_write(path, json.dumps(data).encode(), 0o600)
        _own(path, self.root)


def release_connection(rec: Record, grace: float, sshd: str, remove) -> bool:
    """connection mode, once a session's client has its answer: the last
    session out removes the workspace (`remove()`, True when done) when
    `grace` has passed without a new session, at once if the SSH connection
    itself (the sshd process `sshd`) has gone.  A session arriving meanwhile
    takes over (it will be the last one out).  True if it was removed."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if rec.live():
            return False
        if not L.process_alive(sshd):
            break
        time.sleep(0.2)
    with rec.lock():
        if rec.live() or not remove():
            return False
        rec.forget()
        return True


def records(root: str) -> list[Record]:
    """Every workspace this host has a record of."""
    names = {n[:-5] for n in _listdir(root) if n.endswith(".json")}
    names |= {n[:-2] for n in _listdir(root) if n.endswith(".d")}
    out = []
    for n in sorted(names):
        try:
            out.append(Record(n, root))
        except ValueError:
            pass
    return out


def _sid(session_id: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{1,64}", session_id):
        raise ValueError(f"not a session id: {session_id!r}")
    return session_id


def _read(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _make_dir(path: str, root: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    _own(path, root)


def _own(path: str, root: str) -> None:
    """Root (the admin command) creates files the daemon must use later: give
    them to whoever owns the directory above the records (/run/hatchway: the
    daemon's user)."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(os.path.dirname(root.rstrip("/")))
        os.chown(path, st.st_uid, st.st_gid)
    except OSError:
        pass


def is_workspace(labels: dict[str, str]) -> bool:
    """The labels say: a workspace (no owning session; `tend` looks after it)."""
    return labels.get(L.MODE) in SHARED and bool(labels.get(L.WORKSPACE))


def tend(backend, found: list, root: str, defaults, now: float | None = None) -> list[str]:
    """The reaper's part for workspaces.  `found`: this host's workspaces as
    the engine lists them; `defaults`: the file's `workspace` settings, for a
    workspace whose record has none (after a reboot).  Each workspace is
    looked at only when its lock is free: a session being attached, or an
    admin at work, means next time.

      a recorded session whose process is gone (kill -9, a crash):
          what it left running in the workspace is killed, its record dropped
      connection mode, no live session:
          removed once workspace.connection_grace has passed since the last
          one left, or at once when the SSH connection has gone
      persistent mode, no live session:
          running: stopped once idle for workspace.idle_timeout (0: never)
          stopped: removed after workspace.remove_after (0: never)
      a record whose workspace is gone: dropped

    Returns one line per thing done (for the log and `hatchway gc`)."""
    now = time.time() if now is None else now
    done: list[str] = []
    seen = set()
    for f in found:
        name = f.labels.get(L.WORKSPACE, "")
        try:
            rec = Record(name, root)
        except ValueError:
            continue
        seen.add(name)
        with rec.lock(wait=False) as got:
            if got:
                done += _tend_one(backend, f, rec, defaults, now)
    for rec in records(root):
        if rec.name in seen:
            continue
        with rec.lock(wait=False) as got:
            if got and not rec.live():
                rec.forget()
    return done


def _tend_one(backend, f, rec: Record, defaults, now: float) -> list[str]:
    done = []
    mode = f.labels.get(L.MODE)
    for s in rec.sessions():
        if s["alive"]:
            continue
        if f.running and isinstance(s.get("pid"), int):
            backend.kill_session(f, s["pid"], s.get("start"))
        rec.drop(str(s.get("session")))
        done.append(f"{rec.name}: killed what session {str(s.get('session'))[:12]} left "
                    "(its session process is gone)")
    if rec.live() or f.going:
        return done
    meta = rec.meta()

    def setting(key: str) -> float:
        value = meta.get(key)
        return float(value) if isinstance(value, (int, float)) else getattr(defaults, key)

    idle_since = meta.get("idle_since")
    if not isinstance(idle_since, (int, float)):
        idle_since = now            # first seen with no session (its sessions died, a reboot)
        rec.set_meta(idle_since=now)
    if mode == "connection":
        gone = not L.process_alive(str(meta.get("sshd", "")))
        if (gone or now - idle_since >= setting("connection_grace")) and backend.remove(f):
            rec.forget()
            done.append(f"{rec.name}: removed (its connection's sessions have all ended)")
    elif not f.running and not backend.keeps_stopped:
        if backend.remove(f):           # e.g. a pod that never ran, or ended
            rec.forget()
            done.append(f"{rec.name}: removed (not running, no session)")
    elif f.running:
        idle = setting("idle_timeout")
        if idle and now - idle_since >= idle and backend.stop(f):
            rec.set_meta(stopped_at=now)
            done.append(f"{rec.name}: stopped (no session for {int(now - idle_since)}s)")
    else:
        keep = setting("remove_after")
        stopped = meta.get("stopped_at")
        if not isinstance(stopped, (int, float)):
            stopped = now
            rec.set_meta(stopped_at=now)
        if keep and now - stopped >= keep and backend.remove(f):
            rec.forget()
            done.append(f"{rec.name}: removed (stopped for {int(now - stopped)}s, "
                        "workspace.remove_after)")
    return done
