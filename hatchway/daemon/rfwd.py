"""Remote forwarding (`ssh -R P:HOST:PORT`) landing inside the user's
container: part of the port relay (daemon/portfwd.py), user `hatchway`.

sshd is stock: for a -R it listens, as the user, on the *host's*
127.0.0.1:P and [::1]:P (GatewayPorts no), and sends every connection
accepted there to the client.  The guard's table lets no host process but
this relay connect to a reserved P (every port of the file's
`session.remote_forward_ports`), and hatchway-keys gives a user only their
own reserved ports (`permitlisten`).  So the host listener is a private
line between this relay and the user's client.  What the container needs is
the other end: a listener on 127.0.0.1:P *in the container's network
namespace*.  Only root can enter one, so the guard makes those sockets
(netguard.listen_in) and passes them over the channel it gave this process.

Every WATCH seconds the watcher compares the host's loopback listeners
(sock_diag: port, owner uid) with the listeners it holds:
  - a reserved port held by a covered user whose policy lists it gets a
    listener in that user's container (the same choice as -L: a workspace
    first, else the newest session container); a different container now
    (the old one went) means a new listener;
  - a listener whose host side is gone (the client cancelled or
    disconnected) is closed; connections already joined run to their end;
  - a held listener's container is looked up again every CHECK seconds
    (when it went, was started again with a new network namespace, or a
    workspace now comes first, the listener moves).
Each connection accepted in the container is joined to the host listener
only after sock_diag confirms that the socket which answered belongs to the
same uid: a port let go and taken by another user between two looks is never
joined to the wrong client.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import socket
import threading
import time

from hatchway.core import portfwd as P
from hatchway.core.identity import user_groups
from hatchway.core.switches import list_for

from .pump import pump

log = logging.getLogger("hatchway-portrelay")

WATCH = 0.5                 # seconds between looks at the host's listeners
RETRY = 5.0                 # a listener that could not be made is tried again after this
CHECK = 2.0                 # how long a user's container is taken as still the one


class GuardChannel:
    """The relay's end of hatchway-netguard's socketpair: one request, one
    answer with the sockets, at a time."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.lock = threading.Lock()

    def listen(self, pid: int, container: str, port: int) -> list[socket.socket]:
        with self.lock:
            self.sock.send(json.dumps({"pid": pid, "container": container,
                                       "port": port}).encode())
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, 4096, 4)
        socks = [socket.socket(fileno=fd) for fd in fds]
        try:
            answer = json.loads(msg or b"{}")
        except ValueError:
            answer = {"error": "unreadable answer from hatchway-netguard"}
        if "error" in answer or not socks:
            for s in socks:
                s.close()
            raise OSError(answer.get("error") or "hatchway-netguard made no socket")
        return socks


class Listener:
    """One user's -R port inside one container."""

    def __init__(self, uid: int, user: str, port: int, container: str, pid: int,
                 socks: list[socket.socket], host_addrs: set[str]):
        self.uid, self.user, self.port, self.container = uid, user, port, container
        self.pid = pid      # a workspace started again keeps its id, not its namespace
        self.socks = socks
        self.host_addrs = host_addrs
        self.closed = False
        for s in socks:
            s.settimeout(1.0)       # accept() wakes up to notice `closed`
            threading.Thread(target=self._accept, args=(s,), daemon=True,
                             name="rfwd-accept").start()

    def close(self) -> None:
        self.closed = True

    def _accept(self, s: socket.socket) -> None:
        try:
            while not self.closed:
                try:
                    conn, _ = s.accept()
                except socket.timeout:
                    continue
                except OSError as e:
                    log.warning("-R user=%s port=%d: accept: %s", self.user, self.port, e)
                    return
                threading.Thread(target=self._join, args=(conn,), daemon=True,
                                 name="rfwd-conn").start()
        finally:
            s.close()

    def _join(self, conn: socket.socket) -> None:
        host = None
        try:
            conn.settimeout(None)
            addr = "127.0.0.1" if "127.0.0.1" in self.host_addrs else sorted(self.host_addrs)[0]
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            host = socket.socket(family, socket.SOCK_STREAM)
            host.settimeout(10)
            host.connect((addr, self.port))
            host.settimeout(None)
            mine = host.getsockname()[:2]
            # the socket that answered is sshd's, accepted from the user's listener
            owner = P.peer_uid(family, (addr, self.port), mine)
            if owner != self.uid:
                log.warning("-R user=%s port=%d: refused: the host listener now belongs to "
                            "uid %s", self.user, self.port, owner)
                return
            log.info("-R user=%s port=%d container=%s: connection", self.user, self.port,
                     self.container[:12])
            back = threading.Thread(target=pump, args=(host, conn), daemon=True,
                                    name="rfwd-back")
            back.start()
            pump(conn, host)
            back.join()
        except OSError as e:
            log.warning("-R user=%s port=%d: %s", self.user, self.port, e)
        finally:
            conn.close()
            if host is not None:
                host.close()


