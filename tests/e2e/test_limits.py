"""session.idle_timeout and session.max_duration, end to end: the user gets
one line saying which limit ended the session, and the exit status is 124
(as timeout(1)), in every mode."""

import pexpect
import pytest

from .stack import run, wait_for

IDLE = "hatchway: no input or output for 2s: the session is ended (session.idle_timeout)"
MAX = ("hatchway: this session reached its maximum duration of 3s and is ended "
       "(session.max_duration)")


def limited(mode: str, **limits) -> dict:
    return {"session": dict(limits, mode=mode), "daemon": {"reap_interval": "1s"}}


@pytest.fixture(params=["session", "connection", "persistent"])
def mode(request):
    yield request.param
    if request.param == "persistent":
        run(["hatchway", "workspaces", "rm", "alice"], check=False)


def test_an_idle_command_ends_with_one_line_and_124(hw, mode):
    hw.reconfigure(limited(mode, idle_timeout="2s"))
    p = hw.ssh("alice", "sleep 1000")
    assert (p.returncode, p.stderr) == (124, IDLE.encode() + b"\n")
    # bytes keep it alive, whichever way they go
    p = hw.ssh("alice", "for i in 1 2 3 4 5 6; do echo $i; sleep 1; done; exit 6")
    assert (p.returncode, p.stdout.split()) == (6, [b"1", b"2", b"3", b"4", b"5", b"6"])


def test_an_idle_terminal_gets_the_line_on_the_terminal(hw, mode):
    hw.reconfigure(limited(mode, idle_timeout="2s"))
    c = hw.spawn("alice")
    c.expect(r"[#$] ")
    c.expect_exact(IDLE, timeout=30)
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 124


def test_the_maximum_duration_ends_a_busy_session(hw, mode):
    hw.reconfigure(limited(mode, max_duration="3s"))
    p = hw.ssh("alice", "while :; do echo x; sleep 0.2; done")
    assert p.returncode == 124
    # Hatchway's line comes first; what the command then says of its hangup
    # (a shell's "Hangup" for its killed child) is its own
    assert p.stderr.splitlines()[0] == MAX.encode() and p.stdout.startswith(b"x\n")
    # the session's end line follows its answer to the client
    wait_for(lambda: "reason=max_duration" in hw.daemon_log(), 10, what="the session end line")
