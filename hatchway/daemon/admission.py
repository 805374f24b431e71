"""Who may start a session now: the per-user and host-wide session caps and
the per-user start rate (limits.*), decided in the main process at accept,
before anything is forked, from SO_PEERCRED's uid."""

from __future__ import annotations

import collections
import socket
import time

from hatchway.backends import labels

from . import live


class Children:
    """The session processes this main process forked, and the uid each
    serves (SO_PEERCRED at accept): what limits.max_sessions and
    limits.max_sessions_per_user count.  Sessions a previous main process
    started (they outlive a restart) are counted too, from their live
    records, for as long as their process lives.

    Also when each uid's recent sessions started (limits.max_starts_per_user
    within limits.starts_window): each session creates a container.  The
    live records give the starts of sessions still running after a restart;
    those that already ended are forgotten with the previous main process."""

    def __init__(self, limits, socket_path: str | None = None):
        self.limits = limits
        self.uids: dict[int, int] = {}
        self.adopted: dict[str, int] = {}       # owner token -> uid
        self.starts: dict[int, collections.deque] = {}     # uid -> monotonic times
        now, wall = time.monotonic(), time.time()
        for rec in live.records(socket_path) if socket_path else []:
            uid = rec.get("uid")
            if not rec["live"] or not isinstance(uid, int) or isinstance(uid, bool):
                continue
            self.adopted[str(rec.get("owner"))] = uid
            started = rec.get("started")
            if isinstance(started, (int, float)) and 0 <= wall - started < limits.starts_window:
                self._started(uid, now - (wall - started))     # records: oldest first

    def _started(self, uid: int, when: float) -> None:
        # kept only while limited: pruned when that uid asks again, so at most
        # max_starts_per_user times per uid
        if self.limits.max_starts_per_user and self.limits.starts_window:
            self.starts.setdefault(uid, collections.deque()).append(when)

    def _recent_starts(self, uid: int) -> int:
        times = self.starts.get(uid)
        if not times:
            return 0
        since = time.monotonic() - self.limits.starts_window
        while times and times[0] <= since:
            times.popleft()
        if not times:
            del self.starts[uid]
            return 0
        return len(times)

    def refusal(self, uid: int) -> str | None:
        """Why a new session of `uid` may not start now, or None."""
        if self.adopted:
            self.adopted = {t: u for t, u in self.adopted.items() if labels.process_alive(t)}
        uids = list(self.uids.values()) + list(self.adopted.values())
        most, per_user = self.limits.max_sessions, self.limits.max_sessions_per_user
        if most and len(uids) >= most:
            return f"this host is at its limit of {most} sessions; try again later"
        mine = sum(1 for u in uids if u == uid)
        if per_user and mine >= per_user:
            return (f"you have {mine} sessions open, the most allowed; "
                    "end one and try again")
        rate, window = self.limits.max_starts_per_user, self.limits.starts_window
        if rate and window and self._recent_starts(uid) >= rate:
            return (f"you started {rate} sessions within {_span(window)}, the most allowed; "
                    "try again later")
        return None

    def add(self, pid: int, uid: int) -> None:
        self.uids[pid] = uid
        self._started(uid, time.monotonic())

    def gone(self, pid: int) -> None:
        self.uids.pop(pid, None)


def _span(seconds: float) -> str:
    """60 -> 1m, 3600 -> 1h, 90 -> 90s: the window as the admin would write it."""
    for unit, n in (("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds / n:g}{unit}"
    return f"{seconds:g}s"


def refuse(conn: socket.socket, message: str) -> None:
    """One error frame, without waiting: the socket is fresh, so the frame
    fits its buffer, and the main process never blocks on a client."""
    from hatchway.shell import pack
    try:
        conn.send(pack({"type": "error", "message": message, "code": 255}), socket.MSG_DONTWAIT)
    except OSError:
        pass
    conn.close()
