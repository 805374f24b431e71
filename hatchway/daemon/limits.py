"""Session limits: how long a session may go without a byte moving either
way (`session.idle_timeout`) and how long it may last at all
(`session.max_duration`).

The relay consults a Limits whenever it wakes up and sleeps no longer than
`wait()` says.  It passes its byte counters instead of reporting every chunk,
so the pumps (the hot loops) do not change: activity is noticed at the next
sample, at most `interval` late, which can only make a session end a little
later than its limit, never earlier.

A session ended by a limit exits with status 124, as timeout(1) does; the user
gets one line saying which limit it was (`message`).
"""

from __future__ import annotations

import time

EXIT_CODE = 124


def human(seconds: float) -> str:
    """90 -> "1m30s", 7200 -> "2h", 0.5 -> "0.5s": how the config writes durations."""
    if seconds < 60:
        return f"{seconds:g}s"
    s = int(round(seconds))
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out


class Limits:
    def __init__(self, idle_timeout: float | None, max_duration: float | None,
                 clock=time.monotonic):
        self.idle = idle_timeout or None
        self.max = max_duration or None
        self.clock = clock
        self.started = clock()
        self.last_total = 0
        self.last_activity = self.started
        # How often the counters are sampled while an idle limit is set.
        self.interval = max(0.05, min(1.0, self.idle / 10)) if self.idle else None
        # "idle" | "max_duration": the session's end reason (session.end_reason)
        self.reached: str | None = None

    def __bool__(self) -> bool:
        return bool(self.idle or self.max)

    def check(self, total_bytes: int) -> bool:
        """True once a limit is reached (then `reached` says which)."""
        now = self.clock()
        if total_bytes != self.last_total:
            self.last_total, self.last_activity = total_bytes, now
        if self.max and now - self.started >= self.max:
            self.reached = "max_duration"
        elif self.idle and now - self.last_activity >= self.idle:
            self.reached = "idle"
        return self.reached is not None

    def wait(self) -> float | None:
        """Seconds until the next check is due; None when there are no limits."""
        now = self.clock()
        due = []
        if self.max:
            due.append(self.started + self.max - now)
        if self.idle:
            due.append(min(self.interval, self.last_activity + self.idle - now))
        return max(0.0, min(due)) if due else None

    def message(self) -> str:
        if self.reached == "max_duration":
            return (f"hatchway: this session reached its maximum duration of "
                    f"{human(self.max)} and is ended (session.max_duration)")
        return (f"hatchway: no input or output for {human(self.idle)}: "
                f"the session is ended (session.idle_timeout)")
