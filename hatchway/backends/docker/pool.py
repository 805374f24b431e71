"""Docker's warm pool (`docker.warm_pool`): spare containers started ahead of
logins, so that a session-mode login skips the engine's create and start
(about 300 ms of a login here) and only execs into one.

  the keeper (keep(); the daemon's `hwd-pool`)   keeps N spares running
      docker.idle_command, made from the file config's docker settings and
      owned (labels.PROCESS) by the keeper; removes spares of other settings,
      of an older image, or of a keeper that is gone (the reaper does too)
  a login (DockerBackend.start -> start_in())   claims the oldest spare
      under the pool's lock: writes its claim record, then renames the spare
      to its session's name; the session is an exec into it (exec_wrapper),
      as in a workspace; at the end the container is removed, never reused

Every session still gets a container nobody used: a spare only ever ran the
idle command, and the lock and the rename hand each to one session.

Docker's labels cannot change after create, so a claimed spare's still name
the keeper as its owner: the claim record (RECORDS/<container id>) holds the
session's labels, and DockerBackend.list() shows those instead.  A claimed
spare without its record has no owner, and the reaper removes it.

Which logins may use a spare (usable()): those whose container would be made
from exactly the settings the spares were (the same key), and which need
nothing a spare cannot have been made with: no agent socket mount (`ssh -A`),
no port forwarding (daemon/portfwd.py finds a user's container by its user
label), no mounts (a volume is made per user), no `pull: Always`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import secrets
import select
import signal
import socket
import time

from hatchway.core import config as config_mod
from hatchway.core import fsutil
from hatchway.core.digest import sha256
from hatchway.core.policy import Origin, Violation

from .. import labels as L
from ..base import BackendError, SessionSpec
from . import isolation, policy
from .api import Docker, DockerError
from .settings import NETWORK
from .workspace import DockerExecProcess, idle_container
from .process import remove_container, succeeds

log = logging.getLogger("hatchwayd")

SPARE_PREFIX = "hatchway-pool-"
POLL = 1.0              # how often the keeper looks, unless a claim wakes it first
IMAGE_EVERY = 10.0      # how often it asks which image the tag names now


def records_dir(cfg) -> str:
    return os.path.join(os.path.dirname(cfg.daemon.socket), "pool")


def _unservable(cfg) -> str:
    """Why no spare can serve a session of this config ("" if one can): the
    keeper makes none for the file's, a login takes none for its own."""
    d, s = cfg.docker, cfg.session
    return ("session.mode is not session" if s.mode != "session" else
            "docker.mounts is set (volumes are made per user)" if d.mounts else
            "docker.pull is Always (every login asks the registry)" if d.pull == "Always" else
            "session.port_forwarding is on" if s.port_forwarding else
            # a forward finds the user's container by its labels, which a
            # claimed spare cannot carry
            "session.remote_forward_ports is set" if s.remote_forward_ports else "")


def usable(spec: SessionSpec) -> bool:
    return spec.config.docker.warm_pool > 0 and not spec.agent_dir \
        and not _unservable(spec.config)


def spare_config(cfg) -> tuple[object | None, str]:
    """(the config the spares are made from, "") or (None, why there are
    none): the file's, as a login in no group gets it without a config
    webhook, through the admin's policy (which fills in the limits) as
    daemon/resolve.py puts every session's."""
    why = _unservable(cfg)
    raw = dataclasses.asdict(cfg)
    if not why and config_mod.TEMPLATE.search(json.dumps(raw["docker"])):
        why = "the docker settings hold {user}-like templates (each user's differ)"
    if why:
        return None, why
    try:
        policy.check(raw["docker"], raw["policy"], Origin(user=""))
    except Violation as e:
        return None, f"the policy refuses the file's docker settings: {e.message}"
    return config_mod.typed(raw), ""


def spare_spec(cfg, container_spec) -> tuple[str, dict]:
    """(key, body) of a spare for config `cfg`: what container_spec() makes
    for a session of it, with the session's own parts taken out (command,
    stdio, terminal, its environment, labels), running the idle command.  Two
    configs whose sessions' containers differ only in those have one key."""
    blank = SessionSpec(user="", uid=0, session_id="", connection_id="", kind="exec", argv=[],
                        pty=False, term=None, size=None, env={}, remote_address="", config=cfg)
    body = idle_container(container_spec(blank), cfg.docker)
    key = sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return key, body


def is_spare(c: dict) -> bool:
    """An unclaimed spare, as the engine lists it (a claim renames it)."""
    names = c.get("Names") or []
    return bool(names) and names[0].lstrip("/").startswith(SPARE_PREFIX)


# -- claim records

def _record_path(cfg, cid: str) -> str:
    return os.path.join(records_dir(cfg), cid)


