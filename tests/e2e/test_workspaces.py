"""Workspaces on Docker, end to end: `persistent` mode (one container per
user, kept between logins) and `connection` mode (one container per SSH
connection, shared by its sessions), through the real sshd, the installed
.deb and dockerd.  Every session is an exec into the workspace; every session
guarantee of session mode is checked again in that form, and no fault may
leave a session's processes or a connection's container behind."""

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pexpect
import pytest

from .stack import IMAGE, run, token_pid, wait_for
from .webhook_servers import ContainerSSHServer

PROMPT = r"[#$] "
RECORDS = Path("/run/hatchway/workspaces")
FAST_REAPER = {"daemon": {"reap_interval": "1s"}}
PERSISTENT = dict(FAST_REAPER, session={"mode": "persistent"})
CONNECTION = dict(FAST_REAPER, session={"mode": "connection"})
MODES = [pytest.param("persistent", marks=pytest.mark.config(PERSISTENT), id="persistent"),
         pytest.param("connection", marks=pytest.mark.config(CONNECTION), id="connection")]


@pytest.fixture
def ws(hw):
    """The stack as configured (marker `config`); workspaces outlive their
    sessions by design, so each test's are removed after it, with the admin
    command, before the leak check of `hw`."""
    yield hw
    for user in ("alice", "bob"):
        run(["hatchway", "workspaces", "rm", user], check=False)


def workspace(hw, user="alice", mode="persistent", timeout=30) -> dict:
    return hw.one_container(timeout=timeout, user=user, mode=mode)


def inside(ctr: dict, script: str) -> str:
    """What `sh -c script` prints inside the workspace, run by the test itself
    (docker exec), not through Hatchway."""
    return run(["docker", "exec", ctr["ID"], "sh", "-c", script]).stdout


def processes(ctr: dict) -> str:
    return inside(ctr, "ps -o pid,args")


def recorded(ctr: dict) -> list[dict]:
    """This host's record of the sessions in a workspace."""
    d = RECORDS / (ctr["labels"]["io.hatchway.workspace"] + ".d")
    return [json.loads(p.read_text()) for p in sorted(d.glob("*"))] if d.exists() else []


