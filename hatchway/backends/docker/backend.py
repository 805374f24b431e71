"""Docker backend: one container per SSH session (`session` mode), or an
exec into a workspace (`connection` and `persistent` modes: workspace.py).

Order matters and follows what the docker CLI does, minus its races:
create → attach (keeping bytes that arrive with the 101 head) → register
`wait?condition=next-exit` → start → resize.  Attaching and registering the
wait before start means no early output and no exit status is ever lost.
"""

from __future__ import annotations

import logging
import os
import re

from .. import labels as L
from .. import workspaces as W
from ..base import Backend, BackendError, Found, Process, SessionSpec
from ..exec_wrapper import signal_argv
from . import isolation, pool, workspace
from .api import ENGINE_DOWN, Docker, DockerError
from .process import DETACH_KEYS, DockerProcess, succeeds
from .settings import NETWORK

log = logging.getLogger("hatchwayd")

# A pty session's command starts at once, and API 1.41 has no ConsoleSize: a
# resize can only follow the start, too late for a command that asks first
# (`stty size` saw 0 0).  So the container's shell sets the size, then becomes
# the command.  (Exec and shell sessions need /bin/sh anyway; without stty the
# size still arrives by the resize after the start.)
SIZED = 'stty rows "$1" cols "$2" 2>/dev/null; shift 2; exec "$@"'
AGENT_TARGET = "/run/hatchway"      # = daemon/agent.py IN_CONTAINER
# Port forwarding (daemon/portfwd.py): the relay runs `busybox nc` inside the
# container to reach its 127.0.0.1:PORT, whatever the image has.  The host's
# static busybox (package busybox-static), read-only.
BUSYBOX_SOURCE = "/bin/busybox"
BUSYBOX_TARGET = "/.hatchway/busybox"   # = daemon/portfwd.py BUSYBOX


def api_for(d) -> Docker:
    """A client for the engine of the `docker` settings `d`."""
    return Docker(d.host, {"ca_file": d.ca_file, "cert_file": d.cert_file, "key_file": d.key_file})


def container_spec(spec: SessionSpec) -> dict:
    d = spec.config.docker
    env = [f"{k}={v}" for k, v in d.env.items()]
    env += [f"{k}={v}" for k, v in spec.env.items()]
    if spec.pty and spec.term:
        env.append(f"TERM={spec.term}")
    host = {
        "Init": True,
        "LogConfig": {"Type": "none", "Config": {}},
        "AutoRemove": False,
    }
    if d.read_only:
        host["ReadonlyRootfs"] = True
    if d.tmpfs:
        host["Tmpfs"] = dict(d.tmpfs)
    # After the policy (policy.py) a limit is positive, or the admin set no
    # maximum and the value means "unlimited" (0, negative or unset)
    if d.memory and d.memory > 0:
        host["Memory"] = int(d.memory)
    if d.cpus and d.cpus > 0:
        host["NanoCpus"] = int(d.cpus * 1e9)
    if d.pids_limit and d.pids_limit > 0:
        host["PidsLimit"] = int(d.pids_limit)
    if d.network:
        host["NetworkMode"] = d.network
    if d.no_new_privileges:
        host["SecurityOpt"] = ["no-new-privileges"]
    if d.mounts:
        host["Mounts"] = list(d.mounts)
    if spec.agent_dir:
        # read-only: the host side listens in there and must never find
        # anything the container made (a symlink to a host socket, say)
        host.setdefault("Mounts", []).append(
            {"Type": "bind", "Source": spec.agent_dir, "Target": AGENT_TARGET,
             "ReadOnly": True})
    if spec.config.session.port_forwarding:
        host.setdefault("Mounts", []).append(
            {"Type": "bind", "Source": BUSYBOX_SOURCE, "Target": BUSYBOX_TARGET,
             "ReadOnly": True})
    # what the policy (backends/docker/policy.py) has already allowed
    if d.privileged:
        host["Privileged"] = True
    if d.cap_add:
        host["CapAdd"] = list(d.cap_add)
    if d.cap_drop:
        host["CapDrop"] = list(d.cap_drop)
    if d.pid_mode:
        host["PidMode"] = d.pid_mode
    if d.ipc_mode:
        host["IpcMode"] = d.ipc_mode
    if d.devices:
        host["Devices"] = [_device(dev) for dev in d.devices]
    body = {
        "Image": d.image,
        "Cmd": (["/bin/sh", "-c", SIZED, "hatchway", str(spec.size[0]), str(spec.size[1]),
                 *spec.argv] if spec.pty and spec.size else spec.argv),
        "Env": env,
        "Tty": spec.pty,
        "OpenStdin": True,
        "StdinOnce": True,
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "Labels": spec.labels,
        "HostConfig": host,
    }
    for value, field in ((d.user, "User"), (d.workdir, "WorkingDir"), (d.hostname, "Hostname")):
        if value:
            body[field] = value
    return body


