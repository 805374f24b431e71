"""Session recordings: a pty session's output (and, when the admin asks, its
input) as asciicast v2, which `asciinema play FILE` and `hatchway sessions
play ID` replay.

Only pty sessions are recorded (a file transfer or a pipe is no screen to
replay), only for users the admin's policy names (`session.record`, set per
group, or by the config webhook where policy.webhook_may_set allows), into
<recordings.dir>/<user>/<start>-<session>.cast, readable by root and the
daemon's user only.  A recording stops at `recordings.max_size`; the last
event says so, and every line stays whole JSON.  The reaper deletes
recordings older than `recordings.retention`.
"""

from __future__ import annotations

import codecs
import json
import os
import threading
import time

STOPPED = "\r\n[hatchway: the recording stopped here, at its size limit]\r\n"


class Recorder:
    """Writes one session's events; called from the relay's two pump threads."""

    def __init__(self, path: str, rows: int, cols: int, term: str | None, title: str,
                 max_size: int, record_input: bool):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o640)
        # line-buffered: a recording on disk is as current as the session,
        # whatever happens to this process
        self.file = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        self.path = path
        self.start = time.monotonic()
        self.max_size = max_size
        self.record_input = record_input
        self.size = 0
        self.stopped = False
        self.lock = threading.Lock()
        # a multi-byte character may be split across two reads
        self.decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in "oi"}
        self._line({"version": 2, "width": cols, "height": rows,
                    "timestamp": int(time.time()), "title": title,
                    "env": {"TERM": term or "", "SHELL": "/bin/sh"}})

    def _line(self, obj) -> bool:
        text = json.dumps(obj, ensure_ascii=False) + "\n"
        if self.size + len(text.encode()) > self.max_size:
            return False
        self.file.write(text)
        self.size += len(text.encode())
        return True

    def _event(self, kind: str, data: str) -> None:
        with self.lock:
            if self.stopped:
                return
            t = round(time.monotonic() - self.start, 6)
            if not self._line([t, kind, data]):
                self.stopped = True
                self.max_size += len(STOPPED) * 4 + 64      # room for the last word
                self._line([t, "o", STOPPED])
                self.file.flush()

    def output(self, data: bytes) -> None:
        text = self.decoders["o"].decode(data)
        if text:
            self._event("o", text)

    def input(self, data: bytes) -> None:
        if self.record_input:
            text = self.decoders["i"].decode(data)
            if text:
                self._event("i", text)

    def resize(self, rows: int, cols: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def close(self) -> None:
        with self.lock:
            self.stopped = True
            try:
                self.file.close()
            except OSError:
                pass


def start(directory: str, user: str, session_id: str, rows: int, cols: int,
          term: str | None, title: str, max_size: int, record_input: bool) -> Recorder:
    """A recorder for a new session.  Raises OSError if it cannot be made."""
    userdir = os.path.join(directory, user)
    os.makedirs(userdir, mode=0o750, exist_ok=True)
    name = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{session_id[:12]}.cast"
    return Recorder(os.path.join(userdir, name), rows, cols, term, title, max_size,
                    record_input)


def find(directory: str, ident: str) -> list[str]:
    """Recordings whose session id starts with `ident` (or whose file is named so)."""
    out = []
    try:
        users = sorted(os.listdir(directory))
    except OSError:
        return out
    for user in users:
        try:
            names = sorted(os.listdir(os.path.join(directory, user)))
        except OSError:
            continue
        for name in names:
            sid = name[16:-5] if name.endswith(".cast") else ""
            if name.endswith(".cast") and (sid.startswith(ident[:12]) or name == ident):
                out.append(os.path.join(directory, user, name))
    return out


def prune(directory: str, retention: float) -> int:
    """Delete recordings older than `retention` seconds; how many."""
    if retention <= 0:
        return 0
    cutoff, n = time.time() - retention, 0
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            try:
                if name.endswith(".cast") and os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
                    n += 1
            except OSError:
                pass
    return n