def claimed_labels(cfg, cid: str, labels: dict[str, str]) -> dict[str, str]:
    """The labels a claimed spare stands for: its session's, from the claim
    record.  No record: no owner (the reaper removes it).  A record this
    process may not read (an admin who is not root): the spare's own labels,
    whose owner, the keeper, is alive, so that nothing takes the container
    for an orphan."""
    try:
        with open(_record_path(cfg, cid), encoding="utf-8") as f:
            rec = json.load(f)
        if isinstance(rec, dict) and all(isinstance(v, str) for v in rec.values()):
            return {**rec, L.POOL: labels.get(L.POOL, "")}
    except PermissionError:
        return labels
    except (OSError, ValueError):
        pass
    return {k: v for k, v in labels.items() if k != L.PROCESS}


def sweep_records(api: Docker, cfg) -> None:
    """Drop the claim records of containers that are gone.  Under the pool's
    lock, with the containers listed inside it: a spare made after a list
    taken outside it and claimed before the records were read would lose
    its record, and its live session's container would pass for an orphan
    at the next reap."""
    try:
        with _Lock(cfg, create=False):
            present = {c["Id"] for c in api.list([f"{L.MANAGED}=true", f"{L.HOST}={L.host_id()}",
                                                   L.POOL])}
            for name in os.listdir(records_dir(cfg)):
                if len(name) == 64 and name not in present:
                    os.unlink(_record_path(cfg, name))
    except FileNotFoundError:
        return      # no keeper has run here: no records


