"""Docker's `connection` and `persistent` modes: a long-lived container that
runs only docker.idle_command, and each session an exec into it.

Finding the workspace (under its lock, backends/workspaces.py):

  no container of that name            create it (a 409 means another host
                                       sharing the engine just did: use it)
  made from another spec or image,     remove and create it again: a config
  and no other session uses it         or image change applies at the next
                                       login while no session is open
  stopped                              start it
  running                              use it

A session is then an exec of the command under exec_wrapper's wrapper: the
exec stream is attached when the process starts, and bytes that arrive with
the 101 head are kept (api.Stream), so no early output is lost; stdin EOF is
a half-close of the hijacked socket (an exec's stdin is closed on it, its
output keeps flowing); the exit status is the exec's ExitCode, 128+N for a
death by signal N; signals are a second exec of exec_wrapper.SIGNAL.
"""

from __future__ import annotations

import json
import logging
import time

from hatchway.core.digest import sha256

from .. import labels as L
from .. import workspaces as W
from ..base import BackendError, ExitStatus, SessionSpec
from ..exec_wrapper import read_pid, signal_argv, wrap
from .api import ENGINE_GONE, Docker, DockerError
from .process import DETACH_KEYS, DockerProcess

log = logging.getLogger("hatchwayd")


def idle_container(base: dict, d) -> dict:
    """A session container's spec (`base`, all of its host settings and
    limits) running docker.idle_command instead, with no stdio, no session
    environment and no labels: what workspaces and the warm pool's spares
    run while sessions are exec'd into them (each exec brings its own)."""
    body = dict(base, Cmd=list(d.idle_command), Tty=False, OpenStdin=False, StdinOnce=False,
                AttachStdin=False, AttachStdout=False, AttachStderr=False,
                Env=[f"{k}={v}" for k, v in d.env.items()])
    body.pop("Labels", None)
    return body


def workspace_spec(spec: SessionSpec, base: dict, name: str, image_id: str) -> dict:
    """The workspace container: idle_container() with its labels."""
    body = idle_container(base, spec.config.docker)
    digest = sha256(json.dumps([body, image_id], sort_keys=True).encode()).hexdigest()[:16]
    body["Labels"] = L.for_workspace(spec.user, spec.config.session.mode, name,
                                     spec.connection_id, digest)
    return body


def ensure(api: Docker, spec: SessionSpec, body: dict, name: str, rec: W.Record) -> str:
    """The running workspace container for this session (its id).  Called
    with the workspace's lock held and this session already recorded."""
    for _ in range(3):
        info = api.inspect(name)
        if info is None:
            try:
                cid = api.create(body, name)
            except DockerError as e:
                if e.status == 409:
                    continue        # made a moment ago by someone else: look again
                raise BackendError("cannot create your workspace",
                                   f"cannot create workspace {name}: {e}") from None
            _start(api, cid)
            rec.set_meta(started=time.time(), stopped_at=None)
            log.info("workspace %s created for %s", name, spec.user)
            return cid
        have = (info.get("Config") or {}).get("Labels") or {}
        if have.get(L.WORKSPACE) != name or have.get(L.USER) != spec.user \
                or have.get(L.HOST) != L.host_id():
            raise BackendError(f"a container named {name} exists that is not your workspace")
        state = info.get("State") or {}
        stale = have.get(L.SPEC) != body["Labels"][L.SPEC] or state.get("Dead")
        if stale and not rec.live(exclude=spec.session_id):
            log.info("workspace %s: its config or image changed; making it again", name)
            try:
                api.remove(info["Id"])
            except DockerError as e:
                raise BackendError("cannot renew your workspace",
                                   f"cannot remove workspace {name} to renew it: {e}") from None
            continue
        if not state.get("Running"):
            _start(api, info["Id"])
            rec.set_meta(started=time.time(), stopped_at=None)
        elif state.get("Paused"):
            raise BackendError("your workspace is paused")
        return info["Id"]
    raise BackendError("cannot settle on a workspace container (it keeps changing)")


def _start(api: Docker, cid: str) -> None:
    try:
        api.start(cid)
    except DockerError as e:
        raise BackendError("cannot start your workspace",
                           f"cannot start workspace {cid[:12]}: {e}") from None


