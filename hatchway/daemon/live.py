"""Live sessions, as files: one small JSON record per running session in
/run/hatchway/sessions/, written by the session's own process.

Files, not the main process's memory, because sessions outlive a restart of
the main process (KillMode=process): whoever looks — `hatchway sessions`, the
metrics process, a new main process — reads the same truth.  A record whose
owning process is gone (labels.process_alive) is stale, not live; the reaper
deletes such records.
"""

from __future__ import annotations

import json
import os
import time

from hatchway.backends import labels
from hatchway.core import fsutil

DIR = "sessions"            # under the daemon's run directory (daemon.socket's)
# Last-activity updates are written at most this often: a file write per
# relayed chunk would cost more than the chunk.
ACTIVITY_EVERY = 5.0


def directory(socket_path: str) -> str:
    return os.path.join(os.path.dirname(socket_path), DIR)


class Record:
    """This session's record; `touch()` on activity, `remove()` at the end."""

    def __init__(self, socket_path: str, fields: dict):
        self.path = os.path.join(directory(socket_path), f"{fields['session']}.json")
        self.fields = dict(fields, started=fields.get("started", time.time()))
        self.fields["active"] = self.fields["started"]
        self.written = 0.0
        self.write()

    def write(self) -> None:
        try:
            fsutil.atomic_write(self.path, json.dumps(self.fields).encode(), 0o640)
            self.written = time.monotonic()
        except OSError:
            pass            # the live view is a convenience; the session goes on

    def update(self, **fields) -> None:
        self.fields.update(fields)
        self.write()

    def touch(self, when: float | None = None) -> None:
        """Bytes moved.  Cheap when called often: writes at most every ACTIVITY_EVERY."""
        self.fields["active"] = time.time() if when is None else when
        if time.monotonic() - self.written >= ACTIVITY_EVERY:
            self.write()

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def records(socket_path: str) -> list[dict]:
    """Every record, live or stale (`live` says which), oldest first."""
    d = directory(socket_path)
    out = []
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, name), encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict):
            continue
        rec["file"] = os.path.join(d, name)
        rec["live"] = labels.process_alive(str(rec.get("owner", "")))
        out.append(rec)
    return sorted(out, key=lambda r: r.get("started", 0))


def sweep(socket_path: str) -> int:
    """Delete the records of sessions whose process is gone; how many."""
    n = 0
    for rec in records(socket_path):
        if not rec["live"]:
            try:
                os.unlink(rec["file"])
                n += 1
            except OSError:
                pass
    return n
