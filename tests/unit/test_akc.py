"""hatchway-keys as sshd runs it (a fresh process per call, see akc_run) against
real HTTP servers on loopback: what it prints for a yes, the request it sends
(checked against ContainerSSH's published schema), and the log line per
decision.  Bad input of every kind is in test_akc_bad_input.py, the cache in
test_akc_cache.py, TLS in test_akc_tls.py."""

import os
import re

import pytest

from hatchway.core import connection
from tests import containerssh_schema as schema
from tests.e2e.webhook_servers import ContainerSSHServer

from .akc_run import assert_denied, helper_env, run_keys, write_config


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return helper_env(tmp_path_factory.mktemp("akc"))


@pytest.fixture
def reference():
    srv = ContainerSSHServer.reference()
    yield srv
    srv.close()


@pytest.fixture
def config(tmp_path, reference):
    # the cache off unless a test wants it: each call below must reach the server
    return write_config(tmp_path, reference.url, cache={"ttl": "0s"})


def test_yes_prints_exactly_one_restricted_line(env, config, reference):
    r = run_keys(env["entry"], config, "foo", env["type"], env["key"])
    assert r.returncode == 0
    assert r.stdout == f"restrict,pty {env['type']} {env['key']}\n".encode()
    assert r.log["decision"] == "allow"
    assert r.log["user"] == "foo"
    assert r.log["key"] == env["fp"]
    assert r.log["reason"] == "webhook said yes"
    assert re.fullmatch(r"\d+", r.log["latency_ms"])
    assert reference.calls() == 1


def test_no_prints_nothing(env, config, reference):
    r = run_keys(env["entry"], config, "bar", env["type"], env["key"])
    assert_denied(r, "webhook said no")
    assert r.log["user"] == "bar"
    assert reference.calls() == 1


def test_log_line_never_holds_the_key_or_the_token(env, tmp_path, reference):
    token = tmp_path / "token"
    token.write_text("s3cret-t0ken\n")
    cfg = write_config(tmp_path, reference.url, {"token_file": str(token)}, {"ttl": "0s"})
    for user in ("foo", "bar"):
        r = run_keys(env["entry"], cfg, user, env["type"], env["key"])
        assert len(r.log_lines) == 1
        assert env["key"] not in r.stderr
        assert "s3cret" not in r.stderr


def test_bearer_token_reaches_the_server(env, tmp_path, reference):
    token = tmp_path / "token"
    token.write_text("s3cret-t0ken\n")
    cfg = write_config(tmp_path, reference.url, {"token_file": str(token)}, {"ttl": "0s"})
    assert run_keys(env["entry"], cfg, "foo", env["type"], env["key"]).stdout
    assert reference.headers[-1]["authorization"] == "Bearer s3cret-t0ken"


def test_no_token_no_authorization_header(env, config, reference):
    run_keys(env["entry"], config, "foo", env["type"], env["key"])
    assert "authorization" not in reference.headers[-1]


def test_request_fits_containerssh_schema(env, config, reference):
    run_keys(env["entry"], config, "foo", env["type"], env["key"])
    route, req = reference.requests[-1]
    assert route == "pubkey"
    schema.check(req, "PublicKeyAuthRequest")
    # ContainerSSH's own client decodes strictly; servers built on its structs may too
    assert schema.unknown_keys(req, "PublicKeyAuthRequest") == []
    assert req["username"] == "foo"
    assert req["publicKey"] == f"{env['type']} {env['key']}"
    headers = reference.headers[-1]
    assert headers["content-type"] == "application/json"
    # and what the reference server answered is a valid ContainerSSH reply
    schema.check(reference.replies[-1][1], "AuthResponseBody")


def test_connection_id_is_the_one_hatchwayd_computes(env, config, reference):
    # sshd's per-connection monitor is the helper's parent; here that is this
    # process, so the id must be the one derived from our own pid
    run_keys(env["entry"], config, "foo", env["type"], env["key"])
    req = reference.requests[-1][1]
    assert req["connectionId"] == connection.connection_id_for(os.getpid())
    assert re.fullmatch(r"[0-9a-f]{32}", req["connectionId"])


