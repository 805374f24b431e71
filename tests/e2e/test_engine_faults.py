"""The Docker engine failing under Hatchway: dockerd restarted under live
sessions, down at login, hung at login.  Each session ends or is refused with
one clear line, nothing is left behind once dockerd is back (no container, no
session process), and the next login works without restarting Hatchway.

These run against a dockerd of their own (engine.py), so that stopping it
disturbs nobody else's tests on this machine.
"""

import subprocess

import pexpect
import pytest

from .engine import (HOST, Engine, daemon_own_now, session_pids,
                     wait_only_daemon_left)
from .stack import IMAGE

ENGINE_GONE = b"hatchway: the container engine stopped or restarted; this session has ended\n"
ENGINE_DOWN = b"hatchway: the container engine is not available; try again later\n"


@pytest.fixture(scope="module")
def engine(stack):
    e = Engine(stack.tmp / "dockerd-own.log")
    e.start()
    try:
        e.ensure_demo_image(IMAGE)
        yield e
        if not e.up():
            e.start()
        left = e.containers()
    finally:
        e.stop()
    assert left == [], left


@pytest.fixture
def hwe(stack, engine):
    # sessions here need no network: fewer moving parts when dockerd stops
    stack.reconfigure({"docker": {"host": HOST, "network": "none"}})
    yield stack
    if not engine.up():
        engine.start()
    engine.wait_no_containers(timeout=90)


def login_works(hw) -> None:
    r = hw.ssh("alice", "cat /etc/hatchway-demo", timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"inside a Hatchway demo container\n", b"")


def test_dockerd_restarted_under_live_sessions(hwe, engine):
    own = daemon_own_now()
    login_works(hwe)            # the engine answers before the fault
    p = subprocess.Popen(hwe.ssh_argv("alice", "echo started; exec sleep 1000"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"started\n"
    shell = hwe.spawn("bob")
    shell.expect(r"[#$] ")
    shell.sendline("echo ready")
    shell.expect("ready")
    assert len(engine.containers()) == 2
    # the sessions' processes are told apart from the daemon's own (else the
    # checks for "none left" below could not fail)
    assert len(session_pids()) == 2, session_pids()

    engine.restart()

    out, err = p.communicate(timeout=120)
    assert (p.returncode, out, err) == (255, b"", ENGINE_GONE)
    shell.expect(pexpect.EOF, timeout=120)
    assert ENGINE_GONE.rstrip() in shell.before.replace(b"\r", b""), shell.before
    shell.close()
    assert shell.exitstatus == 255

    # once dockerd is back: the session processes removed their containers
    # and exited, the daemon's main process did not need a restart
    engine.wait_no_containers(timeout=90)
    wait_only_daemon_left(own, 90, "only the daemon's own processes")
    login_works(hwe)
    # the same main process served it (no restart was needed); its session
    # process removes the container after the client has its answer
    wait_only_daemon_left(own, 60, "the new login's session process to exit")


def test_dockerd_restarted_under_a_workspace_session(hwe, engine):
    """An exec into a persistent workspace: dockerd forgets its execs when
    it goes, so the session ends with the same line, and the next login
    starts the workspace again."""
    hwe.reconfigure({"docker": {"host": HOST, "network": "none"},
                     "session": {"mode": "persistent"}})
    own = daemon_own_now()
    try:
        p = subprocess.Popen(hwe.ssh_argv("alice", "echo started; exec sleep 1000"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        assert p.stdout.readline() == b"started\n"
        assert len(engine.containers()) == 1
        assert len(session_pids()) == 1, session_pids()

        engine.restart()

        out, err = p.communicate(timeout=120)
        assert (p.returncode, out, err) == (255, b"", ENGINE_GONE)
        login_works(hwe)            # the workspace, started again
        wait_only_daemon_left(own, 90, "only the daemon's own processes")
    finally:
        subprocess.run(["hatchway", "workspaces", "rm", "alice"], capture_output=True)


def test_dockerd_down_at_login(hwe, engine):
    own = daemon_own_now()
    engine.stop()
    r = hwe.ssh("alice", "echo ran", timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (255, b"", ENGINE_DOWN)
    r = hwe.ssh("bob", None, input=b"echo ran\n", timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (255, b"", ENGINE_DOWN)
    engine.start()
    login_works(hwe)
    wait_only_daemon_left(own, 30, "the session processes to exit")


def test_dockerd_hung_at_login(hwe, engine):
    """An engine that takes the connection and never answers: the login is
    refused once the daemon's Docker client gives up, not left hanging."""
    engine.freeze(True)
    try:
        r = hwe.ssh("alice", "echo ran", timeout=180)
    finally:
        engine.freeze(False)
    assert (r.returncode, r.stdout, r.stderr) == (255, b"", ENGINE_DOWN)
    login_works(hwe)
