"""The Docker warm pool (docker.warm_pool: N): the daemon's keeper process
(hwd-pool) holds N spare containers running; a session-mode login that may
use one claims the oldest, runs its command as an exec in it, and the
container is removed when the session ends, never reused.  All through the
real stack: sshd, hatchwayd, dockerd, `hatchway sessions|gc`.

Which container a session ran in is told by its hostname: Docker's default
hostname is the first 12 hex digits of the container's id (no
docker.hostname is configured here).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import pexpect
import pytest

from .engine import daemon_own, session_pids
from .stack import HOST_ID, run, token_pid, wait_for

POOL = 2
PROMPT = r"[#$] "
SPARE_NAME = re.compile(r"hatchway-pool-[0-9a-f]{12}")
# docker.idle_command's default (backends/docker/settings.py): what a spare runs
IDLE_COMMAND = ["/bin/sh", "-c", "while :; do sleep 3600; done"]
# bounds for things that happen within about a second; never asserted on
SETTLE = 30


# ------------------------------------------------------------------ helpers

def _all(stack) -> list[dict]:
    """Every managed container of this host (spares, claimed spares, sessions),
    with its labels parsed."""
    found = stack.containers()
    for c in found:
        c["labels"] = dict(kv.split("=", 1) for kv in c["Labels"].split(",") if "=" in kv)
    return found


def _is_spare(c: dict) -> bool:
    """An unclaimed spare: a pool container still under its pool name (a
    claimed one is renamed to its session's name)."""
    return "io.hatchway.pool" in c["labels"] and c["Names"].startswith("hatchway-pool-")


def spares(stack) -> list[dict]:
    return [c for c in _all(stack) if _is_spare(c)]


def others(stack) -> list[dict]:
    """Managed containers that are not unclaimed spares: sessions' containers,
    claimed spares included."""
    return [c for c in _all(stack) if not _is_spare(c)]


def wait_spares(stack, n: int = POOL, without: tuple = ()) -> list[dict]:
    """Wait until exactly `n` spares are up and running, all of them the
    running daemon's keeper's, none of them one of the container ids in
    `without`; the spares.  (Right after a restart the old keeper is still
    removing its own: a set taken then held one of them, which went a moment
    later, and a fresh-clone CI run failed on it.)"""
    def ready():
        s = spares(stack)
        main = daemon_own()
        ok = len(s) == n and all(c["State"] == "running" for c in s) \
            and not any(c["ID"] in without for c in s) \
            and all(_parent(token_pid(c["labels"]["io.hatchway.process"])) in main for c in s)
        return s if ok else None
    try:
        return wait_for(ready, SETTLE, 0.1, what=f"{n} spare containers")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; managed containers now: "
                           f"{[(c['Names'], c['State']) for c in _all(stack)]}") from None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def short(c: dict) -> str:
    """The container's default hostname: its id's first 12 hex digits."""
    return c["ID"][:12]


def created(ids: list[str]) -> dict[str, tuple[str, str]]:
    """Each container's creation time, sortable: docker prints RFC 3339 with
    the fraction's trailing zeros cut, which does not sort as text."""
    out = {}
    for line in run(["docker", "inspect", "-f", "{{.Id}} {{.Created}}", *ids]).stdout.split("\n"):
        if line.strip():
            cid, when = line.split()
            whole, _, frac = when.rstrip("Z").partition(".")
            out[cid] = (whole, frac.ljust(9, "0"))
    return out


def gone(cid: str) -> bool:
    return run(["docker", "inspect", cid], check=False).returncode != 0


def sessions_list() -> list[dict]:
    return json.loads(run(["hatchway", "sessions", "list", "--json"]).stdout)


def comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def dead(pid: int) -> bool:
    """Exited (gone, or a zombie its parent has not waited for yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def pool(stack):
    """The stack with a warm pool of 2 (`hw`'s leak check would count the
    spares as leaks, so this module keeps its own)."""
    stack.reconfigure({"docker": {"warm_pool": POOL}})
    try:
        wait_spares(stack)
        yield stack
    finally:
        stack.reconfigure(None)
        # with the pool off, the daemon removes its unclaimed spares
        stack.wait_no_containers(timeout=SETTLE)


@pytest.fixture
def pw(pool):
    """The pool, full and with no session running, before and after each test:
    a container a test leaves behind (claimed or not) fails that test."""
    pool.reconfigure({"docker": {"warm_pool": POOL}})   # (a no-op unless a test changed it)
    wait_for(lambda: not others(pool), SETTLE, 0.1, what="no session containers")
    wait_spares(pool)
    yield pool
    try:
        wait_for(lambda: not others(pool), SETTLE, 0.1,
                 what="every session's container to be removed")
    except TimeoutError as e:
        raise TimeoutError(f"{e}: {[c['Names'] for c in others(pool)]}") from None
    wait_spares(pool)


# ------------------------------------------------------------------ the spares

def test_the_spares_are_as_documented(pw):
    found = wait_spares(pw)
    assert all(SPARE_NAME.fullmatch(c["Names"]) for c in found), [c["Names"] for c in found]
    keys = {c["labels"].get("io.hatchway.pool") for c in found}
    assert len(keys) == 1 and re.fullmatch(r"[0-9a-f]{16}", keys.pop() or ""), keys
    for c in found:
        lab = c["labels"]
        assert lab["io.hatchway.managed"] == "true" and lab["io.hatchway.host"] == HOST_ID
        assert "io.hatchway.user" not in lab, lab          # nobody's yet
        # owned by the daemon's pool keeper, alive
        assert comm(token_pid(lab["io.hatchway.process"])) == "hwd-pool", lab
        cmd = json.loads(run(["docker", "inspect", "-f", "{{json .Config.Cmd}}",
                              c["ID"]]).stdout)
        assert cmd == IDLE_COMMAND, cmd
    # and they are no one's session: hatchway's own view lists none of them
    assert sessions_list() == []


# ------------------------------------------------------------------ 1. a login in a spare

def test_a_login_runs_in_a_former_spare_which_is_removed_after(pw):
    before = wait_spares(pw)
    p = pw.ssh("alice", "hostname")
    assert p.returncode == 0, p.stderr
    host = p.stdout.decode().strip()
    assert host in {short(c) for c in before}, (host, [short(c) for c in before])
    [used] = [c["ID"] for c in before if short(c) == host]
    # the used container is removed, never reused; the keeper refills the pool
    wait_for(lambda: gone(used), SETTLE, 0.1, what="the used spare to be removed")
    after = wait_spares(pw, without=(used,))
    assert used not in {c["ID"] for c in after}


def test_the_oldest_spare_is_claimed_first(pw):
    first = {c["ID"] for c in wait_spares(pw)}
    # spares a second apart at least (the engine's container list gives
    # creation times in whole seconds): one of the first two is claimed, the
    # keeper makes a new one; the remaining first one is then the oldest
    time.sleep(1.1)
    p = pw.ssh("alice", "hostname")
    host = p.stdout.decode().strip()
    assert p.returncode == 0 and host in {c[:12] for c in first}, (p.stderr, host)
    now = wait_spares(pw, without=tuple(c for c in first if c[:12] == host))
    by_age = created([c["ID"] for c in now])
    oldest = min(now, key=lambda c: by_age[c["ID"]])
    assert oldest["ID"] in first
    p = pw.ssh("alice", "hostname")
    assert p.stdout.decode().strip() == short(oldest), ([short(c) for c in now], p.stdout)


def _in_a_spare(pw, command: str, input: bytes | None = None) -> tuple:
    """Run `command` as alice, its hostname on stderr's first line; check it
    ran in one of the spares up before it: (result, stderr without that line)."""
    ids = {short(c) for c in wait_spares(pw)}
    p = pw.ssh("alice", f"hostname >&2; {command}", input=input)
    host, _, err = p.stderr.partition(b"\n")
    assert host.decode() in ids, (host, ids, p.stderr)
    return p, err


def test_exit_status_streams_and_environment_in_a_spare(pw):
    p, err = _in_a_spare(pw, "echo out; echo err >&2; echo out2; exit 42")
    assert (p.returncode, p.stdout, err) == (42, b"out\nout2\n", b"err\n")
    p, err = _in_a_spare(pw, "kill -TERM $$")
    assert p.returncode == 143, err          # death by signal 15: 128 + 15
    # the client's allowlisted environment reaches the exec, the rest does not
    env = dict(os.environ, LANG="C.UTF-8", LC_TIME="POSIX", FOO="bar")
    ids = {short(c) for c in wait_spares(pw)}
    argv = pw.ssh_argv("alice", "hostname; env", options=("-o", "SendEnv=LANG LC_* FOO"))
    q = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert q.returncode == 0, q.stderr
    host, *lines = q.stdout.decode().splitlines()
    assert host in ids
    got = dict(line.split("=", 1) for line in lines if "=" in line)
    assert (got.get("LANG"), got.get("LC_TIME")) == ("C.UTF-8", "POSIX"), got
    assert "FOO" not in got and "SSH_CONNECTION" not in got, got


def test_one_mb_of_random_stdin_comes_back_byte_exact(pw):
    data = os.urandom(1 << 20)
    p, err = _in_a_spare(pw, "cat", input=data)
    assert p.returncode == 0, err
    assert len(p.stdout) == len(data) and p.stdout == data
    # stdin's EOF reached the command (cat ended) and the status came after it
    p, err = _in_a_spare(pw, "wc -c; exit 7", input=data)
    assert (p.returncode, p.stdout.strip()) == (7, str(1 << 20).encode()), err


# ------------------------------------------------------------------ who may not use a spare

GROUP = "hw-pool-limited"


@pytest.fixture
def limited_group(pw):
    """bob in a group whose `groups:` entry changes his docker settings."""
    run(["groupadd", "-f", GROUP])
    run(["usermod", "-aG", GROUP, "bob"])
    try:
        pw.reconfigure({"docker": {"warm_pool": POOL},
                        "groups": {GROUP: {"docker": {"pids_limit": 77}}}})
        yield GROUP
    finally:
        run(["gpasswd", "-d", "bob", GROUP], check=False)
        run(["groupdel", GROUP], check=False)
        pw.reconfigure({"docker": {"warm_pool": POOL}})


def test_a_login_with_other_settings_gets_a_container_of_its_own(pw, limited_group):
    # a spare is made from the file's docker settings: bob's differ (his
    # group's pids_limit), so a spare would run him without his limit
    before = {c["ID"] for c in wait_spares(pw)}
    p = subprocess.Popen(pw.ssh_argv("bob", 'echo "host=$(hostname)"; exec sleep 1000'),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        line = p.stdout.readline().decode().strip()
        assert line.startswith("host="), (line, p.stderr.read() if p.poll() is not None else "")
        ctr = pw.one_container(user="bob")
        assert line[5:] == short(ctr) and ctr["ID"] not in before, (line, before)
        info = json.loads(run(["docker", "inspect", ctr["ID"]]).stdout)[0]
        assert info["HostConfig"]["PidsLimit"] == 77
        assert {c["ID"] for c in spares(pw)} == before          # no spare was claimed
        # while alice, who has the file's settings, still gets one
        q, err = _in_a_spare(pw, "exit 4")
        assert q.returncode == 4, err
    finally:
        p.kill()
        p.wait()


# ------------------------------------------------------------------ 2. a pty in a spare

def test_a_pty_session_in_a_spare(pw):
    ids = {short(c) for c in wait_spares(pw)}
    c = pw.spawn("alice", dimensions=(31, 97), env=dict(os.environ, TERM="vt220"))
    try:
        c.expect(PROMPT)
        # (the typed line is echoed: the patterns match only the output)
        c.sendline("echo H=$(hostname) S=$(stty size) T=$TERM")
        c.expect(r"H=(\S+) S=(\d+) (\d+) T=(\S+)\r\n")
        host, rows, cols, term = (g.decode() for g in c.match.groups())
        assert host in ids, (host, ids)
        # the size is right from the first command on, not only after a resize
        assert (rows, cols, term) == ("31", "97", "vt220")
        c.expect(PROMPT)
        c.setwinsize(40, 120)
        # the window-change travels apart from the typed line: ask until it is there
        for _ in range(100):
            c.sendline("echo Z=$(stty size)")
            c.expect(r"Z=(\d+ \d+)\r\n")
            if c.match.group(1) == b"40 120":
                break
            c.expect(PROMPT)
            time.sleep(0.1)
        assert c.match.group(1) == b"40 120"
        c.sendline("exit 3")
        c.expect(pexpect.EOF)
        c.close()
        assert c.exitstatus == 3, (c.exitstatus, c.signalstatus)
    finally:
        c.close(force=True)


# ------------------------------------------------------------------ 3. concurrent logins

def test_concurrent_logins_each_get_their_own_container(pw):
    ids = {short(c) for c in wait_spares(pw)}
    # each session says where it runs, then waits for a line on stdin
    script = 'echo "host=$(hostname)"; read x; echo "got=$x"'
    procs = []

    def start():
        p = subprocess.Popen(pw.ssh_argv("alice", script), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(p)
        return p

    def host_of(p) -> str:
        line = p.stdout.readline()
        assert line.startswith(b"host="), (line, p.stderr.read() if p.poll() is not None else "")
        return line.decode().strip().split("=", 1)[1]

    try:
        # two at once, as the pool holds two: both claim a spare, not the same one
        pair: list = []
        threads = [threading.Thread(target=lambda: pair.append(start())) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        hosts = [host_of(p) for p in pair]
        assert len(set(hosts)) == 2, hosts
        assert set(hosts) <= ids, (hosts, ids)
        # a third while both are live (a refilled spare or a container of its own)
        third = start()
        hosts.append(host_of(third))
        assert len(set(hosts)) == 3, hosts
        live = {short(c) for c in others(pw)}
        assert set(hosts) <= live, (hosts, live)
        for i, p in enumerate(procs):
            out, err = p.communicate(f"line{i}\n".encode(), timeout=60)
            assert (p.returncode, out) == (0, f"got=line{i}\n".encode()), err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ------------------------------------------------------------------ 4. hatchway sessions

def _hold(pw, ids: set[str]) -> tuple[subprocess.Popen, dict]:
    """A session of alice that stays until the test ends it, in one of the
    spares `ids`; (its client, its container)."""
    p = subprocess.Popen(pw.ssh_argv("alice", 'echo "host=$(hostname)"; exec sleep 1000'),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    line = p.stdout.readline().decode().strip()
    assert line.startswith("host="), (line, p.stderr.read() if p.poll() is not None else "")
    host = line.split("=", 1)[1]
    assert host in ids, (host, ids)
    [ctr] = [c for c in _all(pw) if short(c) == host]
    return p, ctr


def _live_row(user: str) -> dict:
    rows = wait_for(lambda: [r for r in sessions_list() if r["state"] == "live"
                             and r["user"] == user], SETTLE, 0.2,
                    what=f"{user}'s live session in `hatchway sessions list`")
    assert len(rows) == 1, rows
    return rows[0]


def test_sessions_lists_the_claimed_spare_as_alices_and_not_the_spares(pw):
    p, ctr = _hold(pw, {short(c) for c in wait_spares(pw)})
    try:
        # the keeper has refilled: two unclaimed spares beside alice's
        spare_ids = {c["ID"] for c in wait_spares(pw, without=(ctr["ID"],))}
        row = _live_row("alice")
        # claimed: renamed to the usual session name
        claimed = [c for c in _all(pw) if c["ID"] == ctr["ID"]]
        assert claimed and claimed[0]["Names"] == f"hatchway-alice-{row['id'][:12]}", \
            (claimed, row)
        assert row["container"] and ctr["ID"].startswith(row["container"]) or row["container"] == \
            claimed[0]["Names"][:30], (row, ctr["ID"])
        rows = sessions_list()
        assert [r["id"] for r in rows] == [row["id"]], rows       # nothing else is a session
        for r in rows:
            assert not any(s.startswith(r["container"]) for s in spare_ids), (r, spare_ids)
        table = run(["hatchway", "sessions", "list"]).stdout
        assert "alice" in table and "hatchway-pool-" not in table, table
        assert not any(s[:12] in table for s in spare_ids), table
    finally:
        p.kill()
        p.wait()
    # the client's end ends the session: the claimed spare goes
    wait_for(lambda: gone(ctr["ID"]), SETTLE, 0.1, what="the claimed spare to be removed")


# ------------------------------------------------------------------ 5. gc after kill -9

def test_gc_removes_a_claimed_spare_whose_session_process_was_killed(pw):
    before = session_pids()
    p, ctr = _hold(pw, {short(c) for c in wait_spares(pw)})
    try:
        row = _live_row("alice")
        pid = int(row["pid"])
        assert comm(pid) == "hwd-session" and pid in session_pids() - before, (pid, before)
        spare_ids = {c["ID"] for c in wait_spares(pw, without=(ctr["ID"],))}
        os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=60)       # the client's ssh ends
        assert p.returncode == 255, err
        assert b"hatchway: the session ended without an exit status" in err
        wait_for(lambda: dead(pid), SETTLE, 0.1, what="the session process to be gone")
        g = run(["hatchway", "gc"], check=False)
        assert g.returncode == 0, g.stderr
        wait_for(lambda: gone(ctr["ID"]), SETTLE, 0.1,
                 what=f"gc to remove the claimed spare (gc said {g.stdout!r})")
        # spares whose keeper lives are nobody's orphans: gc left them
        assert {c["ID"] for c in spares(pw)} == spare_ids, g.stdout
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_gc_alone_removes_what_a_killed_daemon_left(pw):
    # The daemon's main process (which reaps when a session process dies) and
    # its keeper (which prunes spares of dead keepers) are both killed: only
    # `hatchway gc` can remove the claimed spare and the spares after that.
    p, ctr = _hold(pw, {short(c) for c in wait_spares(pw)})
    try:
        pid = int(_live_row("alice")["pid"])
        left = wait_spares(pw, without=(ctr["ID"],))
        keeper = token_pid(left[0]["labels"]["io.hatchway.process"])
        pw.stop_daemon(signal.SIGKILL)
        os.kill(keeper, signal.SIGKILL)         # before it sees its parent gone
        os.kill(pid, signal.SIGKILL)
        p.communicate(timeout=60)
        for gone_pid in (keeper, pid):
            wait_for(lambda: dead(gone_pid), SETTLE, 0.1, what=f"process {gone_pid} to end")
        # nothing runs that would remove them: all three are still there
        assert {c["ID"] for c in _all(pw)} == {ctr["ID"]} | {c["ID"] for c in left}
        g = run(["hatchway", "gc"], check=False)
        assert g.returncode == 0, g.stderr
        assert g.stdout.startswith("removed 3 orphaned container(s)"), g.stdout
        assert _all(pw) == [], [c["Names"] for c in _all(pw)]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if "daemon" not in pw.procs:
            pw.start_daemon()
    wait_spares(pw)


def test_spares_of_a_dead_keeper_are_removed_and_the_pool_comes_back(pw):
    old = wait_spares(pw)
    keeper = token_pid(old[0]["labels"]["io.hatchway.process"])
    assert comm(keeper) == "hwd-pool"
    os.kill(keeper, signal.SIGKILL)
    wait_for(lambda: dead(keeper), SETTLE, 0.1, what="the keeper to be gone")
    g = run(["hatchway", "gc"], check=False)
    assert g.returncode == 0, g.stderr
    old_ids = tuple(c["ID"] for c in old)
    wait_for(lambda: all(gone(i) for i in old_ids), SETTLE, 0.1,
             what=f"the dead keeper's spares to be removed (gc said {g.stdout!r})")
    # the daemon forks a new keeper, which fills the pool again
    new = wait_spares(pw, without=old_ids)
    for c in new:
        owner = token_pid(c["labels"]["io.hatchway.process"])
        assert owner != keeper and comm(owner) == "hwd-pool", c["labels"]
    # and logins use it
    p, _ = _in_a_spare(pw, "true")
    assert p.returncode == 0


# ------------------------------------------------------------------ 6. off again

def test_stopping_the_daemon_removes_the_spares_but_not_a_live_session(pw):
    # a session in a spare outlives the daemon's restart, as any session does
    ids = {short(c) for c in wait_spares(pw)}
    p = subprocess.Popen(pw.ssh_argv("alice", 'echo "host=$(hostname)"; read x; echo "got=$x"'),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = p.stdout.readline().decode().strip()
        assert line.startswith("host=") and line[5:] in ids, (line, ids)
        claimed = line[5:]
        wait_spares(pw, without=tuple(c["ID"] for c in _all(pw) if short(c) == claimed))
        pw.stop_daemon()
        # only the claimed one is left: the unclaimed spares went with the daemon
        wait_for(lambda: not spares(pw), SETTLE, 0.1, what="the spares to be removed")
        assert [short(c) for c in _all(pw)] == [claimed]
        pw.start_daemon()
        wait_spares(pw)
        out, err = p.communicate(b"still\n", timeout=60)
        assert (p.returncode, out) == (0, b"got=still\n"), err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if "daemon" not in pw.procs:
            pw.start_daemon()


def test_warm_pool_0_removes_the_spares(pw):
    old = tuple(c["ID"] for c in wait_spares(pw))
    pw.reconfigure({"docker": {"warm_pool": 0}})
    wait_for(lambda: not _all(pw), SETTLE, 0.1, what="the spares to be removed")
    assert all(gone(i) for i in old)
    # sessions start as before, in a container of their own that goes after
    p = pw.ssh("alice", "hostname; exit 5")
    assert p.returncode == 5, p.stderr
    assert p.stdout.decode().strip() not in {i[:12] for i in old}
    wait_for(lambda: not _all(pw), SETTLE, 0.1, what="the session's container to be removed")
    assert not spares(pw)           # and no spare was made meanwhile
    pw.reconfigure({"docker": {"warm_pool": POOL}})
    wait_spares(pw, without=old)
