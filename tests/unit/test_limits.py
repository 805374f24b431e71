"""Session limits (daemon/limits.py) on a clock the test turns, and the relay
ending a session by them (with a FAKE process, as tests/unit/test_relay.py)."""

import os
import threading

from hatchway.daemon.limits import EXIT_CODE, Limits, human

from .test_relay import FakeProcess, Pipes, read_all, relay


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_no_limits_never_wake_the_relay():
    lim = Limits(0, 0)
    assert not lim and lim.wait() is None and not lim.check(10)


def test_idle_counts_from_the_last_bytes_seen_either_way():
    c = Clock()
    lim = Limits(10, 0, clock=c)
    c.now += 9
    assert not lim.check(0)
    c.now += 0.5
    assert not lim.check(5)            # bytes moved: the idle clock starts again
    c.now += 9.9
    assert not lim.check(5)
    c.now += 0.2
    assert lim.check(5) and lim.reached == "idle"
    assert "no input or output for 10s" in lim.message()


def test_idle_sampling_is_frequent_enough_and_never_early():
    c = Clock()
    lim = Limits(600, 0, clock=c)
    assert lim.wait() == 1.0           # sampled every second, for a 10 minute limit
    lim = Limits(2, 0, clock=c)
    assert lim.wait() == 0.2


def test_max_duration_counts_from_the_start_whatever_moves():
    c = Clock()
    lim = Limits(0, 3600, clock=c)
    assert lim.wait() == 3600
    c.now += 3599
    assert not lim.check(1 << 30)
    c.now += 1
    assert lim.check(2 << 30) and lim.reached == "max_duration"
    assert "maximum duration of 1h" in lim.message()
    assert lim.wait() == 0


def test_durations_read_as_the_config_writes_them():
    assert [human(x) for x in (0.5, 45, 90, 3600, 5400)] == ["0.5s", "45s", "1m30s", "1h",
                                                           "1h30m"]


def test_an_idle_session_gets_one_line_then_a_hangup_and_exit_124():
    p, proc = Pipes(), FakeProcess()
    r, control, t, result = relay(proc, p.fds, grace=0.2, limits=Limits(0.3, 0))
    t.join(10)
    assert not t.is_alive()
    out = result["outcome"]
    assert (out.reason, out.status.code, out.hangup) == ("idle", EXIT_CODE, True)
    assert proc.signals == ["HUP"]
    os.close(p.err_w)
    assert read_all(p.err_r) == (b"hatchway: no input or output for 0.3s: the session is "
                                 b"ended (session.idle_timeout)\n")


def test_bytes_keep_a_session_with_an_idle_limit_alive():
    p, proc = Pipes(), FakeProcess(code=5)
    r, control, t, result = relay(proc, p.fds, limits=Limits(0.5, 0))
    for _ in range(8):                   # output every 0.2 s, for longer than the limit
        proc.out.put((1, b"."))
        threading.Event().wait(0.2)
    proc.out.put(None)
    t.join(5)
    assert (result["outcome"].reason, result["outcome"].status.code) == (None, 5)


def test_max_duration_ends_a_busy_session_and_the_status_is_124_even_if_it_exits():
    p, proc = Pipes(), FakeProcess(code=0)
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            proc.out.put((1, b"x"))
            threading.Event().wait(0.05)
    threading.Thread(target=chatter, daemon=True).start()
    r, control, t, result = relay(proc, p.fds, grace=5, limits=Limits(0, 0.5))

    def exits_on_hup():
        while "HUP" not in proc.signals:
            threading.Event().wait(0.01)
        stop.set()
        proc.out.put(None)
    threading.Thread(target=exits_on_hup, daemon=True).start()
    t.join(10)
    assert (result["outcome"].reason, result["outcome"].status.code) == ("max_duration", 124)
    assert not proc.destroyed
