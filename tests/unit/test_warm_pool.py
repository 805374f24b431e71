"""The warm pool's bookkeeping (backends/docker/pool.py): which logins may use a
spare, one spare per claim, the claim records the reaper and `hatchway
sessions` read, and what the keeper makes and removes.  The engine here is a
named fake (FakeEngine) that keeps containers in a dict: the e2e suite
(tests/e2e/test_warm_pool.py) runs the same against dockerd."""

import os

import pytest

from hatchway.backends import labels as L
from hatchway.backends.base import SessionSpec
from hatchway.backends.docker import pool
from hatchway.backends.docker.api import DockerError
from hatchway.backends.docker.backend import DockerBackend, container_spec
from hatchway.core import config

IMAGE_ID = "sha256:" + "1" * 64


def make_cfg(tmp_path, docker=None, session=None):
    c = config.defaults()
    c["docker"].update(config.validate({"warm_pool": 2, "network": "bridge", **(docker or {})},
                                       config.schema().fields["docker"], "docker"))
    c["session"].update(config.validate(session or {}, config.schema().fields["session"],
                                        "session"))
    c["daemon"]["socket"] = str(tmp_path / "hatchwayd.sock")
    return config.typed(c)


def spec_for(cfg, user="alice", sid="a" * 32, agent_dir=None, owner=None):
    s = SessionSpec(user=user, uid=1000, session_id=sid, connection_id="c1", kind="exec",
                    argv=["/bin/sh", "-c", "true"], pty=False, term=None, size=None, env={},
                    remote_address="127.0.0.1", config=cfg, agent_dir=agent_dir)
    s.labels = L.for_session(user, sid, "c1", "session", owner or os.getpid())
    return s


class FakeEngine:
    """A named fake of the few Engine API calls the pool makes."""

    def __init__(self):
        self.containers: dict[str, dict] = {}
        self.fail_rename: set[str] = set()
        self.n = 0

    def add(self, name, labels, state="running", image=IMAGE_ID):
        self.n += 1
        cid = f"{self.n:064x}"
        self.containers[cid] = {"Id": cid, "Names": ["/" + name], "Labels": dict(labels),
                                "State": state, "ImageID": image, "Created": self.n}
        return cid

    def list(self, filters, all_=True):
        def match(c):
            for f in filters:
                k, _, v = f.partition("=")
                if k not in c["Labels"] or ("=" in f and c["Labels"][k] != v):
                    return False
            return all_ or c["State"] == "running"
        return [dict(c) for c in self.containers.values() if match(c)]

    def rename(self, cid, name):
        if cid in self.fail_rename or cid not in self.containers:
            raise DockerError(404, "no such container")
        self.containers[cid]["Names"] = ["/" + name]

    def create(self, body, name):
        return self.add(name, body["Labels"], state="created")

    def start(self, cid):
        self.containers[cid]["State"] = "running"

    def remove(self, cid):
        self.containers.pop(cid, None)

    def image_id(self, image):
        return IMAGE_ID


@pytest.fixture
def cfg(tmp_path):
    c = make_cfg(tmp_path)
    os.makedirs(pool.records_dir(c))
    return c


def key_of(cfg):
    return pool.spare_spec(cfg, container_spec)[0]


def spare(engine, cfg, owner=None):
    return engine.add(pool.SPARE_PREFIX + f"{engine.n:012x}",
                      L.for_spare(key_of(cfg), owner or os.getpid()))


# -- which logins, which spares

def test_a_spare_is_the_session_container_without_the_session(tmp_path):
    cfg = make_cfg(tmp_path, {"memory": "256Mi", "env": {"A": "1"}})
    key, body = pool.spare_spec(cfg, container_spec)
    assert body["Cmd"] == list(cfg.docker.idle_command)
    assert body["Env"] == ["A=1"] and not body["Tty"] and not body["OpenStdin"]
    assert "Labels" not in body and body["HostConfig"]["Memory"] == 256 << 20
    assert key == key_of(make_cfg(tmp_path, {"memory": "256Mi", "env": {"A": "1"}}))
    assert key != key_of(make_cfg(tmp_path, {"memory": "512Mi", "env": {"A": "1"}}))
    assert key != key_of(make_cfg(tmp_path, {"memory": "256Mi", "image": "other:1"}))


