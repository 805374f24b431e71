"""The bundled webhook's store: what it accepts, how it normalises, and that
writers in several processes at once lose nothing."""

import base64
import multiprocessing
import os
import pwd
import shutil
import struct

import pytest

from hatchway.core import sshkeys
from hatchway.webhook.store import (Conflict, NotFound, Store, StoreError, check_expiry,
                             check_fingerprint)


def make_key(seed: int, comment: str = "") -> sshkeys.PublicKey:
    """A well-formed ed25519 public key (32 bytes of made-up point data)."""
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + \
        seed.to_bytes(4, "big") * 8
    return sshkeys.from_parts("ssh-ed25519", base64.b64encode(blob).decode(), comment)


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "keys.db"))
    yield s
    s.close()


def test_user_with_keys_round_trip(store):
    user = store.add_user("dave", "busybox:latest", [make_key(1, "dave@laptop")])
    assert user["name"] == "dave" and user["image"] == "busybox:latest"
    assert user["keys"] == 1 and user["password"] is False
    assert user["created"].endswith("Z")
    [key] = store.keys("dave")
    assert key["fingerprint"] == make_key(1).fingerprint
    assert key["key"] == make_key(1, "dave@laptop").openssh()
    assert key["from"] is None and key["expiry"] is None
    assert store.find_key("dave", "ssh-ed25519", make_key(1).b64)["user"] == "dave"
    assert store.find_key("erin", "ssh-ed25519", make_key(1).b64) is None


def test_duplicates_are_refused(store):
    store.add_user("dave", keys=[make_key(1)])
    with pytest.raises(Conflict, match="already exists"):
        store.add_user("dave")
    with pytest.raises(Conflict, match="already has key SHA256:"):
        store.add_key("dave", make_key(1, "same key, other comment"))
    with pytest.raises(Conflict):
        store.add_user("erin", keys=[make_key(2), make_key(2)])
    assert not store.has_user("erin")           # nothing of the failed request stays
    store.add_user("erin", keys=[make_key(1)])  # one key may serve two users


@pytest.mark.parametrize("name", ["Dave", "1dave", "-dave", "da ve", "dave$", "d" * 33, "",
                                  "dave\n", "dävé", "root", "hatchway-keys", "docker"])
def test_bad_or_reserved_names_are_refused(store, name):
    with pytest.raises(StoreError) as e:
        store.add_user(name)
    assert "\n" not in str(e.value)


def test_names_of_existing_accounts_and_groups_are_refused(store):
    system_user = pwd.getpwuid(2).pw_name               # bin, on Debian
    with pytest.raises(StoreError, match="existing account"):
        store.add_user(system_user)
    with pytest.raises(StoreError, match="group named users"):
        store.add_user("users")                         # Debian's group 100, no such user


@pytest.mark.parametrize("image", ["bad image", "x;rm -rf /", "a//b", "", "-x", "é"])
def test_bad_images_are_refused(store, image):
    with pytest.raises(StoreError, match="invalid image"):
        store.add_user("dave", image)


def test_image_change_and_reset(store):
    store.add_user("dave")
    assert store.set_image("dave", "registry.example:5000/team/img:1.2")["image"] == \
        "registry.example:5000/team/img:1.2"
    assert store.set_image("dave", None)["image"] is None
    with pytest.raises(NotFound):
        store.set_image("erin", "busybox")


@pytest.mark.parametrize("given,stored", [
    ("2099-01-31T18:00:00Z", "2099-01-31T18:00:00Z"),
    ("2099-01-31T19:00:00+01:00", "2099-01-31T18:00:00Z"),
    ("209901311800", "2099-01-31T18:00:00Z"),
    ("20990131", "2099-01-31T00:00:00Z"),
    (4073666400, "2099-02-01T22:00:00Z"),
])
def test_expiry_is_normalised_to_utc(given, stored):
    assert check_expiry(given) == stored


@pytest.mark.parametrize("given", ["yesterday", "2001-01-01T00:00:00Z", 0, True, "2099-13-40"])
def test_bad_or_past_expiry_is_refused(given):
    with pytest.raises(StoreError):
        check_expiry(given)


def test_key_restrictions_are_stored(store):
    store.add_user("dave")
    key = store.add_key("dave", make_key(1), "10.0.0.0/8, !10.1.2.3", "2099-01-31T18:00:00Z")
    assert key["from"] == ["10.0.0.0/8", "!10.1.2.3"]
    assert key["expiry"] == "2099-01-31T18:00:00Z"
    with pytest.raises(StoreError, match="'from'"):
        store.add_key("dave", make_key(2), ["10.0.0.0/8", 'x" command="sh'])
    with pytest.raises(StoreError, match="'from'"):
        store.add_key("dave", make_key(2), [])


def test_fingerprints_as_ssh_keygen_prints_them():
    fp = make_key(1).fingerprint
    assert check_fingerprint(fp) == fp
    assert check_fingerprint(fp[len("SHA256:"):]) == fp
    for bad in ("MD5:00:11", "SHA256:short", fp + "x", None):
        with pytest.raises(StoreError, match="fingerprint looks like"):
            check_fingerprint(bad)


def test_removals(store):
    store.add_user("dave", keys=[make_key(1), make_key(2)])
    store.remove_key("dave", make_key(1).fingerprint)
    with pytest.raises(NotFound, match="has no key"):
        store.remove_key("dave", make_key(1).fingerprint)
    with pytest.raises(NotFound, match="no such user"):
        store.remove_key("erin", make_key(2).fingerprint)
    assert [k["fingerprint"] for k in store.keys("dave")] == [make_key(2).fingerprint]
    assert store.remove_user("dave") is True
    assert store.keys() == []                    # the keys went with the user
    assert store.remove_user("dave") is False
    with pytest.raises(NotFound):
        store.keys("dave")


def test_passwords_are_hashed_and_checked(store):
    store.add_user("dave")
    store.set_password("dave", "correct horse")
    raw = store.db.execute("SELECT password FROM users").fetchone()[0]
    assert raw.startswith("scrypt$") and "correct" not in raw
    assert store.check_password("dave", b"correct horse")
    assert not store.check_password("dave", b"wrong")
    assert not store.check_password("erin", b"correct horse")
    store.set_password("dave", None)
    assert not store.check_password("dave", b"correct horse")
    with pytest.raises(StoreError):
        store.set_password("dave", "")


def _add_many(path: str, worker: int, count: int) -> None:
    s = Store(path)
    for i in range(count):
        s.add_key("dave", make_key(worker * 1000 + i))
    s.close()


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path):
    """Like concurrent `hatchway keys add` commands: separate processes that share
    nothing but the file (spawned, not forked: SQLite's locks are per process and
    must not be inherited from a parent that had the file open)."""
    path = str(tmp_path / "keys.db")
    s = Store(path)
    s.add_user("dave")
    s.close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(path, w, 25)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 6
    assert len(Store(path).keys("dave")) == 150


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership needs root")
def test_a_store_root_creates_belongs_to_the_directory_owner(tmp_path):
    """The root CLI may create the store before the server ever ran: the server's
    user must still own the file, and SQLite's -wal/-shm files follow the file."""
    d = tmp_path / "webhook"
    d.mkdir()
    shutil.chown(d, "nobody", "nogroup")
    s = Store(str(d / "keys.db"))
    s.add_user("dave")
    nobody = pwd.getpwnam("nobody").pw_uid
    owners = {p.name: p.stat().st_uid for p in d.iterdir()}
    assert owners["keys.db"] == nobody
    assert set(owners.values()) == {nobody}, owners
    s.close()