def started(hw, user, command, tty=False):
    """A session that printed `ready`: the Popen (or pexpect child)."""
    if tty:
        c = hw.spawn(user, command)
        c.expect("ready")
        return c
    p = subprocess.Popen(hw.ssh_argv(user, command), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n", p.stderr.read()
    return p


# ------------------------------------------------------------------ persistent

@pytest.mark.config(PERSISTENT)
def test_a_file_written_in_one_login_is_there_in_the_next(ws):
    assert ws.ssh("alice", "echo kept > /root/note").returncode == 0
    first = workspace(ws)
    p = ws.ssh("alice", "cat /root/note; cat /etc/hatchway-demo")
    assert (p.returncode, p.stdout) == (0, b"kept\ninside a Hatchway demo container\n"), p.stderr
    again = workspace(ws)
    assert again["ID"] == first["ID"] and again["labels"]["io.hatchway.mode"] == "persistent"
    # bob has his own
    assert ws.ssh("bob", "cat /root/note").returncode == 1
    assert workspace(ws, "bob")["ID"] != first["ID"]


@pytest.mark.config(PERSISTENT)
def test_concurrent_first_logins_get_one_workspace(ws):
    out, log_before = [], len(ws.daemon_log())

    def login():
        out.append(ws.ssh("alice", "hostname"))
    threads = [threading.Thread(target=login) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [p.returncode for p in out] == [0] * 4, [p.stderr for p in out]
    assert len({p.stdout for p in out}) == 1
    assert len(ws.containers(user="alice")) == 1
    assert ws.daemon_log()[log_before:].count("created for alice") == 1


@pytest.mark.config(PERSISTENT)
def test_parallel_logins_see_each_others_processes(ws):
    a = started(ws, "alice", "echo ready; exec sleep 1001")
    try:
        p = ws.ssh("alice", "ps -o args")
        assert b"sleep 1001" in p.stdout, p.stdout
    finally:
        a.kill()
        a.wait()


@pytest.mark.config(PERSISTENT)
def test_hup_of_one_session_leaves_the_other_running(ws):
    # both trap HUP and leave a mark; only the session whose client vanished gets it
    loop = "trap 'echo HUP > /root/hup-{0}; exit 1' HUP; echo ready; while :; do sleep 0.2; done"
    a = started(ws, "alice", loop.format("a"), tty=True)
    b = started(ws, "alice", loop.format("b"))
    ctr = workspace(ws)
    os.kill(a.pid, signal.SIGKILL)              # the client of a vanishes
    wait_for(lambda: inside(ctr, "cat /root/hup-a 2>/dev/null || true"), 30, 0.2,
             what="a's HUP")
    assert inside(ctr, "ls /root") == "hup-a\n"
    assert b.poll() is None and workspace(ws)["ID"] == ctr["ID"]
    wait_for(lambda: len(recorded(ctr)) == 1, 30, 0.2, what="a's record to go")
    b.stdin.close()
    b.kill()
    b.wait()
    a.close(force=True)


@pytest.mark.config(dict(PERSISTENT, workspace={"idle_timeout": "2s"}))
def test_the_idle_timeout_stops_it_and_the_next_login_brings_it_back(ws):
    assert ws.ssh("alice", "echo kept > /root/note").returncode == 0
    ctr = workspace(ws)
    wait_for(lambda: ws.containers(user="alice")[0]["State"] == "exited", 60, 0.2,
             what="the idle workspace to stop")
    assert "stopped (no session for" in ws.daemon_log()
    p = ws.ssh("alice", "cat /root/note")
    assert (p.returncode, p.stdout) == (0, b"kept\n"), p.stderr
    again = workspace(ws)
    assert again["ID"] == ctr["ID"] and again["State"] == "running"


@pytest.mark.config(dict(PERSISTENT, workspace={"idle_timeout": "1s", "remove_after": "2s"}))
def test_a_stopped_workspace_expires_after_remove_after(ws):
    assert ws.ssh("alice", "touch /root/mark").returncode == 0
    ws.wait_no_containers(timeout=60, user="alice")
    log = ws.daemon_log()
    assert "stopped (no session for" in log and "workspace.remove_after" in log
    assert ws.ssh("alice", "test -e /root/mark").returncode == 1     # from the image again


@pytest.mark.config(PERSISTENT)
def test_workspaces_list_stop_and_rm(ws):
    a = started(ws, "alice", "echo ready; exec sleep 1002")
    ctr = workspace(ws)
    rows = json.loads(run(["hatchway", "workspaces", "list", "--json"]).stdout)
    assert [(r["user"], r["mode"], r["backend"], r["idle"], r["sessions"]) for r in rows] == \
        [("alice", "persistent", "docker", "in use", 1)]
    assert rows[0]["container"] == ctr["labels"]["io.hatchway.workspace"] and rows[0]["started"]
    sessions = json.loads(run(["hatchway", "sessions", "list", "--json"]).stdout)
    assert [(s["user"], s["mode"], s["state"], s["container"]) for s in sessions] == \
        [("alice", "persistent", "live", rows[0]["container"])]
    # stop: its sessions end, the file system stays
    assert run(["hatchway", "workspaces", "stop", "alice"]).stdout.startswith("stopped ")
    a.communicate(timeout=30)
    assert ws.containers(user="alice")[0]["State"] == "exited"
    assert "stopped" in json.loads(run(["hatchway", "workspaces", "list", "--json"]).stdout)[0][
        "idle"]
    # rm: gone, and the next login starts from the image again
    assert ws.ssh("alice", "touch /root/mark").returncode == 0
    run(["hatchway", "workspaces", "rm", "alice"])
    assert ws.containers(user="alice") == []
    assert ws.ssh("alice", "test -e /root/mark").returncode == 1
    p = run(["hatchway", "workspaces", "stop", "carol"], check=False)
    assert (p.returncode, p.stderr) == (1, "hatchway: carol has no persistent workspace\n")


@pytest.mark.config(PERSISTENT)
def test_sessions_kill_ends_one_session_and_keeps_the_workspace(ws):
    a = started(ws, "alice", "echo ready; exec sleep 1003")
    ctr = workspace(ws)
    sid = recorded(ctr)[0]["session"]
    run(["hatchway", "sessions", "kill", sid[:12]])
    _, err = a.communicate(timeout=30)
    assert (a.returncode, err) == (129, b"hatchway: this session was ended by an administrator\n")
    assert workspace(ws)["ID"] == ctr["ID"]
    assert "sleep 1003" not in processes(ctr)


@pytest.mark.config(PERSISTENT)
def test_an_image_change_applies_at_the_next_login_without_a_session(ws):
    run(["docker", "tag", IMAGE, "hatchway/demo:workspace-test"])
    try:
        a = started(ws, "alice", "echo ready; exec sleep 1004")
        old = workspace(ws)
        ws.reconfigure(dict(PERSISTENT, docker={"image": "hatchway/demo:workspace-test"}))
        # a session is open: the next login still gets the workspace it uses
        assert ws.ssh("alice", "true").returncode == 0
        assert workspace(ws)["ID"] == old["ID"]
        a.kill()
        a.wait()
        wait_for(lambda: not recorded(old), 30, 0.2, what="the session to end")
        assert ws.ssh("alice", "true").returncode == 0
        new = workspace(ws)
        assert new["ID"] != old["ID"] and new["Image"] == "hatchway/demo:workspace-test"
    finally:
        run(["hatchway", "workspaces", "rm", "alice"], check=False)
        run(["docker", "rmi", "hatchway/demo:workspace-test"], check=False)


@pytest.mark.config(PERSISTENT)
def test_restarting_the_daemon_keeps_sessions_and_the_workspace(ws):
    a = started(ws, "alice", "echo ready; read x; echo done $x; exit 5")
    ctr = workspace(ws)
    ws.restart_daemon()                 # its reaper runs at once
    out, err = a.communicate(b"after\n", timeout=60)
    assert (a.returncode, out) == (5, b"done after\n"), err
    assert ws.ssh("alice", "true").returncode == 0
    assert workspace(ws)["ID"] == ctr["ID"]


@pytest.mark.config(dict(CONNECTION, workspace={"connection_grace": "1h"}))
def test_restarting_the_daemon_keeps_a_connection_its_sessions_and_its_container(ws):
    m = Master(ws)
    try:
        a = subprocess.Popen(m.argv("echo ready; read x; echo done $x; exit 5"),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        assert a.stdout.readline() == b"ready\n", a.stderr.read()
        ctr = workspace(ws, mode="connection")
        ws.restart_daemon()
        out, err = a.communicate(b"after\n", timeout=60)
        assert (a.returncode, out) == (5, b"done after\n"), err
        assert m.ssh("true").returncode == 0
        assert workspace(ws, mode="connection")["ID"] == ctr["ID"]
    finally:
        m.exit()
    ws.wait_no_containers(timeout=30, user="alice")


@pytest.mark.config(dict(PERSISTENT, workspace={"idle_timeout": "1s"}))
def test_the_reaper_never_stops_a_workspace_in_use(ws):
    a = started(ws, "alice", "echo ready; read x; echo still $x")
    mine = workspace(ws)
    # bob's idle workspace stopping twice proves two reaper passes more than
    # the idle timeout apart, both with alice's in use all along
    for _ in range(2):
        assert ws.ssh("bob", "true").returncode == 0
        wait_for(lambda: ws.containers(user="bob")[0]["State"] == "exited", 60, 0.2,
                 what="bob's idle workspace to stop")
    assert ws.containers(user="alice")[0]["State"] == "running"
    out, err = a.communicate(b"here\n", timeout=30)
    assert (a.returncode, out) == (0, b"still here\n"), err
    # out of use, it is stopped like any other
    wait_for(lambda: ws.containers(user="alice")[0]["State"] == "exited", 60, 0.2,
             what="alice's workspace to stop once idle")
    assert workspace(ws)["ID"] == mine["ID"]


@pytest.fixture
def devs():
    run(["groupadd", "-f", "hw-devs"])
    run(["usermod", "-aG", "hw-devs", "bob"])
    yield "hw-devs"
    run(["gpasswd", "-d", "bob", "hw-devs"], check=False)
    run(["groupdel", "hw-devs"], check=False)


@pytest.fixture
def webhook():
    srv = ContainerSSHServer()
    yield srv
    srv.close()


def test_a_group_or_the_config_webhook_chooses_the_mode(ws, devs, webhook):
    ws.reconfigure(dict(FAST_REAPER, groups={devs: {"session": {"mode": "persistent"}}},
                        config_webhook={"url": f"{webhook.url}/config", "timeout": "3s"}))

    def kept(user) -> bool:
        assert ws.ssh(user, "echo kept > /root/note").returncode == 0
        return ws.ssh(user, "cat /root/note").stdout == b"kept\n"
    # bob by his group; alice, with no webhook answer, by the file (session)
    assert kept("bob") and workspace(ws, "bob")["labels"]["io.hatchway.mode"] == "persistent"
    assert not kept("alice")
    ws.wait_no_containers(timeout=30, user="alice", mode="session")
    # alice by the webhook's ContainerSSH answer, from her next login on
    webhook.configs["alice"] = {"docker": {"execution": {"mode": "persistent"}}}
    assert kept("alice") and workspace(ws)["labels"]["io.hatchway.mode"] == "persistent"


# ------------------------------------------------------------------ faults

def _shell_pid(user: str) -> int:
    return int(run(["pgrep", "-n", "-u", user, "-f", "hatchway-shell"]).stdout)


def _session_process(ctr: dict) -> int:
    [entry] = recorded(ctr)
    return token_pid(entry["token"])


def _sshd_of(pid: int) -> int:
    """The sshd process above `pid` (the user's shell may sit in between)."""
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
            return pid
    raise AssertionError("no sshd above hatchway-shell")


@pytest.mark.parametrize("victim", ["client", "sshd", "hatchway-shell", "session process",
                                    "daemon and session process"])
@pytest.mark.parametrize("mode", MODES)
def test_kill_9_anywhere_leaves_nothing_of_the_session(ws, mode, victim):
    a = started(ws, "alice", "echo ready; exec sleep 1005")
    ctr = workspace(ws, mode=mode)
    shell = _shell_pid("alice")
    if victim == "client":
        os.kill(a.pid, signal.SIGKILL)
    elif victim == "sshd":              # the connection's sshd, the one serving the session
        os.kill(_sshd_of(shell), signal.SIGKILL)
    elif victim == "hatchway-shell":
        os.kill(shell, signal.SIGKILL)
    elif victim == "session process":
        os.kill(_session_process(ctr), signal.SIGKILL)
    else:
        ws.stop_daemon(signal.SIGKILL)
        os.kill(_session_process(ctr), signal.SIGKILL)
        ws.start_daemon()
    a.communicate(timeout=60)
    wait_for(lambda: not Path(f"/proc/{shell}").exists(), 30, 0.2,
             what="hatchway-shell to end")
    if mode == "connection":            # its connection has gone: so has its container
        ws.wait_no_containers(timeout=30, user="alice")
        return
    wait_for(lambda: "sleep 1005" not in processes(ctr), 30, 0.2,
             what="the session's command to be killed")
    wait_for(lambda: not recorded(ctr), 30, 0.2, what="the session's record to go")
    assert workspace(ws)["ID"] == ctr["ID"]           # the workspace itself stays


# ------------------------------------------------------------------ connection

class Master:
    """An OpenSSH ControlMaster connection (no session of its own): sessions
    started with `argv()` are multiplexed over it."""

    def __init__(self, hw, name="m"):
        self.hw = hw
        self.path = os.path.join(tempfile.mkdtemp(prefix="hw-"), f"{name}.ctl")  # sun_path: short
        self.opts = ("-o", f"ControlPath={self.path}")
        self.proc = subprocess.Popen(hw.ssh_argv("alice", options=(
            "-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N", *self.opts)),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: os.path.exists(self.path), 20, what="the control socket")

    def argv(self, command):
        return self.hw.ssh_argv("alice", command, options=("-o", "ControlMaster=no",
                                                           *self.opts))

    def ssh(self, command, **kw):
        return subprocess.run(self.argv(command), capture_output=True, timeout=120,
                              stdin=subprocess.DEVNULL, **kw)

    def exit(self):
        self.proc.terminate()
        self.proc.wait(30)


@pytest.mark.config(CONNECTION)
def test_sessions_over_one_connection_share_a_container_and_another_gets_its_own(ws):
    m1, m2 = Master(ws, "one"), Master(ws, "two")
    held = []
    try:
        # a long session on each keeps its container while the test looks
        for m, n in ((m1, 1006), (m2, 1007)):
            held.append(subprocess.Popen(m.argv(f"echo ready; exec sleep {n}"),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE))
            assert held[-1].stdout.readline() == b"ready\n"
        mine = m1.ssh("hostname; ps -o args")
        assert b"sleep 1006" in mine.stdout and b"sleep 1007" not in mine.stdout, mine.stderr
        other = m2.ssh("hostname; ps -o args")
        assert b"sleep 1007" in other.stdout and b"sleep 1006" not in other.stdout
        assert mine.stdout.split()[0] != other.stdout.split()[0]
        found = ws.containers(user="alice", mode="connection")
        assert len(found) == 2 and len({c["Labels"] for c in found}) == 2
        m1.exit()
        # the first master has gone: its container goes, the other connection's stays
        wait_for(lambda: len(ws.containers(user="alice")) == 1, 30, 0.2,
                 what="the first connection's container to go")
        assert m2.ssh("hostname").stdout.split()[0] == other.stdout.split()[0]
    finally:
        for p in held:
            p.kill()
            p.wait()
        m1.exit()
        m2.exit()
    ws.wait_no_containers(timeout=30, user="alice")


@pytest.mark.config(dict(CONNECTION, workspace={"connection_grace": "1h"}))
def test_a_connection_keeps_its_container_between_sessions_until_it_ends(ws):
    m = Master(ws)
    try:
        assert m.ssh("echo one > /tmp/x").returncode == 0
        # a new session within the grace finds what the last one left
        assert m.ssh("cat /tmp/x").stdout == b"one\n"
        assert len(ws.containers(user="alice", mode="connection")) == 1
    finally:
        m.exit()
    ws.wait_no_containers(timeout=30, user="alice")


# ------------------------------------------------------------------ session guarantees, as execs



@pytest.mark.parametrize("mode", MODES)
def test_exit_statuses_and_death_by_signal(ws, mode):
    for command, code in (("exit 0", 0), ("exit 42", 42), ("exit 255", 255),
                          ("kill -HUP $$", 129), ("kill -KILL $$", 137), ("kill -TERM $$", 143),
                          ("exec /no/such", 127)):
        assert ws.ssh("alice", command).returncode == code, command
    p = ws.ssh("alice", "echo out; echo err >&2; exit 7")
    assert (p.returncode, p.stdout, p.stderr) == (7, b"out\n", b"err\n")


@pytest.mark.parametrize("mode", MODES)
def test_stdin_eof_keeps_the_command_running_and_bytes_are_exact(ws, mode):
    p = ws.ssh("alice", "cat; sleep 1; echo done", input=b"a\nb\n")
    assert (p.returncode, p.stdout) == (0, b"a\nb\ndone\n"), p.stderr
    data = os.urandom(8 << 20) + bytes(range(256))
    p = ws.ssh("alice", "cat", input=data)
    assert p.returncode == 0 and hashlib.sha256(p.stdout).digest() == \
        hashlib.sha256(data).digest()
    assert ws.ssh("alice", "printf '\\000\\200\\377'").stdout == b"\x00\x80\xff"


@pytest.mark.parametrize("mode", MODES)
def test_terminal_size_resize_ctrl_c_and_exit_code(ws, mode):
    c = ws.spawn("alice", dimensions=(30, 100))
    c.expect(PROMPT)
    c.sendline("stty size")
    c.expect(r"30 100\r\n")
    c.expect(PROMPT)
    c.setwinsize(41, 132)
    # a resize is asynchronous: ask until the new size shows (bounded)
    for _ in range(20):
        c.sendline("stty size")
        if c.expect([r"41 132\r\n", r"\d+ \d+\r\n"]) == 0:
            break
        c.expect(PROMPT)
    else:
        raise AssertionError("the new size never arrived")
    c.expect(PROMPT)
    c.sendline("sleep 30; echo slept")
    c.expect_exact("sleep 30; echo slept\r\n")       # the terminal's echo of the line
    c.send("\x03")
    c.expect(PROMPT)
    assert b"slept" not in c.before
    c.sendline("exit 3")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 3


@pytest.mark.parametrize("mode", MODES)
def test_term_reaching_hatchway_shell_is_forwarded(ws, mode):
    a = started(ws, "alice", "trap 'echo got TERM; exit 3' TERM; echo ready; "
                             "while :; do sleep 0.1; done")
    os.kill(_shell_pid("alice"), signal.SIGTERM)
    out, _ = a.communicate(timeout=60)
    assert (a.returncode, out) == (3, b"got TERM\n")


@pytest.mark.config(dict(PERSISTENT, docker={"user": "65534", "cap_drop": ["ALL"]}))
def test_without_capabilities_a_session_still_ends_what_it_left(ws):
    # root without CAP_KILL cannot signal user 65534's processes: the sweep
    # runs as the session's user then
    p = ws.ssh("alice", "id -u; sleep 1012 >/dev/null 2>&1 & echo started")
    assert p.stdout == b"65534\nstarted\n", p.stderr
    ctr = workspace(ws)
    wait_for(lambda: "sleep 1012" not in processes(ctr), 30, 0.2, what="the job to be killed")


@pytest.mark.config(PERSISTENT)
def test_what_a_session_left_running_ends_with_it_unless_it_left_the_session(ws):
    # on a host, a logout ends the session's jobs; what started a session of
    # its own (a daemon, tmux) stays
    p = ws.ssh("alice", "sleep 1007 >/dev/null 2>&1 & setsid sleep 1008 >/dev/null 2>&1 & "
                        "echo started")
    assert p.stdout == b"started\n"
    ctr = workspace(ws)
    wait_for(lambda: "sleep 1007" not in processes(ctr), 30, 0.2, what="the job to be killed")
    assert "sleep 1008" in processes(ctr)
