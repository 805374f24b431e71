"""Agent forwarding (`ssh -A`): the client's agent, reachable inside the container.

What runs where:
  - sshd (as the user) makes the agent socket on the host, in a directory only
    that uid can enter, and passes its path to hatchway-shell.
  - hatchway-shell (the user) opens one connection to it per request and
    hands it over its daemon connection (shell.py: the `agent` frames).
  - This module (hatchwayd, user `hatchway`) listens on
    <run dir>/ctr/<container key>/agent-<session>.sock.  The container key
    directory is bind-mounted read-only at /run/hatchway in the container
    when the container is created (per container: a persistent container
    gets it once and each session's socket appears in it later), and
    SSH_AUTH_SOCK points the session's command at its socket.

Who may use it: a process in *this* container (its cgroup names the
container) whose uid is root or the container's own user; anything else is
closed at once.  The host side only ever listens in that directory and never
opens or follows anything in it; the container cannot write there (read-only
mount), and no host user but `hatchway` and root can enter it (ctr/ is 0700).
The daemon never opens the user's host agent path itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import threading
import time

from hatchway.backends import labels

from .pump import pump

log = logging.getLogger("hatchwayd")

IN_CONTAINER = "/run/hatchway"      # where the container sees its directory
OWNER = "owner"                      # file naming the session process that made the dir
WORKSPACE = "workspace"              # ... or saying it is a workspace's (kept while that is)
ANSWER_TIMEOUT = 10.0                # hatchway-shell connects to a local socket: quick or never
FRESH = 300.0                        # seconds a new workspace's directory is safe from the sweep
MAX_WAITING = 16                     # unanswered requests before new ones are refused


def container_dir(run_dir: str, key: str, owner: str | None = None) -> str:
    """Create (or find) the per-container directory: <run_dir>/ctr/<key>,
    0711 (the container's non-root user must reach its socket through the
    mount), inside a 0700 ctr/ so no host user can.  `owner`: what keeps it
    from the sweep, this session process unless given (WORKSPACE)."""
    if not key or "/" in key or key in (".", ".."):
        raise ValueError(f"bad container key {key!r}")
    ctr = os.path.join(run_dir, "ctr")
    os.makedirs(ctr, mode=0o700, exist_ok=True)
    os.chmod(ctr, 0o700)
    path = os.path.join(ctr, key)
    try:
        os.mkdir(path, 0o711)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ValueError(f"{path} exists and is not this daemon's directory") from None
    os.chmod(path, 0o711)
    with open(os.path.join(path, OWNER), "w", encoding="ascii") as f:
        f.write(owner or labels.process_token(os.getpid()))
    return path


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sweep(run_dir: str, workspace_alive) -> list[str]:
    """Remove the directories of session processes that no longer exist
    (a crashed session cannot clean up after itself), and of workspaces
    `workspace_alive(key)` says are gone.  Returns the removed keys."""
    ctr = os.path.join(run_dir, "ctr")
    removed = []
    try:
        keys = os.listdir(ctr)
    except OSError:
        return removed
    for key in keys:
        path = os.path.join(ctr, key)
        try:
            with open(os.path.join(path, OWNER), encoding="ascii") as f:
                token = f.read().strip()
        except OSError:
            token = ""
        if token == WORKSPACE:
            # A first login writes the owner file before its workspace is on
            # record (backends/workspaces.py): a fresh one is kept.
            alive = workspace_alive(key) or _age(os.path.join(path, OWNER)) < FRESH
        else:
            alive = labels.process_alive(token)
        if not alive:
            remove_dir(path)
            removed.append(key)
    return removed


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return float("inf")


def socket_name(session_id: str) -> str:
    return f"agent-{session_id[:16]}.sock"


class AgentServer:
    """One session's agent socket.  `request(id)` asks hatchway-shell for a
    connection (writes an `agent` frame); the relay hands its answers to
    `answer(frame, fd)`; `peer_ok(pid, uid)` says who may connect."""

    def __init__(self, directory: str, session_id: str, request, peer_ok):
        self.path = os.path.join(directory, socket_name(session_id))
        self.container_path = f"{IN_CONTAINER}/{socket_name(session_id)}"
        self.request = request
        self.peer_ok = peer_ok
        self.lock = threading.Lock()
        self.waiting: dict[int, list] = {}      # id -> [event, fd or None]
        self.next_id = 1
        self.open: set[socket.socket] = set()
        self.closed = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(self.path)        # a stale socket of a crashed session with our id
        except FileNotFoundError:
            pass
        # Anyone in the container may connect (its user may not be root);
        # who gets an answer is decided per connection (peer_ok).
        old = os.umask(0o111)
        try:
            self.listener.bind(self.path)
        finally:
            os.umask(old)
        self.listener.listen(16)

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="agent-accept").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return      # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="agent-conn").start()

    def _serve(self, conn: socket.socket) -> None:
        from .peer import peercred
        agent = None
        try:
            pid, uid, _ = peercred(conn)
            if not self.peer_ok(pid, uid):
                log.warning("agent socket %s: refused pid=%d uid=%d (not this container's "
                            "user or root)", self.path, pid, uid)
                return
            agent = self._ask()
            if agent is None:
                return
            self._pump_both(conn, agent)
        except OSError as e:
            log.debug("agent connection ended: %s", e)
        finally:
            conn.close()
            if agent is not None:
                agent.close()

    def _ask(self) -> socket.socket | None:
        """One fresh connection to the client's agent, from hatchway-shell."""
        event = threading.Event()
        with self.lock:
            if self.closed or len(self.waiting) >= MAX_WAITING:
                return None
            rid = self.next_id
            self.next_id += 1
            slot = self.waiting[rid] = [event, None]
        try:
            self.request(rid)
            event.wait(ANSWER_TIMEOUT)
        finally:
            with self.lock:
                self.waiting.pop(rid, None)
        fd = slot[1]
        if fd is None:
            if not event.is_set():
                log.warning("agent request %d: no answer from hatchway-shell", rid)
            return None
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return None
        # Only a stream socket of the unix family is an agent connection.
        if s.family != socket.AF_UNIX or s.type != socket.SOCK_STREAM:
            log.warning("agent request %d: hatchway-shell passed something else", rid)
            s.close()
            return None
        s.setblocking(True)     # the pumps block; the client's copy is closed by now
        return s

    def answer(self, frame: dict, fd: int | None) -> None:
        """An `agent` frame from hatchway-shell (relay thread).  Takes `fd`."""
        rid = frame.get("id")
        with self.lock:
            slot = self.waiting.get(rid) if isinstance(rid, int) else None
            if slot is not None and slot[1] is None and not slot[0].is_set():
                if frame.get("ok") is True and fd is not None:
                    slot[1], fd = fd, None
                elif frame.get("ok") is not True:
                    log.info("agent request %s: hatchway-shell could not reach the agent: %s",
                             rid, str(frame.get("error"))[:200])
                slot[0].set()
        if fd is not None:
            os.close(fd)        # unasked for, late or duplicate

    def _pump_both(self, a: socket.socket, b: socket.socket) -> None:
        with self.lock:
            if self.closed:
                return
            self.open.update((a, b))
        other = threading.Thread(target=pump, args=(b, a), daemon=True, name="agent-out")
        other.start()
        pump(a, b)
        other.join()
        with self.lock:
            self.open.difference_update((a, b))

    def close(self) -> None:
        """Session end: the socket goes, and so does every open agent connection."""
        with self.lock:
            self.closed = True
            conns = list(self.open)
            for slot in self.waiting.values():
                slot[0].set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