def test_only_logins_a_spare_can_serve_use_one(cfg, tmp_path):
    assert pool.usable(spec_for(cfg))
    assert not pool.usable(spec_for(cfg, agent_dir="/run/hatchway/agent/x"))
    for docker, session in (({"warm_pool": 0}, None), ({"pull": "Always"}, None),
                            ({"mounts": ["/srv:/srv:ro"]}, None),
                            (None, {"port_forwarding": True}), (None, {"mode": "persistent"}),
                            (None, {"remote_forward_ports": [8080]})):
        assert not pool.usable(spec_for(make_cfg(tmp_path, docker, session))), (docker, session)


def test_each_claim_gets_its_own_spare_oldest_first(cfg):
    e = FakeEngine()
    first, second = spare(e, cfg), spare(e, cfg)
    other = e.add(pool.SPARE_PREFIX + "0ther", L.for_spare("f" * 16, os.getpid()))
    a, b = spec_for(cfg, sid="a" * 32), spec_for(cfg, user="bob", sid="b" * 32)
    assert pool._claim(e, cfg, key_of(cfg), "hatchway-alice-aaaa", a.labels) == first
    assert pool._claim(e, cfg, key_of(cfg), "hatchway-bob-bbbb", b.labels) == second
    assert pool._claim(e, cfg, key_of(cfg), "hatchway-alice-cccc", a.labels) is None
    assert e.containers[first]["Names"] == ["/hatchway-alice-aaaa"]
    assert pool.is_spare(e.containers[other])        # another key's spare is not taken


def test_a_spare_that_cannot_be_renamed_is_skipped_and_leaves_no_record(cfg):
    e = FakeEngine()
    gone, good = spare(e, cfg), spare(e, cfg)
    e.fail_rename.add(gone)
    assert pool._claim(e, cfg, key_of(cfg), "hatchway-alice-aaaa", spec_for(cfg).labels) == good
    assert sorted(os.listdir(pool.records_dir(cfg))) == sorted([".lock", good])


# -- what a claimed spare stands for

def test_a_claimed_spare_is_listed_as_its_sessions_container(cfg):
    e = FakeEngine()
    claimed, idle = spare(e, cfg), spare(e, cfg)
    pool._claim(e, cfg, key_of(cfg), "hatchway-alice-aaaa", spec_for(cfg).labels)
    b = DockerBackend(cfg)
    b.api = e
    found = {f.name: f for f in b.list()}
    assert found[claimed].labels[L.USER] == "alice" and not found[claimed].spare
    assert found[claimed].labels[L.SESSION] == "a" * 32
    assert found[idle].spare and L.USER not in found[idle].labels
    assert [f.name for f in b.list("alice")] == [claimed]
    assert b.list("bob") == []


def test_the_reaper_removes_claimed_spares_of_dead_sessions_and_spares_of_dead_keepers(cfg):
    e = FakeEngine()
    dead = _dead_pid()
    live_claim, dead_claim, live_spare = spare(e, cfg), spare(e, cfg), spare(e, cfg)
    dead_spare = spare(e, cfg, owner=os.getpid())
    pool._claim(e, cfg, key_of(cfg), "hatchway-alice-aaaa", spec_for(cfg).labels)
    dead_labels = dict(spec_for(cfg, sid="d" * 32).labels, **{L.PROCESS: f"{dead}:1"})
    pool._claim(e, cfg, key_of(cfg), "hatchway-alice-dddd", dead_labels)
    e.containers[dead_spare]["Labels"][L.PROCESS] = f"{dead}:1"
    b = DockerBackend(cfg)
    b.api = e
    removed = b.reap(L.owner_alive)
    assert sorted(removed) == sorted([dead_claim, dead_spare])
    assert set(e.containers) == {live_claim, live_spare}
    # the dead session's record went with its container
    assert sorted(os.listdir(pool.records_dir(cfg))) == sorted([".lock", live_claim])


def test_a_claimed_spare_without_its_record_has_no_owner(cfg):
    e = FakeEngine()
    cid = spare(e, cfg)
    e.rename(cid, "hatchway-alice-aaaa")        # claimed, and its record lost
    b = DockerBackend(cfg)
    b.api = e
    assert b.reap(L.owner_alive) == [cid]


# -- the keeper

def keeper(e, cfg, token=None):
    key, body = pool.spare_spec(cfg, container_spec)
    body["Labels"] = L.for_spare(key, os.getpid())
    return pool.Keeper(e, cfg, key, body, token or body["Labels"][L.PROCESS])


