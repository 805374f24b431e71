"""The port forwarding relay (`ssh -L/-D/-W localhost:PORT`; `ssh -R` in
rfwd.py), user `hatchway`.

It listens on RELAY_PORT (870, privileged: the sockets come bound from its
parent, hatchway-netguard, or from systemd socket activation; LISTEN_FDS).
Only connections redirected there by the guard's nftables table arrive: the
connects of sshd's per-connection children, which run as the user.  For each:

  1. where it was going: SO_ORIGINAL_DST (must be loopback, not the canary port);
  2. who made it: sock_diag's owner uid of the socket at the other end (exact,
     no guessing from ports; a connection that cannot be attributed is closed);
  3. the canary: a canary uid asking for 127.0.0.1:1 gets the banner, nothing else;
  4. the policy: the user's `session.port_forwarding` in the file config
     (top level, then `groups:` entries in file order, as hatchway-keys reads it);
  5. the way in, per backend (the configured `backend:`):
     - Docker (DockerWay, here): the user's running container on this host,
       the persistent or connection workspace first, else the newest session
       container (all of them the user's own: README, Security: forwarding);
       `docker exec` of the bind-mounted busybox `nc 127.0.0.1 PORT` in it,
       bytes copied both ways with half-close (stdin EOF: busybox nc shuts
       down its write side and keeps reading);
     - Kubernetes (KubernetesWay, portfwd_k8s.py): the user's running pod, by
       the same rule, and the pod's `portforward` subresource to 127.0.0.1:PORT
       (no half-close there: the client's EOF is held; portfwd_k8s.py says how).

A refused forward is a connection closed at once: sshd has already told the
client the channel is open, so the client sees an empty reply.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import struct
import sys
import threading

from hatchway.backends import labels as L
from hatchway.core import fsutil
from hatchway.core import portfwd as P
from hatchway.core.identity import user_groups
from hatchway.core.switches import list_policy, switch_allows, switch_policy

from .pump import pump

log = logging.getLogger("hatchway-portrelay")

BUSYBOX = "/.hatchway/busybox"      # = backends/docker/backend.py BUSYBOX_TARGET
MAX_PER_UID = 64                    # open forwards per user


def listen_fds(env=os.environ) -> list[socket.socket]:
    """The listening sockets: HATCHWAY_RELAY_FDS (a comma list, from
    hatchway-netguard) or fds 3.. (systemd's LISTEN_FDS; LISTEN_PID is checked
    when it is set)."""
    if env.get("HATCHWAY_RELAY_FDS"):
        return [socket.socket(fileno=int(fd)) for fd in env["HATCHWAY_RELAY_FDS"].split(",")]
    if env.get("LISTEN_PID") and env["LISTEN_PID"] != str(os.getpid()):
        return []
    n = int(env.get("LISTEN_FDS") or 0)
    return [socket.socket(fileno=3 + i) for i in range(n)]


def pick_container(containers: list[dict]) -> dict | None:
    """Running Docker containers of one user: the one a forward goes to."""
    if not containers:
        return None
    return min(containers, key=lambda c: P.pick_rank((c.get("Labels") or {}).get(L.MODE, ""),
                                                  c.get("Created")))


class Demux:
    """Docker's non-TTY stream: 8-byte frame heads (stream, 0, 0, 0, size)."""

    def __init__(self):
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 8:
            kind, size = self.buf[0], struct.unpack_from(">I", self.buf, 4)[0]
            if len(self.buf) < 8 + size:
                break
            out.append((kind, self.buf[8:8 + size]))
            self.buf = self.buf[8 + size:]
        return out


class Settings:
    """What the relay reads from the file: the -L switch, the -R port lists
    and the backend's way in."""

    def __init__(self, policy: dict, rpolicy: dict, way):
        self.policy, self.rpolicy, self.way = policy, rpolicy, way


OFF = Settings({"default": False, "groups": []}, {"default": [], "groups": []}, None)


