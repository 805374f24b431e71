"""backends/workspaces.py: names, the host record of who uses a workspace,
its lock, and what the reaper does with workspaces (`tend`), against real
processes and a FAKE backend that only records what it is asked to do."""

import multiprocessing
import os
import subprocess

import pytest

from hatchway.backends import labels as L
from hatchway.backends import workspaces as W
from hatchway.backends.base import Backend, Found
from hatchway.core import config


def test_names_are_valid_pod_names_and_tell_users_apart():
    names = {W.name_for("persistent", u) for u in ("alice", "Alice", "a.lice", "a_lice")}
    assert len(names) == 4
    for n in names | {W.name_for("connection", "Alice.X", "0123456789abcdef0123")}:
        assert len(n) <= 63 and n == n.lower() and all(c.isalnum() or c == "-" for c in n)
    assert W.name_for("persistent", "alice") == W.name_for("persistent", "alice")
    assert W.name_for("connection", "bob", "ab" * 16) == "hatchway-cn-bob-" + "ab" * 8


def dead_token() -> str:
    p = subprocess.Popen(["true"])
    token = L.process_token(p.pid)
    p.wait()
    return token


def test_sessions_are_live_while_their_process_is(tmp_path):
    rec = W.Record("hatchway-ws-a-1", str(tmp_path))
    with rec.lock():
        rec.attach("aa", L.process_token(os.getpid()), kind="shell")
        rec.attach("bb", dead_token())
    assert [s["session"] for s in rec.live()] == ["aa"]
    assert {s["session"]: s["alive"] for s in rec.sessions()} == {"aa": True, "bb": False}
    assert rec.meta()["idle_since"] is None
    rec.update("aa", pid=7, start=123)
    assert rec.live()[0]["pid"] == 7
    assert rec.detach("aa") == 0
    assert isinstance(rec.meta()["idle_since"], float)     # the last one out starts the clock
    rec.forget()
    assert rec.sessions() == [] and rec.meta() == {}
    assert sorted(os.listdir(tmp_path)) == ["hatchway-ws-a-1.lock"]


def _hold(root, name, ready, release):
    with W.Record(name, root).lock():
        ready.set()
        release.wait(10)


def test_the_lock_is_exclusive_across_processes(tmp_path):
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    p = multiprocessing.Process(target=_hold, args=(str(tmp_path), "hatchway-ws-x-1", ready,
                                                    release))
    p.start()
    assert ready.wait(10)
    rec = W.Record("hatchway-ws-x-1", str(tmp_path))
    with rec.lock(wait=False) as got:
        assert got is False
    release.set()
    p.join(10)
    with rec.lock(wait=False) as got:
        assert got is True


def test_names_that_could_escape_the_directory_are_refused(tmp_path):
    for bad in ("../x", "a/b", "", "X"):
        with pytest.raises(ValueError):
            W.Record(bad, str(tmp_path))
    rec = W.Record("hatchway-ws-a-1", str(tmp_path))
    with pytest.raises(ValueError):
        rec.update("../../etc", pid=1)


class FakeBackend:
    """Records what tend asks of it."""
    keeps_stopped = True

    def __init__(self):
        self.calls = []

    def remove(self, f):
        self.calls.append(("remove", f.name))
        return True

    def stop(self, f):
        self.calls.append(("stop", f.name))
        return True

    def kill_session(self, f, pid, start):
        self.calls.append(("kill", f.name, pid, start))
        return True


def ws(mode, name, running=True, going=False):
    return Found(name, {L.MODE: mode, L.WORKSPACE: name, L.USER: "alice"},
                 "running" if running else "exited", going=going, running=running)


DEFAULTS = config.typed(config.defaults()).workspace      # idle 1h, grace 2s, never removed


def test_what_a_dead_session_left_is_killed_and_its_record_dropped(tmp_path):
    b, root = FakeBackend(), str(tmp_path)
    rec = W.Record("hatchway-ws-a-1", root)
    with rec.lock():
        rec.attach("aa", L.process_token(os.getpid()))
        rec.attach("bb", dead_token(), pid=42, start=9)
    rec.update("bb", pid=42, start=9)
    done = W.tend(b, [ws("persistent", rec.name)], root, DEFAULTS)
    assert b.calls == [("kill", rec.name, 42, 9)] and len(done) == 1
    assert [s["session"] for s in rec.sessions()] == ["aa"]


def test_a_persistent_workspace_is_stopped_when_idle_and_removed_when_expired(tmp_path):
    b, root = FakeBackend(), str(tmp_path)
    rec = W.Record("hatchway-ws-a-1", root)
    rec.set_meta(idle_since=1000.0, idle_timeout=60, remove_after=3600)
    W.tend(b, [ws("persistent", rec.name)], root, DEFAULTS, now=1059)
    assert b.calls == []
    W.tend(b, [ws("persistent", rec.name)], root, DEFAULTS, now=1060)
    assert b.calls == [("stop", rec.name)] and rec.meta()["stopped_at"] == 1060
    W.tend(b, [ws("persistent", rec.name, running=False)], root, DEFAULTS, now=4659)
    assert b.calls == [("stop", rec.name)]
    W.tend(b, [ws("persistent", rec.name, running=False)], root, DEFAULTS, now=4660)
    assert b.calls[-1] == ("remove", rec.name) and rec.meta() == {}


