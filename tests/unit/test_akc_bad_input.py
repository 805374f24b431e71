"""Every kind of bad input makes hatchway-keys refuse the way sshd needs:
nothing on stdout, exit status 0, and one log line with the reason.  Broken
servers are `RawServer` fakes (they write bytes no real server would); the
arguments are what sshd could hand over, or worse."""

import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.webhook_servers import ContainerSSHServer, RawServer, closed_port, http_response

from .akc_run import ROOT, assert_denied, entry_point, helper_env, run_keys, write_config

TIMEOUT = 1.0     # the helper's total deadline in the slow cases below


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return helper_env(tmp_path_factory.mktemp("akc-bad"))


@pytest.fixture
def raw():
    servers = []

    def make(respond):
        srv = RawServer(respond)
        servers.append(srv)
        return srv
    yield make
    for srv in servers:
        srv.close()


def ask(env, tmp_path, url, user="foo", webhook=None):
    cfg = write_config(tmp_path, url, {"timeout": f"{TIMEOUT}s", **(webhook or {})},
                       {"ttl": "0s"})
    return run_keys(env["entry"], cfg, user, env["type"], env["key"])


def replying(body: bytes, status: int = 200, extra: str = ""):
    return lambda s: s.sendall(http_response(status, body, extra))


YES = b'{"success": true}'


def test_the_fake_itself_can_say_yes(env, tmp_path, raw):
    # so that each refusal below is the bad input's doing, not the fake's
    r = ask(env, tmp_path, raw(replying(YES)).url)
    assert r.stdout.startswith(b"restrict,pty ")


@pytest.mark.parametrize("body,reason", [
    (b'{"success": tru', "not a JSON object"),
    (b"", "not a JSON object"),
    (b"[true]", "not a JSON object"),
    (b'"success"', "not a JSON object"),
    (b'{"success": "true"}', "no boolean 'success'"),
    (b'{"success": 1}', "no boolean 'success'"),
    (b'{"success": null}', "no boolean 'success'"),
    (b'{"Success": true}', "no boolean 'success'"),
    (b'{}', "no boolean 'success'"),
    (b'{"success": true, "x": "\xff\xfe"}', "not a JSON object"),        # invalid UTF-8
    (b'\xef\xbb\xbf{"success": true}', "not a JSON object"),             # a BOM is not JSON
    (b"[" * 30000 + b"]" * 30000, "not a JSON object"),          # nesting bomb, under the size cap
    (b'{"success": true, "hatchway": "x"}', "'hatchway' extension is not an object"),
    (b'{"success": true, "hatchway": {"from": 5}}', "'hatchway.from'"),
    (b'{"success": true, "hatchway": {"from": []}}', "'hatchway.from'"),
    (b'{"success": true, "hatchway": {"from": ["10.0.0.0/8\\n"]}}', "'hatchway.from'"),
    (b'{"success": true, "hatchway": {"from": ["1.2.3.4\\",command=\\"sh"]}}', "'hatchway.from'"),
    (b'{"success": true, "hatchway": {"from": ["a b"]}}', "'hatchway.from'"),
    (b'{"success": true, "hatchway": {"expiry": true}}', "'hatchway.expiry'"),
    (b'{"success": true, "hatchway": {"expiry": "tomorrow"}}', "'hatchway.expiry'"),
    (b'{"success": true, "hatchway": {"expiry": 1e300}}', "'hatchway.expiry'"),
    (b'{"success": true, "hatchway": {"expiry": "20300102\\"x"}}', "'hatchway.expiry'"),
    (b'{"success": true, "hatchway": {"expiry": []}}', "'hatchway.expiry'"),
])
def test_malformed_replies(env, tmp_path, raw, body, reason):
    r = ask(env, tmp_path, raw(replying(body)).url)
    assert_denied(r, reason)


@pytest.mark.parametrize("status", [201, 204, 301, 302, 307, 400, 401, 403, 404, 429, 500, 502, 503])
def test_any_status_but_200_is_no(env, tmp_path, raw, status):
    # even with a yes in the body, and a Location to follow
    srv = raw(replying(YES, status, "Location: /elsewhere\r\n"))
    r = ask(env, tmp_path, srv.url)
    assert_denied(r, "" if status == 204 else f"HTTP {status}")
    assert srv.count == 1          # a 3xx is not followed, a 5xx not retried


def test_ten_megabyte_body_is_refused_unread(env, tmp_path, raw):
    body = b'{"success": true, "pad": "' + b"x" * (10 << 20) + b'"}'
    r = ask(env, tmp_path, raw(replying(body)).url)
    assert_denied(r, "exceeds the 65536-byte cap")


