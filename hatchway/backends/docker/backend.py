"""Docker backend: one container per SSH session (`session` mode).

Order matters and follows what the docker CLI does, minus its races:
create → attach (keeping bytes that arrive with the 101 head) → register
`wait?condition=next-exit` → start → resize.  Attaching and registering the
wait before start means no early output and no exit status is ever lost.
"""

from __future__ import annotations

import logging
import mmap
import re
import socket
import struct
import threading
import time

from .. import labels as L
from ..base import Backend, BackendError, ExitStatus, Found, Process, SessionSpec
from .api import Docker, DockerError, Stream, WaitHandle

log = logging.getLogger("hatchwayd")

# dockerd swallows its detach sequence even for API clients and it cannot be
# turned off; pick one nobody types: four ctrl-^ in a row.
DETACH_KEYS = "ctrl-^,ctrl-^,ctrl-^,ctrl-^"
# A pty session's command starts at once, and API 1.41 has no ConsoleSize: a
# resize can only follow the start, too late for a command that asks first
# (`stty size` saw 0 0).  So the container's shell sets the size, then becomes
# the command.  (Exec and shell sessions need /bin/sh anyway; without stty the
# size still arrives by the resize after the start.)
SIZED = 'stty rows "$1" cols "$2" 2>/dev/null; shift 2; exec "$@"'
RECV_BUFFER = 1 << 20       # one recv_into may bring this much output
AGENT_TARGET = "/run/hatchway"      # = daemon/agent.py IN_CONTAINER


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
    if d.memory:
        host["Memory"] = int(d.memory)
    if d.cpus:
        host["NanoCpus"] = int(d.cpus * 1e9)
    if d.pids_limit:
        host["PidsLimit"] = int(d.pids_limit)
    if d.network:
        host["NetworkMode"] = d.network
    if d.mounts:
        host["Mounts"] = list(d.mounts)
    if spec.agent_dir:
        # read-only: the host side listens in there and must never find
        # anything the container made (a symlink to a host socket, say)
        host.setdefault("Mounts", []).append(
            {"Type": "bind", "Source": spec.agent_dir, "Target": AGENT_TARGET,
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
    agent_forwarding = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.api = api_for(cfg.docker)

    def start(self, spec: SessionSpec) -> Process:
        d = spec.config.docker
        if d.pull == "Always":
            self._ensure_image(d.image, d.pull, d.start_timeout)
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
            if e.status == 0:
                raise BackendError(f"cannot reach the container engine: {e}") from None
            raise BackendError(f"cannot create the container: {e}") from None
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
            _safe(lambda: self.api.remove(cid))
            raise BackendError(f"cannot start the container: {_start_error(e)}") from None
        proc = DockerProcess(self.api, cid, stream, waiter, spec.pty)
        if spec.pty and spec.size:
            proc.initial_resize(*spec.size)
        return proc

    def _ensure_image(self, image: str, policy: str, timeout: float) -> None:
        try:
            present = self.api.image_exists(image)
        except DockerError as e:
            raise BackendError(f"cannot reach the container engine: {e}") from None
        if policy == "Never" and not present:
            raise BackendError(f"image {image} is not available on this host")
        if policy == "Always" or not present:
            self._pull(image, present, timeout)

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
        if why or not _safe(lambda: self.api.image_exists(image)):
            raise BackendError(f"image {image} is not available here and cannot be pulled"
                               + (f": {why}" if why else ""))

    def list(self, user: str | None = None) -> list[Found]:
        try:
            found = self.api.list([f"{k}={v}" for k, v in L.selector(user).items()])
        except DockerError as e:
            raise BackendError(f"cannot list session containers: {e}") from None
        return [Found(c["Id"], c.get("Labels") or {}, c.get("State") or "")
                for c in found]

    def remove(self, found: Found) -> bool:
        return _safe(lambda: self.api.remove(found.name))

    def check(self) -> tuple[list[str], list[str]]:
        d, problems, notes = self.cfg.docker, [], []
        try:
            self.api.call("GET", "/_ping", ok=(200,))
            notes.append(f"docker: reachable at {d.host}")
            if not self.api.image_exists(d.image):
                msg = f"docker: image {d.image} is not present"
                (problems if d.pull == "Never" else notes).append(msg)
        except DockerError as e:
            problems.append(f"docker: {e}")
        return problems + _socket_access(d.host), notes


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


def _safe(fn) -> bool:
    try:
        fn()
        return True
    except Exception:
        return False


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
    msg = str(e)
    m = re.search(r'exec: "([^"]+)": (executable file not found|no such file)[^"]*', msg)
    if m:
        return f"{m.group(1)}: not found in the image"
    return msg


def _in_container(pid: int, cid: str) -> bool | None:
    """Is `pid` in container `cid`?  None: this process cannot see it."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="ascii", errors="replace") as f:
            return any(cid in line for line in f)
    except OSError:
        return None


def _real_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class DockerProcess(Process):
    def __init__(self, api: Docker, cid: str, stream: Stream, waiter: WaitHandle, tty: bool):
        self.api = api
        self.id = cid[:12]
        self.cid = cid
        self.stream = stream
        self.waiter = waiter
        self.tty = tty
        # anonymous memory: pages are only there once output fills them (an
        # interactive session touches one; bytearray() would zero all of it)
        self._buf = mmap.mmap(-1, RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._pos = self._end = 0       # unparsed bytes: _buf[_pos:_end]
        self._gone = False
        self._lock = threading.Lock()
        self._user_uid: int | None = None

    # -- bytes

    def agent_peer_ok(self, pid: int, uid: int) -> bool:
        # In this container: its cgroup path names the container's full id
        # (cgroup v1 and v2, cgroupfs and systemd drivers alike).  Under the
        # packaged unit (ProtectProc=invisible) other uids' processes are not
        # in /proc at all; then what remains is that only this container (and
        # root and hatchway on the host) can reach the socket's directory.
        if _in_container(pid, self.cid) is False:
            return False
        return uid == 0 or uid == self._container_uid()

    def _container_uid(self) -> int | None:
        """The uid the container's processes run as: its first process's
        (docker-init or the command) as the kernel has it, so a user name only
        the image's /etc/passwd knows needs no lookup; failing that, a numeric
        `User` (or none: root).  None: only root may use the agent."""
        if self._user_uid is None:
            info = (self.api.inspect(self.cid) if not self._gone else None) or {}
            pid = (info.get("State") or {}).get("Pid")
            if isinstance(pid, int) and pid > 0:
                self._user_uid = _real_uid(pid)
            if self._user_uid is None:
                user = str((info.get("Config") or {}).get("User") or "0").split(":")[0]
                self._user_uid = int(user) if user.isdigit() else None
        return self._user_uid

    def send(self, data: bytes) -> None:
        self.stream.sock.sendall(data)

    def stdin_fileno(self) -> int:
        """Where stdin bytes go as they are (the relay may splice into it)."""
        return self.stream.sock.fileno()

    def close_stdin(self) -> None:
        try:
            self.stream.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def recv(self) -> tuple[int, memoryview] | None:
        """The next output as (stream, view).  The view points into this
        process's receive buffer: valid until the next recv(), so the relay
        writes it out before asking again (no copy in Python)."""
        if self.tty:
            n = self._read_into(0)
            return (1, self._view[:n]) if n else None
        # Multiplexed: frames of [stream u8][0 0 0][length u32 BE] + payload.
        # Whole frames of one stream already in the buffer go out as one view:
        # payloads are moved down over the headers between them (memmove in C).
        buf, view = self._buf, self._view
        while True:
            pos, end = self._pos, self._end
            kind = out_start = out_end = None
            while end - pos >= 8:
                k, n = struct.unpack_from(">BxxxL", buf, pos)
                if end - pos < 8 + n:
                    break
                if n:
                    if kind is None:
                        kind, out_start, out_end = k, pos + 8, pos + 8 + n
                    elif k != kind:
                        break
                    else:
                        if pos + 8 != out_end:
                            buf[out_end:out_end + n] = view[pos + 8:pos + 8 + n]
                        out_end += n
                pos += 8 + n
            self._pos = pos
            if kind is not None:
                return (2 if kind == 2 else 1), view[out_start:out_end]
            # keep the incomplete frame's bytes, at the front of the buffer
            if pos:
                left = end - pos
                if left:
                    buf[:left] = view[pos:end]
                self._pos, self._end = 0, left
            if self._end == len(buf):           # a frame larger than the buffer
                self._grow()
                buf, view = self._buf, self._view
            got = self._read_into(self._end)
            if not got:
                return None
            self._end += got

    def _grow(self) -> None:
        buf = bytearray(2 * len(self._buf))
        buf[:self._end] = self._view[:self._end]
        self._buf, self._view = buf, memoryview(buf)

    def _read_into(self, at: int) -> int:
        try:
            return self.stream.recv_into(self._view[at:])
        except OSError:
            return 0

    # -- control

    def initial_resize(self, rows: int, cols: int) -> None:
        # API 1.41 has no ConsoleSize; the container must be running first, and
        # a resize right after start can still race it, so retry briefly.
        for attempt in range(10):
            try:
                self.api.resize(self.cid, rows, cols)
                return
            except DockerError:
                time.sleep(0.01 * (attempt + 1))

    def resize(self, rows: int, cols: int) -> None:
        try:
            self.api.resize(self.cid, rows, cols)
        except DockerError:
            pass

    def signal(self, name: str) -> None:
        try:
            self.api.kill(self.cid, name)
        except DockerError:
            pass

    def exit_status(self, timeout: float | None = None) -> ExitStatus:
        try:
            result = self.waiter.result(timeout)
        except DockerError:
            info = self.api.inspect(self.cid)
            state = (info or {}).get("State") or {}
            if state.get("Running") or not info:
                return ExitStatus(255, "lost the exit status of the container")
            result = {"StatusCode": state.get("ExitCode", 255)}
        code = int(result.get("StatusCode", 255)) & 0xFF
        note = None
        if code == 137:
            info = self.api.inspect(self.cid) if not self._gone else None
            if info and (info.get("State") or {}).get("OOMKilled"):
                note = "the session ran out of memory and was killed (exit 137)"
        return ExitStatus(code, note)

    def destroy(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
        self.stream.close()
        for _ in range(3):
            if _safe(lambda: self.api.remove(self.cid)):
                return
            time.sleep(0.2)


BACKEND = DockerBackend
