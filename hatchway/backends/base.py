"""What a container backend must provide, and nothing more.

The session code (hatchway/daemon/session.py, hatchway/daemon/relay.py) only ever talks to these two
classes, so Docker and Kubernetes are interchangeable behind them: a backend
turns a SessionSpec into a running Process; a Process is a byte pipe with a
size, a way to be signalled, an exit status and a guaranteed end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class BackendError(Exception):
    """The session cannot be started; the message is shown to the user as is."""


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
    config: dict                   # effective config: file, templates, webhook, policy
    labels: dict[str, str] = field(default_factory=dict)


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


class Backend(ABC):
    @abstractmethod
    def start(self, spec: SessionSpec) -> Process:
        """Create, attach and start; raises BackendError with a user-facing line."""

    @abstractmethod
    def reap(self, is_alive) -> list[str]:
        """Remove what sessions left behind; `is_alive(labels)` says which to keep.
        Returns the names of what was removed."""
