"""How sessions end: disconnects, faults, daemon restarts — and that no
container is ever left behind.  Faults are real `kill`s of real processes."""

import os
import signal
import subprocess
import time

import pexpect

from .stack import run, wait_for

PROMPT = r"[#$] "


def _disconnect_and_watch(hw, client_pid: int, cid: str) -> tuple[float, list[str]]:
    t0 = time.time()
    os.kill(client_pid, signal.SIGKILL)
    hw.wait_no_containers(timeout=20, user="alice")
    took = time.time() - t0
    print(f"container removed {took:.2f}s after the client was killed")
    return took, hw.exit_codes(cid, t0 - 1)


def test_a_command_ignoring_sighup_is_removed_after_the_grace(hw):
    c = hw.spawn("alice", "trap '' HUP; echo ready; sleep 1000")
    c.expect("ready")
    ctr = hw.one_container(user="alice")
    took, codes = _disconnect_and_watch(hw, c.pid, ctr["ID"])
    assert codes == ["137"], codes           # SIGKILLed by the forced removal
    c.close(force=True)


def _shell_pid(user: str) -> int:
    """The newest hatchway-shell of `user` (the one the test just started)."""
    return int(run(["pgrep", "-n", "-u", user, "-f", "hatchway-shell"]).stdout)


def test_kill_9_of_hatchway_shell_removes_the_container(hw):
    p = subprocess.Popen(hw.ssh_argv("alice", "sleep 1000"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    hw.one_container(user="alice")
    os.kill(_shell_pid("alice"), signal.SIGKILL)
    hw.wait_no_containers(timeout=20, user="alice")
    assert p.wait(30) != 0


def test_restarting_the_daemon_does_not_end_live_sessions(hw):
    p = subprocess.Popen(hw.ssh_argv("alice", "sleep 4; echo done; exit 5"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    c = hw.spawn("bob")
    c.expect(PROMPT)
    hw.one_container(user="alice")
    hw.restart_daemon()
    c.sendline("echo still here; exit 6")
    c.expect("still here")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 6
    out, err = p.communicate(timeout=60)
    assert (p.returncode, out) == (5, b"done\n"), err
    # and the restarted daemon serves new sessions
    assert hw.ssh("alice", "echo new").stdout == b"new\n"


def test_the_reaper_removes_orphans_when_the_daemon_starts(hw):
    p = subprocess.Popen(hw.ssh_argv("alice", "sleep 1000"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ctr = hw.one_container(user="alice")
    # both the main process and the session process die without a word
    hw.stop_daemon(signal.SIGKILL)
    os.kill(hw.session_pid(ctr), signal.SIGKILL)
    p.communicate(timeout=30)
    time.sleep(1)
    assert [c["ID"] for c in hw.containers(user="alice")] == [ctr["ID"]], "orphan still there"
    hw.start_daemon()
    hw.wait_no_containers(timeout=20, user="alice")


def test_session_start_and_end_are_logged(hw):
    p = hw.ssh("alice", "printf 12345; exit 4", input=b"abc")
    assert p.returncode == 4
    log = hw.daemon_log()
    start = [ln for ln in log.splitlines() if "session start user=alice" in ln][-1]
    sid = start.split("session=")[1].split()[0]
    end = wait_for(lambda: [ln for ln in hw.daemon_log().splitlines()
                            if "session end" in ln and f"session={sid}" in ln], 10,
                   what="the session end line")[0]
    for field in ("user=alice", "container=", "mode=session", "duration=", "exit=4",
                  "bytes_in=3", "bytes_out=5"):
        assert field in end, (field, end)