class Relay:
    def __init__(self, config_path: str):
        self.config_path = config_path
        self.lock = threading.Lock()
        self.open: dict[int, int] = {}
        self._conf_tag = None
        self._settings = OFF
        self.canary_uids = {os.getuid()}
        try:
            self.canary_uids.add(pwd.getpwnam("hatchway-keys").pw_uid)
        except KeyError:
            pass

    # -- config, re-read when the file changes

    def settings(self) -> Settings:
        tag = fsutil.stat_tag(self.config_path)
        if tag is None:
            raise OSError(f"{self.config_path}: cannot stat the config file")
        with self.lock:
            if tag == self._conf_tag:
                return self._settings
        from hatchway.core import config as config_mod
        cfg = config_mod.load(self.config_path)
        typed = config_mod.typed(cfg)
        policy = switch_policy(cfg, "port_forwarding")
        rpolicy = list_policy(cfg, "remote_forward_ports")
        if cfg["backend"] == "docker":
            way = DockerWay(typed)
        elif cfg["backend"] == "kubernetes":
            from .portfwd_k8s import KubernetesWay
            from hatchway.backends.kubernetes.backend import KubernetesBackend
            def make():
                return KubernetesBackend(typed)
            way = KubernetesWay(make(), fresh=make if typed.kubernetes.token_file else None)
        else:
            way = None      # no way in: refuse all
        settings = Settings(policy, rpolicy, way) if way is not None else OFF
        with self.lock:
            self._conf_tag, self._settings = tag, settings
        return settings

    # -- one connection

    def handle(self, conn: socket.socket) -> None:
        uid = None
        try:
            conn.settimeout(None)
            peer = conn.getpeername()[:2]
            dst = P.original_dst(conn)
            uid = P.peer_uid(conn.family, peer, dst)
            if uid is None:
                log.warning("refused %s -> %s: no owner found (not a redirected local connect)",
                            peer, dst)
                return
            if dst == ("127.0.0.1", P.CANARY_PORT) and uid in self.canary_uids:
                conn.sendall(P.CANARY_BANNER)
                return
            if not P.destination_ok(*dst):
                log.warning("refused uid=%d -> %s: not a loopback port", uid, dst)
                return
            with self.lock:
                if self.open.get(uid, 0) >= MAX_PER_UID:
                    log.warning("refused uid=%d: %d forwards open", uid, MAX_PER_UID)
                    uid = None
                    return
                self.open[uid] = self.open.get(uid, 0) + 1
            self._forward(conn, uid, dst[1])
        except (OSError, ValueError) as e:
            log.warning("forward uid=%s ended: %s", uid, e)
        except Exception as e:      # one connection never takes the relay down
            log.error("forward uid=%s: %s: %s", uid, type(e).__name__, e)
        finally:
            conn.close()
            if uid is not None:
                with self.lock:
                    if uid in self.open:
                        self.open[uid] -= 1
                        if not self.open[uid]:
                            del self.open[uid]

    def _forward(self, conn: socket.socket, uid: int, port: int) -> None:
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            log.warning("refused uid=%d: no such account", uid)
            return
        cfg = self.settings()
        if not switch_allows(cfg.policy, user_groups(pw.pw_name, pw.pw_gid)):
            log.warning("refused user=%s port=%d: session.port_forwarding is off", pw.pw_name, port)
            return
        cfg.way.forward(conn, pw.pw_name, port)

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError as e:
                log.error("accept: %s", e)
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True,
                             name="fwd-conn").start()


class DockerWay:
    """How a forward reaches 127.0.0.1:PORT in a Docker container: `docker
    exec` of the bind-mounted busybox `nc` there, bytes copied both ways with
    half-close (the client's EOF becomes nc's stdin EOF: busybox nc shuts
    down its write side and keeps reading)."""

    def __init__(self, typed_cfg):
        from hatchway.backends.docker.backend import api_for
        self.api = api_for(typed_cfg.docker)

    def _target(self, user: str) -> dict | None:
        running = self.api.list([f"{L.MANAGED}=true", f"{L.USER}={user}",
                                 f"{L.HOST}={L.host_id()}"], all_=False)
        # the label filter is the engine's; check it again on what came back
        running = [c for c in running if (c.get("Labels") or {}).get(L.USER) == user]
        return pick_container(running)

    def container_pid(self, user: str) -> tuple[str, int] | None:
        """(id, main process) of the container a -R of `user` listens in
        (daemon/rfwd.py), or None."""
        target = self._target(user)
        if target is None:
            return None
        info = self.api.inspect(target["Id"]) or {}
        pid = (info.get("State") or {}).get("Pid") or 0
        return (target["Id"], pid) if pid > 0 else None

    def forward(self, conn: socket.socket, user: str, port: int) -> None:
        api = self.api
        target = self._target(user)
        if target is None:
            log.warning("refused user=%s port=%d: no running container", user, port)
            return
        cid = target["Id"]
        eid = api.exec_create(cid, {"Cmd": [BUSYBOX, "nc", "127.0.0.1", str(port)],
                                    "AttachStdin": True, "AttachStdout": True,
                                    "AttachStderr": True, "Tty": False})
        stream = api.hijack("POST", f"/exec/{eid}/start", body={"Detach": False, "Tty": False})
        log.info("forward user=%s port=%d container=%s", user, port, cid[:12])
        try:
            out = threading.Thread(target=_from_container, args=(stream, conn), daemon=True,
                                   name="fwd-out")
            out.start()
            pump(conn, stream.sock)
            out.join()
        finally:
            stream.close()


def _from_container(stream, conn: socket.socket) -> None:
    """Container -> client: stdout frames only (nc's stderr is logged)."""
    demux = Demux()
    try:
        while True:
            data = stream.recv(65536)
            if not data:
                break
            for kind, payload in demux.feed(data):
                if kind == 1:
                    conn.sendall(payload)
                elif kind == 2 and payload.strip():
                    log.info("in-container nc: %s", payload.decode("utf-8", "replace")[:200])
    except OSError:
        pass
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="hatchway-portrelay: %(levelname)s %(message)s")
    config_path = argv[0] if argv else "/etc/hatchway/hatchway.yaml"
    listeners = listen_fds()
    if not listeners:
        print("hatchway-portrelay: no listening sockets passed (LISTEN_FDS); it is started "
              "by hatchway-netguard", file=sys.stderr)
        return 2
    if os.getuid() == 0:
        print("hatchway-portrelay: refusing to run as root", file=sys.stderr)
        return 2
    relay = Relay(config_path)
    log.info("listening on %s as uid %d", [s.getsockname()[:2] for s in listeners], os.getuid())
    from . import rfwd
    rfwd.start(relay)
    for s in listeners[1:]:
        threading.Thread(target=relay.serve, args=(s,), daemon=True, name="fwd-accept").start()
    relay.serve(listeners[0])
    return 0