def _device(spec: str) -> dict:
    """`/dev/x[:/dev/y[:rwm]]`, as `docker run --device` writes it."""
    parts = spec.split(":")
    return {"PathOnHost": parts[0], "PathInContainer": parts[1] if len(parts) > 1 else parts[0],
            "CgroupPermissions": parts[2] if len(parts) > 2 else "rwm"}


def container_name(spec: SessionSpec) -> str:
    user = re.sub(r"[^a-zA-Z0-9_.-]", "_", spec.user)
    return f"hatchway-{user}-{spec.session_id[:12]}"


class DockerBackend(Backend):
    keeps_stopped = True        # a stopped workspace keeps its file system
    agent_forwarding = True     # the agent directory is a bind mount (see AGENT_TARGET)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.api = api_for(cfg.docker)

    def start(self, spec: SessionSpec) -> Process:
        d = spec.config.docker
        if d.network == NETWORK:
            isolation.ensure_network(self.api)
        for m in d.mounts:
            if m["Type"] == "volume":
                isolation.ensure_volume(self.api, m["Source"], spec.user)
        if spec.config.session.mode in W.SHARED:
            # the image's id is part of what the workspace is made from (an
            # image change applies at the next login while no session is open)
            image_id = self._ensure_image(d.image, d.pull, d.start_timeout)
            return self._exec_into_workspace(spec, image_id)
        if d.pull == "Always":
            self._ensure_image(d.image, d.pull, d.start_timeout)
        if pool.usable(spec):
            proc = pool.start_in(self.api, spec, container_name(spec), container_spec)
            if proc is not None:
                return proc
        body, name = container_spec(spec), container_name(spec)
        try:
            try:
                cid = self.api.create(body, name)
            except DockerError as e:
                # The image is there on almost every start: ask dockerd only
                # when create says it is not (saves a request per session).
                if e.status != 404 or d.pull == "Always":
                    raise
                self._ensure_image(d.image, d.pull, d.start_timeout)
                cid = self.api.create(body, name)
        except DockerError as e:
            # Docker's words may name host paths: the log has them
            if e.status == 0:
                raise BackendError(ENGINE_DOWN,
                                   f"cannot reach the container engine: {e}") from None
            raise BackendError("cannot create the session's container",
                               f"cannot create the container: {e}") from None
        stream = waiter = None
        try:
            stream = self.api.hijack("POST", f"/containers/{cid}/attach",
                                     {"stream": 1, "stdin": 1, "stdout": 1, "stderr": 1,
                                      "detachKeys": DETACH_KEYS})
            waiter = self.api.wait_handle(cid, "next-exit")
            self.api.start(cid)
        except DockerError as e:
            for handle in (stream, waiter):
                if handle is not None:
                    handle.close()
            succeeds(lambda: self.api.remove(cid))
            raise BackendError(f"cannot start the session's container{_start_error(e)}",
                               f"cannot start the container: {e}") from None
        proc = DockerProcess(self.api, cid, stream, waiter, spec.pty)
        if spec.pty and spec.size:
            proc.initial_resize(*spec.size)
        return proc

    def _exec_into_workspace(self, spec: SessionSpec, image_id: str) -> Process:
        """connection and persistent modes: find, create or start the
        workspace under its lock (workspace.py), then exec into it."""
        name = W.name_for(spec.config.session.mode, spec.user, spec.connection_id)
        rec = W.Record(name, W.root_for(spec.config))
        body = workspace.workspace_spec(spec, container_spec(spec), name, image_id)
        with rec.lock():
            rec.attach(spec.session_id, L.process_token(os.getpid()), kind=spec.kind,
                       pty=spec.pty)
            try:
                cid = workspace.ensure(self.api, spec, body, name, rec)
            except BaseException:
                rec.drop(spec.session_id)
                raise
            rec.set_meta(user=spec.user, mode=spec.config.session.mode, sshd=spec.sshd,
                         **W.settings_of(spec.config))
        proc = workspace.DockerExecProcess(self.api, cid, rec, spec)
        try:
            proc.start(spec.argv)
        except BaseException:
            proc.destroy()
            raise
        return proc

    def _ensure_image(self, image: str, policy: str, timeout: float) -> str:
        """Pull as the policy says; the image's id."""
        try:
            iid = self.api.image_id(image)
        except DockerError as e:
            # the user gets no host path or engine detail; the log has them
            raise BackendError(ENGINE_DOWN if e.status == 0 else "the container engine "
                               "cannot start a session now; try again later",
                               f"cannot reach the container engine: {e}") from None
        if policy == "Never" and iid is None:
            raise BackendError(f"image {image} is not available on this host")
        if policy == "Always" or iid is None:
            self._pull(image, iid is not None, timeout)
            iid = _safe_value(lambda: self.api.image_id(image)) or iid
        return iid or ""

    def _pull(self, image: str, present: bool, timeout: float) -> None:
        """Pull in this session's own process: a slow registry holds up only the
        session that needs the image."""
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
        why = ""
        try:
            progress = self.api.call("POST", "/images/create",
                                     query={"fromImage": name, "tag": tag},
                                     timeout=timeout, max_body=64 << 20)
            why = _pull_error(progress)
        except DockerError as e:
            # dockerd answered image_exists a moment ago: no answer now means
            # the registry is slow or unreachable, not the engine
            why = (f"no answer within {timeout:g}s" if e.status == 0
                   else str(e))
        if present:
            if why:
                log.warning("pulling %s failed (%s); using the local copy", image, why)
            return
        if why or not succeeds(lambda: self.api.image_exists(image)):
            msg = f"image {image} is not available here and cannot be pulled"
            raise BackendError(msg, msg + (f": {why}" if why else ""))

    def list(self, user: str | None = None) -> list[Found]:
        # a claimed spare of the warm pool has no user label (labels are set
        # at create): the user is picked here, from what pool.py says it is
        try:
            found = self.api.list([f"{k}={v}" for k, v in L.selector().items()])
        except DockerError as e:
            raise BackendError(f"cannot list session containers: {e}") from None
        out = []
        for c in found:
            labels, spare = c.get("Labels") or {}, False
            if L.POOL in labels:
                spare = pool.is_spare(c)
                if not spare:
                    labels = pool.claimed_labels(self.cfg, c["Id"], labels)
            if user is not None and (spare or labels.get(L.USER) != user):
                continue
            out.append(Found(c["Id"], labels, c.get("State") or "", spare=spare,
                             running=c.get("State") == "running", created=c.get("Created")))
        return out

    def reap(self, is_alive) -> list[str]:
        removed = super().reap(is_alive)
        try:
            pool.sweep_records(self.api, self.cfg)
        except (DockerError, OSError) as e:
            log.warning("cannot sweep the warm pool's claim records: %s", e)
        return removed

    # -- the warm pool (pool.py): the daemon forks its keeper when one is wanted

    def keeps_spares(self) -> bool:
        return self.cfg.docker.warm_pool > 0 and self.cfg.session.mode == "session"

    def keep_spares(self, parent: int) -> None:
        pool.keep(self.cfg, parent, container_spec)

    def remove(self, found: Found) -> bool:
        return succeeds(lambda: self.api.remove(found.name))

    def stop(self, found: Found) -> bool:
        """`docker stop`: the workspace's processes end, its file system stays."""
        return succeeds(lambda: self.api.stop(found.name))

    def kill_session(self, found: Found, pid: int, start: int | None) -> bool:
        # the workspace says who may signal its sessions' processes (the
        # reaper has no session config to ask)
        info = _safe_value(lambda: self.api.inspect(found.name)) or {}
        user = workspace.signal_user((info.get("Config") or {}).get("User") or "",
                                     (info.get("HostConfig") or {}).get("CapDrop"))
        return workspace.run_inside(self.api, found.name, signal_argv("KILL", pid, start),
                                    wait=5.0, user=user)

    def check(self) -> tuple[list[str], list[str]]:
        d, problems, notes = self.cfg.docker, [], []
        try:
            self.api.call("GET", "/_ping", ok=(200,))
            notes.append(f"docker: reachable at {d.host}")
            if not self.api.image_exists(d.image):
                msg = f"docker: image {d.image} is not present"
                (problems if d.pull == "Never" else notes).append(msg)
            if d.network == NETWORK:
                try:
                    how = isolation.ensure_network(self.api)
                    notes.append(f"docker: network {NETWORK} {how} (bridge {isolation.BRIDGE}, "
                                 "no traffic between containers)")
                except BackendError as e:
                    problems.append(f"docker: {e.log_reason}")
            if d.warm_pool:
                notes.append(self._pool_note())
        except DockerError as e:
            problems.append(f"docker: {e}")
        return problems + _socket_access(d.host), notes

    def _pool_note(self) -> str:
        made_from, why = pool.spare_config(self.cfg)
        if made_from is None:
            return f"docker: warm pool: no spares: {why}"
        try:
            ready = sum(1 for f in self.list() if f.spare and f.running)
        except BackendError as e:
            return f"docker: warm pool: {e}"
        return (f"docker: warm pool: {ready} of {self.cfg.docker.warm_pool} spares ready "
                "(while hatchwayd runs)")