def test_the_keeper_fills_the_pool_and_replaces_what_is_claimed(cfg):
    e, k = FakeEngine(), None
    k = keeper(e, cfg)
    k.step()
    spares = [c for c in e.containers.values() if pool.is_spare(c)]
    assert len(spares) == 2 and all(c["State"] == "running" for c in spares)
    pool._claim(e, cfg, k.key, "hatchway-alice-aaaa", spec_for(cfg).labels)
    k.step()
    assert len([c for c in e.containers.values() if pool.is_spare(c)]) == 2
    assert len(e.containers) == 3       # the claimed one is its session's business
    k.empty()
    assert [c["Names"] for c in e.containers.values()] == [["/hatchway-alice-aaaa"]]


def test_the_keeper_removes_stale_spares_but_not_a_live_keepers(cfg):
    e = FakeEngine()
    k = keeper(e, cfg)
    old_image = e.add(pool.SPARE_PREFIX + "old", L.for_spare(k.key, os.getpid()), image="sha256:0")
    old_key = e.add(pool.SPARE_PREFIX + "key", L.for_spare("0" * 16, os.getpid()))
    orphan = e.add(pool.SPARE_PREFIX + "orphan",
                   dict(L.for_spare(k.key, os.getpid()), **{L.PROCESS: f"{_dead_pid()}:1"}))
    others = e.add(pool.SPARE_PREFIX + "other",
                   dict(L.for_spare(k.key, os.getpid()), **{L.PROCESS: L.process_token(1)}))
    k.step()
    assert old_image not in e.containers and old_key not in e.containers
    assert orphan not in e.containers
    assert others in e.containers           # pid 1 lives: another daemon's keeper
    assert len([c for c in e.containers.values()
                if c["Labels"].get(L.PROCESS) == k.token and pool.is_spare(c)]) == 2


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_login_in_no_group_gets_the_spares_key(tmp_path):
    # the keeper makes spares from the file config through the policy; a
    # session's config comes through daemon/resolve.py: one key for both, or
    # no login would ever find a spare
    from hatchway.daemon import resolve
    base = make_cfg(tmp_path, {"cpus": 0.5, "cap_drop": ["NET_ADMIN"]})
    made_from, why = pool.spare_config(base)
    assert why == ""
    session = resolve.effective_config(base, user="root", uid=0, remote_address="127.0.0.1",
                                       connection_id="c1")
    assert key_of(made_from) == key_of(session)
    assert key_of(made_from) != key_of(base)        # the policy's limits are in it


def test_no_spares_for_settings_made_per_user(tmp_path):
    for docker, part in (({"hostname": "{user}-box"}, "templates"),
                         ({"mounts": ["/srv:/srv:ro"]}, "mounts"),
                         ({"pull": "Always"}, "Always")):
        made_from, why = pool.spare_config(make_cfg(tmp_path, docker))
        assert made_from is None and part in why, (docker, why)


def test_a_spare_that_died_under_its_claim_gives_way_to_a_container_of_its_own(cfg):
    # the exec into it fails: start_in() says None (the backend then creates
    # the session's own container) and the spare and its record are gone
    e = FakeEngine()
    cid = spare(e, cfg)

    def exec_create(container, body):
        raise DockerError(409, f"container {container} is not running")
    e.exec_create = exec_create
    assert pool.start_in(e, spec_for(cfg), "hatchway-alice-aaaa", container_spec) is None
    assert cid not in e.containers
    assert os.listdir(pool.records_dir(cfg)) == [".lock"]


def test_records_are_swept_under_the_pools_lock(cfg):
    # a claim (record, then rename) holds the lock; a sweep that read the
    # containers outside it could drop the record of a spare made and
    # claimed meanwhile, and the next reap would remove a live session's
    # container as an orphan
    import threading
    e = FakeEngine()
    stale = os.path.join(pool.records_dir(cfg), "e" * 64)
    with open(stale, "w") as f:
        f.write("{}")
    with pool._Lock(cfg):
        sweeper = threading.Thread(target=pool.sweep_records, args=(e, cfg))
        sweeper.start()
        sweeper.join(0.3)
        assert sweeper.is_alive() and os.path.exists(stale)
        # meanwhile a claim: its record must survive the sweep
        cid = spare(e, cfg)
        fresh = os.path.join(pool.records_dir(cfg), cid)
        with open(fresh, "w") as f:
            f.write("{}")
    sweeper.join(10)
    assert not os.path.exists(stale) and os.path.exists(fresh)


def test_a_sweep_where_no_keeper_ran_makes_no_lock_file(tmp_path):
    # `hatchway gc` runs as root: a lock file of root's would lock the daemon out
    cfg = make_cfg(tmp_path)
    os.makedirs(pool.records_dir(cfg))
    pool.sweep_records(FakeEngine(), cfg)
    assert os.listdir(pool.records_dir(cfg)) == []
