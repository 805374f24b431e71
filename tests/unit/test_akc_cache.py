"""hatchway-keys' answer cache, through the helper itself against a webhook
that counts its calls.  sshd runs the helper twice per successful login (the
key query, then the signed attempt); two calls in a row stand for that pair.
TTLs of 1 s are waited out with a sleep longer than the TTL: only a lower
bound on time is relied on, never an upper one."""

import json
import os
import time

import pytest

from tests.e2e.webhook_servers import ContainerSSHServer

from .akc_run import assert_denied, helper_env, keygen, run_keys, write_config


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return helper_env(tmp_path_factory.mktemp("akc-cache"))


@pytest.fixture
def webhook():
    srv = ContainerSSHServer(pubkey_users={"alice"})
    yield srv
    srv.close()


def keys(env, cfg, user="alice"):
    return run_keys(env["entry"], cfg, user, env["type"], env["key"])


def yes(r):
    return r.returncode == 0 and r.stdout.startswith(b"restrict,pty ")


def test_query_and_signed_attempt_cost_one_call_with_the_cache(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url)                   # default TTL, 10 s
    first, second = keys(env, cfg), keys(env, cfg)
    assert yes(first) and yes(second)
    assert second.stdout == first.stdout
    assert webhook.calls() == 1
    assert (first.log["cache"], second.log["cache"]) == ("miss", "hit")
    assert second.reason == "cached yes"


def test_without_the_cache_two_calls(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url, cache={"ttl": "0s"})
    assert yes(keys(env, cfg)) and yes(keys(env, cfg))
    assert webhook.calls() == 2


def test_cached_options_are_the_webhooks(env, tmp_path, webhook):
    webhook.extensions["alice"] = {"from": ["127.0.0.1"]}
    cfg = write_config(tmp_path, webhook.url)
    first = keys(env, cfg)
    assert b'from="127.0.0.1"' in first.stdout
    assert keys(env, cfg).stdout == first.stdout


def test_cache_is_per_user_and_key(env, tmp_path, webhook):
    webhook.pubkey_users.add("bob")
    cfg = write_config(tmp_path, webhook.url)
    other_type, other_key = keygen(tmp_path, "ecdsa")
    assert yes(keys(env, cfg, "alice"))
    assert yes(keys(env, cfg, "bob"))
    assert yes(run_keys(env["entry"], cfg, "alice", other_type, other_key))
    assert webhook.calls() == 3


def test_a_revoked_key_stops_working_within_the_ttl(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url, cache={"ttl": "1s"})
    assert yes(keys(env, cfg))
    webhook.pubkey_users.discard("alice")
    time.sleep(1.2)
    assert_denied(keys(env, cfg), "webhook said no")
    assert webhook.calls() == 2


def test_a_denial_is_never_cached(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url)
    webhook.pubkey_users.discard("alice")
    assert_denied(keys(env, cfg), "webhook said no")
    webhook.pubkey_users.add("alice")
    assert yes(keys(env, cfg))                   # at once, not after a TTL
    assert webhook.calls() == 2


def test_stale_if_error_serves_a_recent_yes_while_the_webhook_is_down(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url, cache={"ttl": "1s", "stale_if_error": "60s"})
    first = keys(env, cfg)
    assert yes(first)
    time.sleep(1.2)
    webhook.behaviour = "http500"
    r = keys(env, cfg)
    assert r.stdout == first.stdout
    assert r.log["cache"] == "stale"
    assert "webhook answered HTTP 500" in r.reason


def test_stale_if_error_is_off_by_default(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url, cache={"ttl": "1s"})
    assert yes(keys(env, cfg))
    time.sleep(1.2)
    webhook.behaviour = "http500"
    assert_denied(keys(env, cfg), "HTTP 500")


def test_stale_if_error_never_outlives_a_later_denial(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url, cache={"ttl": "1s", "stale_if_error": "60s"})
    assert yes(keys(env, cfg))
    time.sleep(1.2)
    webhook.pubkey_users.discard("alice")
    assert_denied(keys(env, cfg), "webhook said no")      # deletes the old yes
    webhook.behaviour = "http500"
    assert_denied(keys(env, cfg), "HTTP 500")


def test_stale_if_error_has_an_end(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url, cache={"ttl": "1s", "stale_if_error": "1s"})
    assert yes(keys(env, cfg))
    time.sleep(2.2)
    webhook.behaviour = "http500"
    assert_denied(keys(env, cfg), "HTTP 500")


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o777])
def test_a_cache_directory_others_can_enter_turns_the_cache_off(env, tmp_path, webhook, mode):
    cfg = write_config(tmp_path, webhook.url)
    os.chmod(tmp_path / "cache", mode)
    first, second = keys(env, cfg), keys(env, cfg)
    assert yes(first) and yes(second)
    assert webhook.calls() == 2
    assert second.log["cache"] == "off"
    assert "not private" in second.stderr
    assert os.listdir(tmp_path / "cache") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the directory to another user")
def test_a_cache_directory_of_another_user_turns_the_cache_off(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url)
    os.chown(tmp_path / "cache", 65534, 65534)
    assert yes(keys(env, cfg)) and yes(keys(env, cfg))
    assert webhook.calls() == 2


def test_missing_cache_directory_turns_the_cache_off(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url)
    os.rmdir(tmp_path / "cache")
    assert yes(keys(env, cfg)) and yes(keys(env, cfg))
    assert webhook.calls() == 2


def test_cache_entries_hold_no_key_material_and_are_private(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url)
    assert yes(keys(env, cfg))
    entries = os.listdir(tmp_path / "cache")
    assert len(entries) == 1
    path = tmp_path / "cache" / entries[0]
    assert os.stat(path).st_mode & 0o077 == 0
    assert env["key"] not in path.read_text()
    assert "alice" not in entries[0]


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b'{"t": "x"}',
                                     b'{"t": 1e20, "user": "alice", "fp": "x", "options": []}'])
def test_a_corrupt_entry_is_a_miss(env, tmp_path, webhook, garbage):
    cfg = write_config(tmp_path, webhook.url)
    assert yes(keys(env, cfg))
    (entry,) = os.listdir(tmp_path / "cache")
    (tmp_path / "cache" / entry).write_bytes(garbage)
    r = keys(env, cfg)
    assert yes(r)
    assert r.log["cache"] == "miss"
    assert webhook.calls() == 2


def test_an_entry_from_the_future_is_a_miss(env, tmp_path, webhook):
    # a clock set back must not stretch a cached yes
    cfg = write_config(tmp_path, webhook.url)
    assert yes(keys(env, cfg))
    (entry,) = os.listdir(tmp_path / "cache")
    path = tmp_path / "cache" / entry
    data = json.loads(path.read_text())
    data["t"] = time.time() + 3600
    path.write_text(json.dumps(data))
    assert keys(env, cfg).log["cache"] == "miss"


def test_an_entry_naming_another_user_is_a_miss(env, tmp_path, webhook):
    cfg = write_config(tmp_path, webhook.url)
    assert yes(keys(env, cfg))
    (entry,) = os.listdir(tmp_path / "cache")
    path = tmp_path / "cache" / entry
    data = json.loads(path.read_text())
    data["user"] = "mallory"
    path.write_text(json.dumps(data))
    assert keys(env, cfg).log["cache"] == "miss"