def test_ten_megabyte_chunked_body_is_capped(env, tmp_path, raw):
    def respond(s):
        s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(160):
            s.sendall(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
        s.sendall(b"0\r\n\r\n")
    r = ask(env, tmp_path, raw(respond).url)
    assert_denied(r, "exceeds the 65536-byte cap")


def test_endless_body_is_capped(env, tmp_path, raw):
    def respond(s):
        s.sendall(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"success": true, "pad": "')
        while True:                       # no length, never ends: read-to-close forever
            s.sendall(b"x" * 65536)
    r = ask(env, tmp_path, raw(respond).url)
    assert_denied(r, "exceeds the 65536-byte cap")


def test_endless_head_is_capped(env, tmp_path, raw):
    def respond(s):
        s.sendall(b"HTTP/1.1 200 OK\r\n")
        while True:
            s.sendall(b"X-Pad: " + b"y" * 1000 + b"\r\n")
    r = ask(env, tmp_path, raw(respond).url)
    assert_denied(r, "response head too large")


@pytest.mark.parametrize("head", [b"HTTP/1.1 OK\r\n\r\n", b"SSH-2.0-OpenSSH\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}"])
def test_broken_framing(env, tmp_path, raw, head):
    r = ask(env, tmp_path, raw(lambda s: s.sendall(head)).url)
    assert_denied(r, "")


def trickle(head: bytes, body: bytes, pause: float):
    def respond(s):
        s.sendall(head)
        for i in range(len(body)):
            s.sendall(body[i:i + 1])
            time.sleep(pause)
    return respond


@pytest.mark.parametrize("respond", [
    # slow loris: a byte every 50 ms keeps any per-read timeout happy
    trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", YES + b" " * 983, 0.05),
    trickle(b"", b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 100, 0.05),
    lambda s: time.sleep(30),                             # accepts, never answers
    lambda s: (s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{"), time.sleep(30)),
], ids=["slow-body", "slow-head", "hanging", "half-body"])
def test_slow_servers_are_cut_off_at_the_deadline(env, tmp_path, raw, respond):
    r = ask(env, tmp_path, raw(respond).url, webhook={"request_timeout": "5s"})
    assert_denied(r, "")
    assert "deadline" in r.reason or "timed out" in r.reason, r.reason
    # the bound: deadline + 1 s, interpreter start included
    assert r.elapsed < TIMEOUT + 1, r.elapsed


def test_nothing_listening_is_retried_until_the_deadline_then_no(env, tmp_path):
    r = ask(env, tmp_path, f"http://127.0.0.1:{closed_port()}")
    assert_denied(r, "cannot connect")
    assert r.elapsed < TIMEOUT + 1, r.elapsed


def test_unresolvable_host(env, tmp_path):
    r = ask(env, tmp_path, "http://hatchway-test.invalid")
    assert_denied(r, "")
    assert r.elapsed < TIMEOUT + 1, r.elapsed


@pytest.mark.parametrize("user", ["../x", "a b", "$(id)", "alice\n", "alice\nbob", "", "-oX",
                                  "Alice", "a" * 40, "al'ice", "al\"ice", "é"])
def test_hostile_usernames_never_reach_the_webhook(env, tmp_path, user):
    srv = ContainerSSHServer(pubkey_users={user, "foo"})
    try:
        r = ask(env, tmp_path, srv.url, user=user)
        assert_denied(r, "malformed username")
        assert srv.calls() == 0
    finally:
        srv.close()


@pytest.mark.parametrize("kt,b64,reason", [
    ("ssh-foo", None, "unsupported key type ssh-foo"),
    ("ssh-ed25519\n", None, "unsupported key type (unprintable)"),
    ("ssh-ed25519-cert-v01@openssh.com", None, "unsupported key type"),
    ("ssh-rsa", None, "does not hold a ssh-rsa key"),            # type and blob disagree
    (None, "not*base64", "not valid base64"),
    (None, "AAAA", "does not hold"),
    (None, "", "not valid base64"),
    (None, "A" * 40000, "not valid base64"),
])
def test_bad_keys_never_reach_the_webhook(env, tmp_path, kt, b64, reason):
    srv = ContainerSSHServer.reference()
    try:
        cfg = write_config(tmp_path, srv.url, cache={"ttl": "0s"})
        r = run_keys(env["entry"], cfg, "foo", kt or env["type"], env["key"] if b64 is None else b64)
        assert_denied(r, reason)
        assert srv.calls() == 0
    finally:
        srv.close()


@pytest.mark.parametrize("argv", [[], ["foo"], ["foo", "ssh-ed25519"], ["a", "b", "c", "d", "e"]])
def test_wrong_argument_count(env, tmp_path, argv):
    cfg = write_config(tmp_path, "http://127.0.0.1:9")
    assert_denied(run_keys(env["entry"], cfg, *argv), "expected arguments")


def test_missing_config(env, tmp_path):
    r = run_keys(env["entry"], tmp_path / "nope.yaml", "foo", env["type"], env["key"])
    assert_denied(r, "config file not found")


@pytest.mark.parametrize("text,reason", [
    ("auth: [", "not valid YAML"),
    ("auth:\n  webhook:\n    url: ftp://x\n", "auth.webhook.url"),
    ("auth:\n  webhook:\n    timeout: soon\n", "auth.webhook.timeout"),
    ("auth:\n  nonsense: 1\n", "unknown key"),
    pytest.param("auth: " + "[" * 100000, "nested too deeply", id="nesting-bomb"),
])
def test_broken_config(env, tmp_path, text, reason):
    cfg = tmp_path / "hatchway.yaml"
    cfg.write_text(text)
    assert_denied(run_keys(env["entry"], cfg, "foo", env["type"], env["key"]), reason)


def test_config_that_is_not_utf8(env, tmp_path):
    cfg = tmp_path / "hatchway.yaml"
    cfg.write_bytes(b"auth: \xff\n")
    assert_denied(run_keys(env["entry"], cfg, "foo", env["type"], env["key"]), "config")


@pytest.mark.parametrize("make", ["missing", "directory", "empty", "two-lines"])
def test_unusable_token_file(env, tmp_path, make):
    srv = ContainerSSHServer.reference()
    token = tmp_path / "token"
    if make == "directory":
        token.mkdir()
    elif make == "empty":
        token.write_text("\n")
    elif make == "two-lines":
        token.write_text("abc\r\nX-Evil: 1\n")
    try:
        r = ask(env, tmp_path, srv.url, webhook={"token_file": str(token)})
        assert_denied(r, "token file")
        assert srv.calls() == 0
    finally:
        srv.close()


def _others_can_reach(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the helper as another user")
@pytest.mark.skipif(not _others_can_reach(ROOT), reason="the work tree is private to root "
                    "(a package build's scratch copy)")
def test_token_file_the_helper_user_cannot_read(env):
    # The packaged case: the helper runs as hatchway-keys, the token is root's 0600.
    # Run as nobody, with everything else readable to nobody (pytest's own
    # temporary directories are private to root).
    d = Path(tempfile.mkdtemp(prefix="hatchway-akc-"))
    os.chmod(d, 0o755)
    entry = entry_point(d)
    srv = ContainerSSHServer.reference()
    token = d / "token"
    token.write_text("s3cret\n")
    os.chmod(token, 0o600)
    try:
        cfg = write_config(d, srv.url, {"token_file": str(token)}, {"ttl": "0s"})
        os.chmod(cfg, 0o644)
        r = run_keys(entry, cfg, "foo", env["type"], env["key"], user=65534)
        assert_denied(r, "cannot read token file")
        assert "Permission denied" in r.reason
        assert srv.calls() == 0
        os.chmod(token, 0o644)     # the same run can say yes: the token was the only problem
        r = run_keys(entry, cfg, "foo", env["type"], env["key"], user=65534)
        assert r.stdout.startswith(b"restrict,pty ")
    finally:
        srv.close()
        shutil.rmtree(d)


def test_extensions_are_not_trusted_from_a_json_string(env, tmp_path, raw):
    # a server double-encoding its reply: a string holding JSON is not an object
    r = ask(env, tmp_path, raw(replying(json.dumps(json.dumps({"success": True})).encode())).url)
    assert_denied(r, "not a JSON object")


def test_a_cache_path_that_is_no_directory_does_not_break_answers(env, tmp_path):
    # a cache directory that is a file makes every cache operation fail; the
    # helper still answers (the cache is an optimisation, never a reason)
    srv = ContainerSSHServer.reference()
    try:
        cfg = write_config(tmp_path, srv.url)
        cache = tmp_path / "cache"
        os.rmdir(cache)
        cache.write_text("not a directory")
        os.chmod(cache, stat.S_IRUSR | stat.S_IWUSR)
        r = run_keys(env["entry"], cfg, "foo", env["type"], env["key"])
        assert r.stdout.startswith(b"restrict,pty ")
        assert "Traceback" not in r.stderr
    finally:
        srv.close()