def test_a_workspace_in_use_or_being_attached_is_left_alone(tmp_path):
    b, root = FakeBackend(), str(tmp_path)
    rec = W.Record("hatchway-cn-a-1", root)
    with rec.lock():
        rec.attach("aa", L.process_token(os.getpid()))
    rec.set_meta(idle_since=0.0, connection_grace=0)
    W.tend(b, [ws("connection", rec.name)], root, DEFAULTS, now=10**9)
    assert b.calls == []
    rec.drop("aa")
    with rec.lock():                    # a session is being attached right now
        W.tend(b, [ws("connection", rec.name)], root, DEFAULTS, now=10**9)
    assert b.calls == []
    W.tend(b, [ws("connection", rec.name)], root, DEFAULTS, now=10**9)
    assert b.calls == [("remove", rec.name)]


def test_a_connection_workspace_goes_after_the_grace_or_with_its_connection(tmp_path):
    b, root = FakeBackend(), str(tmp_path)
    rec = W.Record("hatchway-cn-a-1", root)
    me = L.process_token(os.getpid())
    rec.set_meta(idle_since=100.0, connection_grace=5, sshd=me)
    W.tend(b, [ws("connection", rec.name)], root, DEFAULTS, now=104)
    assert b.calls == []                # its connection lives and the grace runs
    W.tend(b, [ws("connection", rec.name)], root, DEFAULTS, now=105)
    assert b.calls == [("remove", rec.name)]
    rec.set_meta(idle_since=100.0, connection_grace=5, sshd=dead_token())
    W.tend(b, [ws("connection", rec.name)], root, DEFAULTS, now=101)
    assert b.calls[-1] == ("remove", rec.name)


def test_a_record_without_a_workspace_is_dropped(tmp_path):
    b, root = FakeBackend(), str(tmp_path)
    rec = W.Record("hatchway-ws-gone-1", root)
    rec.set_meta(idle_since=1.0)
    W.tend(b, [], root, DEFAULTS)
    assert rec.meta() == {} and b.calls == []


def test_release_waits_for_the_grace_and_a_new_session_takes_over(tmp_path):
    rec = W.Record("hatchway-cn-a-1", str(tmp_path))
    removed = []
    assert W.release_connection(rec, 0.3, L.process_token(os.getpid()),
                                lambda: removed.append(1) or True)
    assert removed == [1]
    # (a grace of an hour: waiting it out would hang the test)
    with rec.lock():
        rec.attach("cc", L.process_token(os.getpid()))
    assert not W.release_connection(rec, 3600, L.process_token(os.getpid()), lambda: True)
    rec.drop("cc")                      # the connection has gone: no grace
    assert W.release_connection(rec, 3600, dead_token(), lambda: True)


class ListingBackend(FakeBackend):
    """A Backend (base.Backend's reap and tend_workspaces, the real ones)
    whose engine holds the containers in `found`."""

    def __init__(self, cfg, found):
        super().__init__()
        self.cfg = cfg
        self.found = found

    def list(self, user=None):
        return list(self.found)

    reap = Backend.reap
    tend_workspaces = Backend.tend_workspaces


def test_after_a_reboot_the_reaper_still_finds_the_orphans_of_every_mode(tmp_path):
    # A reboot empties /run: no record of any workspace, every session
    # process gone.  Orphaned session containers and connection workspaces
    # go at the next pass; a persistent workspace is no orphan (it is kept
    # between logins): its idle clock starts when first seen, by the file's
    # settings, and nothing of it is removed.
    (tmp_path / "run").mkdir()
    cfg = config.typed(config.validate({"daemon": {"socket": str(tmp_path / "run" / "s.sock")},
                                        "workspace": {"idle_timeout": "60s"}}))
    orphan = Found("c1", L.for_session("alice", "ab" * 8, "cd" * 8, "session", os.getpid()),
                   "running", running=True)
    orphan.labels[L.PROCESS] = dead_token()
    b = ListingBackend(cfg, [orphan, ws("connection", "hatchway-cn-alice-1"),
                             ws("persistent", "hatchway-ws-alice-1")])
    assert b.reap(L.owner_alive) == ["c1"]          # workspaces are not reap()'s
    b.tend_workspaces(now=1000)
    assert b.calls == [("remove", "c1"), ("remove", "hatchway-cn-alice-1")]
    b.found = b.found[2:]
    b.tend_workspaces(now=1059)
    assert b.calls[2:] == []
    b.tend_workspaces(now=1060)
    assert b.calls[2:] == [("stop", "hatchway-ws-alice-1")]


def test_the_reaper_never_touches_a_workspace_a_live_session_uses(tmp_path):
    (tmp_path / "run").mkdir()
    cfg = config.typed(config.validate({"daemon": {"socket": str(tmp_path / "run" / "s.sock")},
                                        "workspace": {"idle_timeout": "1s",
                                                      "connection_grace": "0s"}}))
    root = W.root_for(cfg)
    found = [ws("connection", "hatchway-cn-alice-1"), ws("persistent", "hatchway-ws-alice-1")]
    for f in found:
        rec = W.Record(f.name, root)
        with rec.lock():
            rec.attach("aa", L.process_token(os.getpid()))
        rec.set_meta(idle_since=0.0, sshd=dead_token())     # even with its connection gone
    b = ListingBackend(cfg, found)
    assert b.reap(lambda labels: False) == []
    for now in (10, 10**6, 10**9):
        assert b.tend_workspaces(now=now) == []
    assert b.calls == []


def test_signals_are_sent_as_root_unless_root_cannot_send_them():
    from hatchway.backends.docker.workspace import signal_user
    assert signal_user("", []) == "0"
    assert signal_user("1000", ["NET_RAW", "MKNOD"]) == "0"       # root has CAP_KILL
    # without CAP_KILL root reaches only root's processes; the sessions run as 1000
    assert signal_user("1000:1000", ["ALL"]) == "1000:1000"
    assert signal_user("dev", ["CAP_KILL"]) == "dev"
    assert signal_user("", ["ALL"]) == ""           # the image's user, as the sessions run