class DockerExecProcess(DockerProcess):
    """One session exec'd into a workspace.  The byte side is DockerProcess's
    (the same hijacked stream, demultiplexed the same way); the control side
    is by exec."""

    what = "your workspace"     # for the user's error lines

    def __init__(self, api: Docker, cid: str, rec: W.Record, spec: SessionSpec):
        super().__init__(api, cid, None, None, spec.pty)
        self.id = rec.name
        self.rec = rec
        self.spec = spec
        self.exec_id = ""
        self.pid: int | None = None
        self.start_time: int | None = None
        self.pending: list[tuple[int, bytes]] = []
        self._swept = False

    def start(self, argv: list[str]) -> None:
        spec, d = self.spec, self.spec.config.docker
        env = dict(spec.env)
        if spec.pty and spec.term:
            env["TERM"] = spec.term
        body = {"Cmd": wrap(argv, spec.size if spec.pty else None),
                "Env": [f"{k}={v}" for k, v in env.items()],
                "AttachStdin": True, "AttachStdout": True, "AttachStderr": True,
                "Tty": spec.pty, "DetachKeys": DETACH_KEYS}
        for value, field in ((d.user, "User"), (d.workdir, "WorkingDir")):
            if value:
                body[field] = value
        try:
            self.exec_id = self.api.exec_create(self.cid, body)
            self.stream = self.api.hijack("POST", f"/exec/{self.exec_id}/start",
                                          body={"Detach": False, "Tty": spec.pty})
        except DockerError as e:
            raise BackendError(f"cannot run the command in {self.what}",
                               f"cannot exec into {self.rec.name}: {e}") from None
        self.pid, self.start_time, self.pending = read_pid(self._first_output)
        if self.pid is None:
            # The wrapper did not run: what dockerd or the shell said instead
            said = b"".join(data for _, data in self.pending).decode("utf-8", "replace")
            st = self.exit_status(timeout=5.0)
            why = said.strip().splitlines()[0] if said.strip() else f"exit {st.code}"
            raise BackendError(f"cannot run the command in {self.what}: {why[:300]}")
        self.rec.update(self.spec.session_id, pid=self.pid, start=self.start_time)

    # -- bytes: what the wrapper's line came with first

    def stdin_fileno(self) -> None:
        """No splice into an exec's stream: with it, large inputs stalled
        (8 MB `cat` in tests/e2e/test_workspaces.py, not understood yet);
        the relay reads and sends instead, as before the splice existed."""
        return None

    def _first_output(self):
        """Output for read_pid, which keeps some of it: as bytes (a view from
        DockerProcess.recv is valid only until the next recv)."""
        item = DockerProcess.recv(self)
        return None if item is None else (item[0], bytes(item[1]))

    def recv(self) -> tuple[int, bytes] | None:
        if self.pending:
            return self.pending.pop(0)
        return super().recv()

    # -- control

    def resize(self, rows: int, cols: int) -> None:
        try:
            self.api.resize(self.cid, rows, cols, exec_id=self.exec_id)
        except DockerError:
            pass

    def signal(self, name: str) -> None:
        if self.pid is None or self._swept:
            return
        self._inside(signal_argv(name, self.pid, self.start_time),
                     wait=5.0 if name == "KILL" else 0.0)

    def exit_status(self, timeout: float | None = None) -> ExitStatus:
        deadline = time.monotonic() + (30.0 if timeout is None else timeout)
        while True:
            try:
                info = self.api.exec_inspect(self.exec_id)
            except DockerError as e:
                return ExitStatus(255, self._why_lost(e))
            if not info.get("Running") and info.get("ExitCode") is not None:
                return ExitStatus(int(info["ExitCode"]) & 0xFF)
            if time.monotonic() >= deadline:
                return ExitStatus(255, "lost the exit status of the command")
            time.sleep(0.01)

    def _why_lost(self, e: DockerError) -> str:
        """The line for an exec dockerd cannot tell about: exec instances live
        in dockerd's memory, so an engine that is down (status 0) or came
        back (404 while the workspace is still there) lost them."""
        if e.status == 0:
            return ENGINE_GONE
        if e.status == 404:
            try:
                there = self.api.inspect(self.cid) is not None
            except DockerError:
                return ENGINE_GONE
            return ENGINE_GONE if there else f"{self.what} was removed; this session has ended"
        return "lost the exit status of the command"

    def destroy(self) -> None:
        """Nothing of this session outlives it: every process of its process
        session is killed (exec_wrapper.SIGNAL); what started a session of its
        own (setsid, tmux, a daemon) stays, as on a host.  The workspace
        stays too; the session leaves its record."""
        with self._lock:
            if self._gone:
                return
            self._gone = True
        if self.pid is not None:
            self._inside(signal_argv("KILL", self.pid, self.start_time), wait=5.0)
            self._swept = True
        if self.stream is not None:
            self.stream.close()
        try:
            self.rec.detach(self.spec.session_id)
        except OSError as e:
            log.warning("workspace %s: cannot update its record: %s", self.rec.name, e)

    def release(self) -> None:
        """connection mode, once the client has its answer (workspaces.py)."""
        if self.spec.config.session.mode != "connection":
            return

        def remove() -> bool:
            try:
                self.api.remove(self.cid)
                return True
            except DockerError as e:
                log.warning("cannot remove workspace %s: %s (the reaper will)", self.rec.name, e)
                return False
        if W.release_connection(self.rec, self.spec.config.workspace.connection_grace,
                                self.spec.sshd, remove):
            log.info("workspace %s removed (the last session of its connection ended)",
                     self.rec.name)

    def _inside(self, argv: list[str], wait: float = 0.0) -> bool:
        """Run a signal helper in the workspace (detached); with `wait`,
        until it has ended."""
        d = self.spec.config.docker
        return run_inside(self.api, self.cid, argv, wait, signal_user(d.user, d.cap_drop))


def signal_user(user: str, cap_drop) -> str:
    """Who runs a signal helper (exec_wrapper.SIGNAL) in a workspace: root,
    which may signal every process of a session, whatever its uid (CAP_KILL);
    unless the admin dropped CAP_KILL (cap_drop KILL or ALL), when root may
    signal only root's processes: then the session's own user, which every
    process of its sessions runs as (without capabilities, none can change
    its uid); "" for the image's user, as the sessions run."""
    dropped = {str(c).upper().removeprefix("CAP_") for c in cap_drop or ()}
    return user if dropped & {"ALL", "KILL"} else "0"


def run_inside(api: Docker, cid: str, argv: list[str], wait: float = 0.0,
               user: str = "0") -> bool:
    try:
        eid = api.exec_create(cid, {"Cmd": argv, **({"User": user} if user else {})})
        api.call("POST", f"/exec/{eid}/start", {"Detach": True, "Tty": False}, ok=(200, 204))
    except DockerError:
        return False
    deadline = time.monotonic() + wait
    while wait:
        try:
            if not api.exec_inspect(eid).get("Running"):
                return True
        except DockerError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
