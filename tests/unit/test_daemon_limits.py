"""What the daemon's main process counts before it forks a session
(daemon/admission.py Children): sessions at once, per user and per host, those a
previous main process left running included, and how many sessions a user
may start within a window.  Live records are real files and their owners
real processes, as after `systemctl restart hatchway`."""

import json
import subprocess
import time
import types

import pytest

from hatchway.backends import labels
from hatchway.core import config
from hatchway.daemon import admission, live

ALICE, BOB = 1001, 1002
PER_USER = "you have 2 sessions open, the most allowed; end one and try again"
HOST_FULL = "this host is at its limit of 3 sessions; try again later"


def limits(**kw) -> config.Limits:
    values = {"max_sessions": 3, "max_sessions_per_user": 2, "max_starts_per_user": 0,
              "starts_window": 60.0, **kw}
    return config.Limits(**values)


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / live.DIR).mkdir()
    return tmp_path


@pytest.fixture
def sessions():
    """Stand-ins for session processes of a previous main process."""
    procs = []

    def start() -> subprocess.Popen:
        p = subprocess.Popen(["sleep", "600"])
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()


def record(run_dir, name: str, uid, owner: str, started: float | None = None) -> None:
    rec = {"session": name, "user": f"u{uid}", "uid": uid, "owner": owner,
           "started": time.time() if started is None else started}
    (run_dir / live.DIR / f"{name}.json").write_text(json.dumps(rec))


def dead_token() -> str:
    p = subprocess.Popen(["true"])
    token = labels.process_token(p.pid)     # /proc still holds it until waited for
    p.wait()
    return token


def test_sessions_of_a_previous_main_process_count_while_they_live(run_dir, sessions):
    a1, a2, b1 = sessions(), sessions(), sessions()
    record(run_dir, "a1", ALICE, labels.process_token(a1.pid))
    record(run_dir, "a2", ALICE, labels.process_token(a2.pid))
    record(run_dir, "b1", BOB, labels.process_token(b1.pid))
    record(run_dir, "b0", BOB, dead_token())                 # stale: its process is gone
    record(run_dir, "bad", "1002", labels.process_token(b1.pid))   # not a uid: ignored
    kids = admission.Children(limits(), str(run_dir / "hatchwayd.sock"))
    assert kids.refusal(ALICE) == HOST_FULL
    b1.kill()
    b1.wait()
    # alice's 2 left: she is at her own limit, bob is not
    assert kids.refusal(ALICE) == PER_USER
    assert kids.refusal(BOB) is None
    kids.add(4242, BOB)                      # a session of this main process
    assert kids.refusal(BOB) == HOST_FULL
    kids.gone(4242)
    a1.kill()
    a1.wait()
    assert kids.refusal(ALICE) is None


def test_without_records_only_this_processs_children_count(run_dir):
    kids = admission.Children(limits(), str(run_dir / "hatchwayd.sock"))
    assert kids.refusal(ALICE) is None
    kids.add(1, ALICE)
    kids.add(2, ALICE)
    assert kids.refusal(ALICE) == PER_USER
    kids.gone(1)
    assert kids.refusal(ALICE) is None


class Clock:
    """admission.time for the window: monotonic time moves only when told."""

    def __init__(self):
        self.mono, self.wall = 1000.0, time.time()

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall


def test_a_user_may_start_so_many_sessions_within_the_window(run_dir, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(admission, "time", types.SimpleNamespace(monotonic=clock.monotonic,
                                                            time=clock.time))
    kids = admission.Children(limits(max_starts_per_user=2, starts_window=60.0, max_sessions=0,
                                max_sessions_per_user=0))
    for pid in (1, 2):
        assert kids.refusal(ALICE) is None
        kids.add(pid, ALICE)
        kids.gone(pid)                       # ended at once: the starts still count
    assert kids.refusal(ALICE) == ("you started 2 sessions within 1m, the most allowed; "
                                   "try again later")
    assert kids.refusal(BOB) is None         # his own share
    clock.mono += 30
    assert kids.refusal(ALICE) is not None
    clock.mono += 30.5                       # the first start left the window
    assert kids.refusal(ALICE) is None


def test_a_restart_keeps_the_starts_of_sessions_still_running(run_dir, sessions,
                                                               monkeypatch):
    clock = Clock()
    monkeypatch.setattr(admission, "time", types.SimpleNamespace(monotonic=clock.monotonic,
                                                            time=clock.time))
    recent, old = sessions(), sessions()
    record(run_dir, "old", ALICE, labels.process_token(old.pid), clock.wall - 7200)
    record(run_dir, "recent", ALICE, labels.process_token(recent.pid), clock.wall - 10)
    kids = admission.Children(limits(max_starts_per_user=2, starts_window=60.0, max_sessions=0,
                                max_sessions_per_user=0), str(run_dir / "hatchwayd.sock"))
    assert kids.refusal(ALICE) is None
    kids.add(7, ALICE)
    assert kids.refusal(ALICE) is not None   # the recent one and this one
    clock.mono += 50.5                       # the recent one is 60.5 s old
    assert kids.refusal(ALICE) is None


def test_no_rate_limit_keeps_nothing():
    kids = admission.Children(limits(max_starts_per_user=0, max_sessions=0,
                                max_sessions_per_user=0))
    for pid in range(500):
        kids.add(pid, ALICE)
        kids.gone(pid)
    assert kids.refusal(ALICE) is None and kids.starts == {}


@pytest.mark.parametrize("seconds, shown", [(60, "1m"), (3600, "1h"), (7200, "2h"),
                                             (90, "90s"), (0.5, "0.5s")])
def test_the_window_is_shown_as_the_admin_would_write_it(seconds, shown):
    assert admission._span(seconds) == shown