class _Lock:
    """The pool's lock: claims and the keeper's removals take it, so a
    spare is handed to one session only and never removed under a claim."""

    def __init__(self, cfg, create: bool = True):
        # the reaper of `hatchway gc` runs as root: a lock file it made would
        # be root's, and the daemon could not open it
        self.path = os.path.join(records_dir(cfg), ".lock")
        self.flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)

    def __enter__(self):
        self.fd = os.open(self.path, self.flags, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


# -- a login

class _Claim:
    """Stands in for a workspace's record in DockerExecProcess: a spare has
    one session, so there is nothing to count."""

    def __init__(self, name: str, path: str):
        self.name = name
        self.path = path

    def update(self, *args, **kwargs) -> None:
        pass

    def detach(self, *args) -> None:
        pass


class SpareProcess(DockerExecProcess):
    """A session exec'd into a claimed spare; destroy() removes the spare."""

    what = "your container"

    def destroy(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
        if self.stream is not None:
            self.stream.close()
        # the record says who owned it: kept while the container stays, so
        # that the reaper knows it for an orphan once this process is gone
        if remove_container(self.api, self.cid):
            try:
                os.unlink(self.rec.path)
            except OSError:
                pass

    def release(self) -> None:
        pass


def start_in(api: Docker, spec: SessionSpec, name: str, container_spec) -> SpareProcess | None:
    """Run the session in a spare, if there is one for it; None if not."""
    cfg = spec.config
    key, _ = spare_spec(cfg, container_spec)
    try:
        cid = _claim(api, cfg, key, name, spec.labels)
    except FileNotFoundError:
        return None         # no keeper has run yet: nothing to claim
    except (OSError, DockerError) as e:
        log.warning("warm pool: cannot claim a spare (%s); starting a container", e)
        return None
    if cid is None:
        return None
    _wake_keeper(cfg)
    proc = SpareProcess(api, cid, _Claim(name, _record_path(cfg, cid)), spec)
    try:
        proc.start(spec.argv)
    except BackendError as e:
        # the command did not start (no exec, or its wrapper never ran): a
        # spare that died a moment ago must not cost the user the login
        log.warning("warm pool: spare %s failed (%s); starting a container", cid[:12],
                    e.log_reason)
        proc.destroy()
        return None
    except BaseException:
        proc.destroy()
        raise
    return proc


def _claim(api: Docker, cfg, key: str, name: str, labels: dict[str, str]) -> str | None:
    with _Lock(cfg):
        found = api.list([f"{L.MANAGED}=true", f"{L.HOST}={L.host_id()}", f"{L.POOL}={key}"],
                         all_=False)
        spares = sorted((c for c in found if is_spare(c)
                         and (c.get("Labels") or {}).get(L.POOL) == key
                         and c.get("State") == "running"),
                        key=lambda c: (c.get("Created") or 0, c["Names"][0]))
        for c in spares:
            cid = c["Id"]
            path = _record_path(cfg, cid)
            fsutil.atomic_write(path, json.dumps(labels).encode(), 0o640)
            try:
                api.rename(cid, name)
            except DockerError as e:
                log.info("warm pool: spare %s not taken (%s)", cid[:12], e)
                try:
                    os.unlink(path)
                except OSError:
                    pass
                continue
            log.info("warm pool: spare %s is now %s", cid[:12], name)
            return cid
    return None


def _wake_keeper(cfg) -> None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"!", os.path.join(records_dir(cfg), "keeper.sock"))
    except OSError:
        pass        # it looks again within POLL anyway


# -- the keeper

def keep(cfg, parent: int, container_spec) -> None:
    """The keeper's whole life: until the main process `parent` is gone or
    sends SIGTERM; then it removes its unclaimed spares."""
    from .backend import api_for
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    api = api_for(cfg.docker)
    me = os.getpid()
    os.makedirs(records_dir(cfg), 0o750, exist_ok=True)
    wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(records_dir(cfg), "keeper.sock")
    try:
        os.unlink(path)
    except OSError:
        pass
    wake.bind(path)
    made_from, why = spare_config(cfg)
    if made_from is None:
        log.warning("warm pool: no spares: %s", why)
        while not stopping and os.getppid() == parent:
            time.sleep(POLL)
        return
    key, body = spare_spec(made_from, container_spec)
    body["Labels"] = L.for_spare(key, me)
    keeper = Keeper(api, made_from, key, body, body["Labels"][L.PROCESS])
    log.info("warm pool: keeping %d spare(s) of %s", cfg.docker.warm_pool, cfg.docker.image)
    try:
        while not stopping and os.getppid() == parent:
            keeper.step()
            try:
                ready, _, _ = select.select([wake], [], [], POLL)
                if ready:
                    wake.recv(64)
            except InterruptedError:
                pass
    finally:
        wake.close()
        keeper.empty()


class Keeper:
    def __init__(self, api: Docker, cfg, key: str, body: dict, token: str):
        self.api, self.cfg, self.key, self.body, self.token = api, cfg, key, body, token
        self.want = cfg.docker.warm_pool
        self.said = ""          # the last problem logged: said once, not every POLL
        self.image: str | None = None
        self.image_checked = float("-inf")

    def _image(self) -> str | None:
        """The image's id, asked at most every IMAGE_EVERY: a pull of a new
        version reaches the spares within that."""
        if self.image is None or time.monotonic() - self.image_checked >= IMAGE_EVERY:
            self.image = self.api.image_id(self.cfg.docker.image)
            self.image_checked = time.monotonic()
        return self.image

    def step(self) -> None:
        try:
            image = self._image()
            if image is None:
                return self._problem(f"image {self.cfg.docker.image} is not here yet "
                                     "(the first login pulls it)")
            ready = self._prune(image)
            if ready < self.want and self.cfg.docker.network == NETWORK:
                isolation.ensure_network(self.api)
            for _ in range(self.want - ready):
                self._make()
            self.said = ""
        except (DockerError, BackendError, OSError) as e:
            self._problem(str(e))

    def _problem(self, what: str) -> None:
        if what != self.said:
            log.warning("warm pool: %s", what)
            self.said = what

    def _spares(self) -> list[dict]:
        return [c for c in self.api.list([f"{L.MANAGED}=true", f"{L.HOST}={L.host_id()}",
                                          L.POOL])
                if is_spare(c)]

    def _prune(self, image: str) -> int:
        """Remove the spares nobody should get; how many good ones are left."""
        ready = 0
        with _Lock(self.cfg):
            for c in self._spares():
                labels = c.get("Labels") or {}
                mine = labels.get(L.PROCESS) == self.token
                good = (mine and labels.get(L.POOL) == self.key and c.get("ImageID") == image
                        and c.get("State") == "running" and ready < self.want)
                if good:
                    ready += 1
                elif mine or not L.process_alive(labels.get(L.PROCESS, "")):
                    # another keeper's, while it lives, is its own business
                    # (a second daemon sharing this host's engine)
                    if succeeds(lambda: self.api.remove(c["Id"])):
                        log.info("warm pool: removed spare %s", c["Id"][:12])
        return ready

    def _make(self) -> None:
        # the time in ms first: claims go oldest first by name, where the
        # engine's own creation time is in whole seconds
        name = f"{SPARE_PREFIX}{time.time_ns() // 1_000_000:011x}{secrets.randbelow(16):x}"
        cid = self.api.create(self.body, name)
        try:
            self.api.start(cid)
        except DockerError:
            succeeds(lambda: self.api.remove(cid))
            raise
        log.debug("warm pool: spare %s ready", cid[:12])

    def empty(self) -> None:
        """Remove this keeper's unclaimed spares (it is stopping)."""
        try:
            with _Lock(self.cfg):
                for c in self._spares():
                    if (c.get("Labels") or {}).get(L.PROCESS) == self.token:
                        succeeds(lambda: self.api.remove(c["Id"]))
        except (DockerError, OSError) as e:
            log.warning("warm pool: cannot remove the spares (%s); the reaper will", e)