class RemoteForwards:
    """The watcher: keeps one Listener per (uid, port) the host shows."""

    def __init__(self, relay, guard: GuardChannel):
        self.relay = relay
        self.guard = guard
        self.active: dict[tuple[int, int], Listener] = {}
        self.failed: dict[tuple[int, int, str], float] = {}
        self.containers: dict[int, tuple[float, tuple[str, int] | None]] = {}
        self.said: set[str] = set()

    def _once(self, what: str, text: str) -> None:
        if what not in self.said:
            self.said.add(what)
            log.warning("%s", text)

    def run(self) -> None:
        while True:
            try:
                self.step()
            except Exception as e:      # one bad look never ends the watcher
                log.error("-R watcher: %s: %s", type(e).__name__, e)
            time.sleep(WATCH)

    def step(self) -> None:
        reserved = P.reserved()
        covered = P.covered_uids()
        want: dict[tuple[int, int], set[str]] = {}
        if reserved:
            for addr, port, uid in P.loopback_listeners():
                if port in reserved and uid in covered:
                    want.setdefault((uid, port), set()).add(addr)
        for key in [k for k in self.active if k not in want]:
            self._drop(key, "the host side is gone")
        if not want:
            return
        cfg = self.relay.settings()
        containers: dict[int, tuple[str, int] | None] = {}
        for (uid, port), addrs in want.items():
            try:
                pw = pwd.getpwuid(uid)
            except KeyError:
                continue
            if port not in list_for(cfg.rpolicy, user_groups(pw.pw_name, pw.pw_gid)):
                self._once(f"policy {uid} {port}", f"-R user={pw.pw_name} port={port}: "
                           "not in the user's session.remote_forward_ports; no listener")
                self._drop((uid, port), "no longer allowed")
                continue
            if not hasattr(cfg.way, "container_pid"):
                self._once("backend", "-R: the configured backend cannot listen inside a "
                           "container (Docker only); no listeners")
                return
            current = self.active.get((uid, port))
            if uid not in containers:
                containers[uid] = self._container(uid, pw.pw_name, cfg.way,
                                                  fresh=current is None)
            target = containers[uid]
            if current is not None:
                current.host_addrs = addrs
                if target is not None and (current.container, current.pid) == target:
                    continue
                self._drop((uid, port), "the container changed")
            if target is None:
                continue            # no container yet: the next look tries again
            cid, pid = target
            if time.monotonic() < self.failed.get((uid, port, cid), 0):
                continue
            try:
                socks = self.guard.listen(pid, cid, port)
            except OSError as e:
                # e.g. the port is taken inside the container: said once, tried again
                self._once(f"fail {uid} {port} {cid} {e}",
                           f"-R user={pw.pw_name} port={port} container={cid[:12]}: "
                           f"no listener: {e}")
                self.failed[(uid, port, cid)] = time.monotonic() + RETRY
                continue
            self.failed.pop((uid, port, cid), None)
            self.active[(uid, port)] = Listener(uid, pw.pw_name, port, cid, pid, socks, addrs)
            log.info("-R user=%s port=%d: listening in container %s", pw.pw_name, port, cid[:12])

    def _container(self, uid: int, user: str, way, fresh: bool) -> tuple[str, int] | None:
        """The user's container for -R.  While a listener is up the answer
        is kept for CHECK seconds (each one is a list and an inspect on the
        engine); while one is awaited, it is asked every look."""
        now = time.monotonic()
        cached = self.containers.get(uid)
        if not fresh and cached and now - cached[0] < CHECK:
            return cached[1]
        target = way.container_pid(user)
        self.containers[uid] = (now, target)
        return target

    def _drop(self, key: tuple[int, int], why: str) -> None:
        listener = self.active.pop(key, None)
        if listener is not None:
            listener.close()
            log.info("-R user=%s port=%d: listener in %s closed (%s)", listener.user,
                     listener.port, listener.container[:12], why)


def start(relay, env=os.environ) -> RemoteForwards | None:
    """The watcher, when hatchway-netguard gave a channel (HATCHWAY_GUARD_FD)."""
    fd = env.get("HATCHWAY_GUARD_FD")
    if not fd or not fd.isdigit():
        log.info("-R: no channel to hatchway-netguard; remote forwarding off")
        return None
    watcher = RemoteForwards(relay, GuardChannel(socket.socket(fileno=int(fd))))
    threading.Thread(target=watcher.run, daemon=True, name="rfwd-watch").start()
    return watcher