def _socket_access(host: str, user: str = "hatchway") -> list[str]:
    """`check` runs as root, which reaches any socket; the daemon runs as
    `hatchway` and needs the socket's group (docker installed after Hatchway,
    or a socket with another group, leave it out)."""
    import grp
    import os
    import pwd
    import stat
    if not host.startswith("unix://"):
        return []
    path = host[len("unix://"):]
    try:
        st = os.stat(path)
        pw = pwd.getpwnam(user)
    except (OSError, KeyError):
        return []               # reachability is reported by check()
    groups = os.getgrouplist(user, pw.pw_gid)
    if st.st_uid == pw.pw_uid or st.st_mode & stat.S_IWOTH or \
            (st.st_gid in groups and st.st_mode & stat.S_IWGRP):
        return []
    try:
        gname = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        gname = str(st.st_gid)
    return [f"docker: user {user} cannot open {path} (not in its group {gname}): run "
            f"`adduser {user} {gname}`, then restart hatchwayd"]


def _safe_value(fn):
    try:
        return fn()
    except Exception:
        return None


def _pull_error(progress) -> str:
    """dockerd answers a pull with 200 and reports failure inside the JSON stream."""
    import json
    text = progress if isinstance(progress, str) else json.dumps(progress or "")
    for line in reversed(text.splitlines()):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("error"):
            return str(item["error"]).strip()
    return ""


def _start_error(e: DockerError) -> str:
    """The part of a start error that is the user's business: a command the
    image does not have."""
    m = re.search(r'exec: "([^"]+)": (executable file not found|no such file)[^"]*', str(e))
    return f": {m.group(1)}: not found in the image" if m else ""


BACKEND = DockerBackend