def test_without_client_address_sends_a_parseable_placeholder(env, config, reference):
    # sshd < 9.4 has no %C: ContainerSSH servers must still decode the request
    r = run_keys(env["entry"], config, "foo", env["type"], env["key"])
    assert r.stdout
    assert reference.requests[-1][1]["remoteAddress"] == "0.0.0.0:0"


@pytest.mark.parametrize("client,sent", [
    ("192.0.2.7 40022 127.0.0.1 22", "192.0.2.7:40022"),
    ("2001:db8::1 40022 ::1 22", "[2001:db8::1]:40022"),
    ("garbage", "0.0.0.0:0"),
    ("192.0.2.7 notaport 127.0.0.1 22", "0.0.0.0:0"),
])
def test_client_address_from_percent_c(env, config, reference, client, sent):
    r = run_keys(env["entry"], config, "foo", env["type"], env["key"], client)
    assert r.stdout
    assert reference.requests[-1][1]["remoteAddress"] == sent
    assert reference.replies[-1][1]["remoteAddress"] == sent     # Go re-marshals it alike


@pytest.mark.parametrize("ext,options", [
    ({"from": ["10.0.0.0/8", "!10.1.0.0/16"]}, 'from="10.0.0.0/8,!10.1.0.0/16"'),
    ({"from": "127.0.0.1"}, 'from="127.0.0.1"'),
    ({"expiry": "2030-01-02T03:04:05Z"}, 'expiry-time="20300102030405Z"'),
    ({"expiry": "2030-01-02T04:04:05+01:00"}, 'expiry-time="20300102030405Z"'),
    ({"expiry": 1893553445}, 'expiry-time="20300102030405Z"'),
    ({"expiry": "20300102"}, 'expiry-time="20300102Z"'),
    ({"from": ["*.example.com"], "expiry": "203001020304"},
     'from="*.example.com",expiry-time="203001020304Z"'),
])
def test_hatchway_extensions_become_sshd_options(env, config, reference, ext, options):
    reference.extensions["foo"] = ext
    r = run_keys(env["entry"], config, "foo", env["type"], env["key"])
    assert r.stdout == f"restrict,pty,{options} {env['type']} {env['key']}\n".encode()


def test_webhook_url_with_a_path_gets_pubkey_appended(env, tmp_path, reference):
    cfg = write_config(tmp_path, reference.url + "/auth/v1/", cache={"ttl": "0s"})
    assert run_keys(env["entry"], cfg, "foo", env["type"], env["key"]).stdout
    assert reference.calls() == 1



def _imported(r):
    return {ln.split("|")[-1].strip() for ln in r.stderr.splitlines()
            if ln.startswith("import time:")}


def test_a_warm_call_never_imports_yaml(env, config, reference):
    # PyYAML's import is a quarter of the helper's run: only the first call
    # after a config change may pay it (hatchway/keys/compiled_config.py)
    argv = ("foo", env["type"], env["key"])
    first = run_keys(env["entry"], config, *argv, pyflags=("-X", "importtime"))
    second = run_keys(env["entry"], config, *argv, pyflags=("-X", "importtime"))
    assert first.stdout and second.stdout == first.stdout
    assert "yaml" in _imported(first)
    assert "yaml" not in _imported(second)
    assert not {"dataclasses", "typing", "email", "hashlib"} & _imported(second)


def test_a_cache_hit_needs_neither_the_schema_nor_the_http_client(env, tmp_path, reference):
    d = tmp_path / "cached"
    d.mkdir()
    cfg = write_config(d, reference.url)
    argv = ("foo", env["type"], env["key"])
    first = run_keys(env["entry"], cfg, *argv)
    hit = run_keys(env["entry"], cfg, *argv, pyflags=("-X", "importtime"))
    assert hit.stdout == first.stdout and hit.log["cache"] == "hit"
    assert not {"hatchway.core.config", "hatchway.core.http11", "socket", "yaml"} & _imported(hit)
