"""What a container backend must provide, and nothing more.

The daemon (daemon/session.py, daemon/relay.py) and the admin command only
ever talk to these classes, so Docker and Kubernetes are interchangeable
behind them: a backend turns a SessionSpec into a running Process, lists and
removes what sessions left on the engine, and says whether it can work at
all; a Process is a byte pipe with a size, a way to be signalled, an exit
status and a guaranteed end.  backends/registry.py says how a backend is
found; tests/contract holds the behaviour every backend must show.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from hatchway.core.errors import HatchwayError

from . import workspaces as W


# What Process.signal() delivers: what hatchway-shell forwards (shell.FORWARDED)
# plus KILL, for the end of a hangup's grace.
SIGNALS = ("HUP", "TERM", "INT", "QUIT", "KILL")


class BackendError(HatchwayError):
    """The session cannot be started; the message is shown to the user as is."""
    code = 255


class EngineError(HatchwayError):
    """A container engine's API answered with an error (`status` 0: no answer)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class SessionSpec:
    user: str
    uid: int
    session_id: str
    connection_id: str
    kind: str                      # "shell" | "exec" | "subsystem"
    argv: list[str]                # what runs in the container
    pty: bool
    term: str | None
    size: tuple[int, int] | None   # rows, cols
    env: dict[str, str]            # already filtered by the allowlist
    remote_address: str
    config: object                 # the typed Config: file, groups, templates, webhook, policy
    labels: dict[str, str] = field(default_factory=dict)
    command: str = "exec"          # shell, exec, sftp, scp, rsync, git (commands.command_class)
    # host directory to bind-mount read-only at /run/hatchway (daemon/agent.py);
    # only given to a backend whose `agent_forwarding` is true
    agent_dir: str | None = None
    sshd: str = ""                 # the SSH connection's sshd process (labels.process_token)


@dataclass
class ExitStatus:
    code: int                      # 0-255; death by signal N is 128+N
    note: str | None = None        # one line for the user's stderr, e.g. an OOM kill


class Process(ABC):
    """One command running for one SSH session."""

    id: str = ""                   # container / pod name, for logs

    @abstractmethod
    def send(self, data: bytes) -> None:
        """Write to the command's stdin; blocks for flow control."""

    @abstractmethod
    def close_stdin(self) -> None:
        """EOF on the command's stdin; its output keeps flowing."""

    @abstractmethod
    def recv(self) -> tuple[int, bytes] | None:
        """Next piece of output as (1 = stdout | 2 = stderr, bytes); None at the end."""

    @abstractmethod
    def resize(self, rows: int, cols: int) -> None:
        """Set the command's terminal size (pty sessions)."""

    @abstractmethod
    def signal(self, name: str) -> None:
        """Deliver HUP/TERM/INT/QUIT/KILL to the command."""

    @abstractmethod
    def exit_status(self, timeout: float | None = None) -> ExitStatus:
        """Wait for the command's exit status (after recv() returned None)."""

    @abstractmethod
    def destroy(self) -> None:
        """Make sure nothing of this session survives.  Idempotent; never raises."""

    def agent_peer_ok(self, pid: int, uid: int) -> bool:
        """May the process `pid` (host pid, SO_PEERCRED) running as `uid` use
        this session's agent socket?  Only a process of this container running
        as root or as the container's user.  Backends without agent
        forwarding say no."""
        return False
    def release(self) -> None:
        """After destroy(), once the client has its answer: let go of what the
        session shared (a connection's workspace goes when its last session
        has gone, after a grace).  May take that long; never raises."""


@dataclass
class Found:
    """A session's container or pod, as the engine lists it."""
    name: str                      # what people see and remove() takes: container id, pod name
    labels: dict[str, str]         # labels.py's, the owner token included
    state: str                     # the engine's own word: running, exited, Pending, ...
    going: bool = False            # already being removed (a pod with a deletionTimestamp)
    running: bool = False          # what runs in it can be exec'd into
    created: float | None = None   # when the engine made it (seconds since the epoch)
    spare: bool = False            # a warm pool's spare nobody has claimed (Docker): no session's


class Backend(ABC):
    """One engine, with the daemon-wide part of the config (where the engine
    is); what a session's container looks like comes with each SessionSpec."""

    # Can mount SessionSpec.agent_dir and answer Process.agent_peer_ok
    # (daemon/agent.py).  A backend without it refuses `ssh -A` with a note.
    agent_forwarding = False
    # Can a workspace be stopped and started again (Docker), or is stopping
    # it removing it (a Kubernetes pod)?
    keeps_stopped = False

    def __init__(self, cfg):
        self.cfg = cfg

    @abstractmethod
    def start(self, spec: SessionSpec) -> Process:
        """Create, attach and start; raises BackendError with a user-facing line."""

    @abstractmethod
    def list(self, user: str | None = None) -> list[Found]:
        """This host's session containers (labels.selector), of `user` if given.
        Raises BackendError when the engine cannot be asked."""

    @abstractmethod
    def remove(self, found: Found) -> bool:
        """End it now: whatever runs in it is killed.  True once it is gone or going."""

    @abstractmethod
    def check(self) -> tuple[list[str], list[str]]:
        """For `hatchway check`: (problems, notes), one line each."""

    # -- workspaces (connection and persistent modes; backends/workspaces.py)

    def stop(self, found: Found) -> bool:
        """Stop a workspace now: its sessions end; the backend's docs say what
        of it survives.  True once it is stopped or gone."""
        raise BackendError(f"backend {self.cfg.backend} has no workspaces")

    def kill_session(self, found: Found, pid: int, start: int | None) -> bool:
        """KILL every process of one session inside workspace `found` (the
        session's command is `pid`, started at `start`: exec_wrapper.SIGNAL)."""
        return False

    # -- a warm pool of spare containers (Docker's; backends/docker/pool.py)

    def keeps_spares(self) -> bool:
        """Does the daemon run a keeper process for this backend's spares?"""
        return False

    def keep_spares(self, parent: int) -> None:
        """The keeper process's life: until `parent` (the main process) is
        gone or SIGTERM comes."""

    # -- the reaper

    def reap(self, is_alive) -> list[str]:
        """Remove what sessions left behind: every session container
        `is_alive(labels)` does not claim.  Returns the names of what was
        removed.  Workspaces have no owner to ask: tend_workspaces() is theirs."""
        removed = []
        for found in self.list():
            if W.is_workspace(found.labels):
                continue
            if not found.going and is_alive(found.labels):
                continue
            if self.remove(found):
                removed.append(found.name)
        return removed

    def tend_workspaces(self, now: float | None = None) -> list[str]:
        """What the reaper does for workspaces (workspaces.tend): one line per
        thing done."""
        found = [f for f in self.list() if W.is_workspace(f.labels)]
        return W.tend(self, found, W.root_for(self.cfg), self.cfg.workspace, now)
