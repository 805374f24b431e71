"""Admins manage users and keys out of the box: `hatchway users|keys|webhook`
and the bundled webhook's admin REST API, against the installed package, the
running webhook and Debian's sshd."""

import http.client
import json
import os
import pwd
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import jsonschema
import pexpect
import pytest
import yaml

from .stack import IMAGE, WEBHOOK_PORT, run
from .test_config import inspect_session

OPENAPI = Path("/usr/share/hatchway/openapi/hatchway-admin.yaml")
PROMPT = r"[#$] "


def cli(hw, *args, check=True, input=None) -> subprocess.CompletedProcess:
    """The installed `hatchway`, on the e2e stack's store."""
    p = subprocess.run(["hatchway", *args, "--db", str(hw.db)], capture_output=True, text=True,
                       input=input, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"hatchway {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def fingerprint(pubfile) -> str:
    return run(["ssh-keygen", "-lf", str(pubfile)]).stdout.split()[1]


@pytest.fixture
def users(hw):
    """Names a test creates; removed (account, keys, sessions) afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        cli(hw, "users", "remove", name, check=False)


# ------------------------------------------------------------------ accounts and logins

def test_users_add_makes_a_container_user_who_logs_in(hw, users):
    key = hw.keygen("dora")
    users.append("dora")
    out = cli(hw, "users", "add", "dora", "--key", f"{key}.pub").stdout
    assert out == f"added user dora with key {fingerprint(f'{key}.pub')}\n"

    # the account admin/accounts.py describes: nothing the user controls is read on the host
    pw = pwd.getpwnam("dora")
    assert pw.pw_shell == "/bin/sh"
    assert pw.pw_dir == "/var/lib/hatchway/homes/dora"
    home = os.stat(pw.pw_dir)
    assert (home.st_uid, home.st_gid, home.st_mode & 0o777) == (0, 0, 0o755)
    assert run(["getent", "shadow", "dora"]).stdout.split(":")[1] == "*"
    assert sorted(run(["id", "-nG", "dora"]).stdout.split()) == ["dora", "hatchway-users"]

    [row] = [u for u in json.loads(cli(hw, "users", "list", "--json").stdout)
             if u["name"] == "dora"]
    assert (row["keys"], row["account"], row["image"]) == (1, True, None)
    [k] = json.loads(cli(hw, "keys", "list", "dora", "--json").stdout)
    assert k["fingerprint"] == fingerprint(f"{key}.pub")      # as ssh-keygen -l shows it
    assert k["key"] == Path(f"{key}.pub").read_text().strip()

    p = hw.ssh("dora", "cat /etc/hatchway-demo")
    assert (p.returncode, p.stdout) == (0, b"inside a Hatchway demo container\n"), p.stderr


@pytest.mark.config({"auth": {"cache": {"ttl": "1s"}}})
def test_keys_remove_stops_logins_with_that_key_only(hw, users):
    old, new = hw.keygen("ezra"), hw.keygen("ezra_new")
    users.append("ezra")
    cli(hw, "users", "add", "ezra", "--key", f"{old}.pub")
    cli(hw, "keys", "add", "ezra", f"{new}.pub")
    assert hw.ssh("ezra", "true", key=old).returncode == 0
    last_yes = time.monotonic()

    out = cli(hw, "keys", "remove", "ezra", fingerprint(f"{old}.pub")).stdout
    assert out.startswith("removed key SHA256:")
    # the key helper may reuse its "yes" for auth.cache.ttl (1 s here, 10 s by
    # default); past that, the key is refused
    time.sleep(max(0.0, last_yes + 1.5 - time.monotonic()))
    p = hw.ssh("ezra", "true", key=old)
    assert p.returncode == 255 and b"Permission denied" in p.stderr
    assert hw.ssh("ezra", "true", key=new).returncode == 0
    # and by key file instead of fingerprint
    cli(hw, "keys", "remove", "ezra", f"{new}.pub")
    assert json.loads(cli(hw, "keys", "list", "ezra", "--json").stdout) == []


def test_users_remove_ends_the_live_session_and_the_account(hw, users):
    hw.keygen("finn")
    users.append("finn")
    cli(hw, "users", "add", "finn", "--key", f"{hw.keys['finn']}.pub")
    c = hw.spawn("finn")
    c.expect(PROMPT)
    hw.one_container(user="finn")

    out = cli(hw, "users", "remove", "finn").stdout
    assert out == "removed user finn\n"
    c.expect(pexpect.EOF, timeout=60)
    c.close()
    assert c.exitstatus != 0 or c.signalstatus is not None
    hw.wait_no_containers(timeout=30, user="finn")
    with pytest.raises(KeyError):
        pwd.getpwnam("finn")
    assert not Path("/var/lib/hatchway/homes/finn").exists()
    p = cli(hw, "keys", "list", "finn", check=False)
    assert (p.returncode, p.stderr) == (1, "hatchway: no such user finn\n")
    p = hw.ssh("finn", "true")
    assert p.returncode == 255 and b"Permission denied" in p.stderr
    p = cli(hw, "users", "remove", "finn", check=False)
    assert (p.returncode, p.stderr) == (1, "hatchway: no such user finn\n")


# ------------------------------------------------------------------ CLI input and output

def test_bad_input_is_one_line_and_changes_nothing(hw, tmp_path):
    priv = hw.keygen("gus")
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("ssh-ed25519 bm90IGEga2V5\n")
    two = tmp_path / "two.pub"
    two.write_text(Path(f"{priv}.pub").read_text() * 2)
    alice_pub = f"{hw.keys['alice']}.pub"
    unknown_fp = fingerprint(f"{priv}.pub")
    before_users = cli(hw, "users", "list", "--json").stdout
    before_keys = cli(hw, "keys", "list", "--json").stdout
    cases = [
        (["users", "add", "Gus"], "invalid user name 'Gus'"),
        (["users", "add", "gus;id"], "invalid user name"),
        (["users", "add", "-", "--key", alice_pub], "invalid user name"),
        (["users", "add", "g" * 33], "invalid user name"),
        (["users", "add", "root"], "reserved"),
        (["users", "add", pwd.getpwuid(2).pw_name], "existing account that is not a Hatchway user"),
        (["users", "add", "carol"], "existing account that is not a Hatchway user"),
        (["users", "add", "gus", "--key", "/nonexistent.pub"], "cannot read a key from"),
        (["users", "add", "gus", "--key", str(priv)], "private key"),
        (["users", "add", "gus", "--key", str(garbage)], "does not hold a ssh-ed25519 key"),
        (["users", "add", "gus", "--key", str(two)], "exactly one public key, found 2"),
        (["users", "add", "gus", "--image", "x; rm -rf /"], "invalid image"),
        (["users", "add", "alice"], "user alice already exists"),
        (["users", "add"], "Missing argument 'NAME'"),
        (["users", "remove", "carol"], "carol is not a Hatchway user"),
        (["users", "remove", "nobody-here"], "no such user nobody-here"),
        (["keys", "add", "alice", alice_pub], "already has key SHA256:"),
        (["keys", "add", "nobody-here", f"{priv}.pub"], "no such user nobody-here"),
        (["keys", "add", "alice", f"{priv}.pub", "--expiry", "20010101"], "in the past"),
        (["keys", "add", "alice", f"{priv}.pub", "--expiry", "soon"], "expiry must be a time"),
        (["keys", "add", "alice", f"{priv}.pub", "--from", 'x" command="sh'], "'from'"),
        (["keys", "list", "nobody-here"], "no such user nobody-here"),
        (["keys", "remove", "alice", "SHA256:nope"], "fingerprint looks like"),
        (["keys", "remove", "alice", unknown_fp], f"user alice has no key {unknown_fp}"),
        (["webhook", "serve", "--listen", "nowhere"], "--listen: expected ADDR:PORT"),
    ]
    for argv, reason in cases:
        p = cli(hw, *argv, check=False)
        assert p.returncode != 0, argv
        assert p.stdout == "", argv
        assert p.stderr.startswith("hatchway: ") and p.stderr.count("\n") == 1, (argv, p.stderr)
        assert reason in p.stderr, (argv, p.stderr)
    with pytest.raises(KeyError):
        pwd.getpwnam("gus")
    assert cli(hw, "users", "list", "--json").stdout == before_users
    assert cli(hw, "keys", "list", "--json").stdout == before_keys


def test_tables_for_people_json_for_scripts(hw):
    table = cli(hw, "users", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "KEYS", "IMAGE", "ACCOUNT", "CREATED"]
    alice = [line.split() for line in table if line.startswith("alice ")][0]
    rows = json.loads(cli(hw, "keys", "list", "alice", "--json").stdout)
    # keys, account (no image); other test files may have given alice more keys
    assert alice[1:3] == [str(len(rows)), "yes"] and len(rows) >= 1
    keys = cli(hw, "keys", "list", "alice").stdout.splitlines()
    assert keys[0].split() == ["USER", "FINGERPRINT", "TYPE", "COMMENT", "FROM", "EXPIRY"]
    assert ["alice", fingerprint(f"{hw.keys['alice']}.pub"), "ssh-ed25519", "alice@test"] in \
        [line.split()[:4] for line in keys[1:]]
    for k in rows:
        assert set(k) == {"user", "fingerprint", "type", "comment", "key", "from", "expiry",
                          "created"}


def test_key_restrictions_reach_sshd(hw, users):
    """--from and --expiry travel as the `hatchway` extension to the key helper,
    which hands them to sshd: a key limited to another network is refused."""
    ok, elsewhere = hw.keygen("hana"), hw.keygen("hana_far")
    users.append("hana")
    cli(hw, "users", "add", "hana")
    cli(hw, "keys", "add", "hana", f"{ok}.pub", "--from", "127.0.0.0/8", "--expiry", "20991231")
    cli(hw, "keys", "add", "hana", f"{elsewhere}.pub", "--from", "192.0.2.0/24")
    rows = {r["fingerprint"]: r for r in json.loads(cli(hw, "keys", "list", "hana",
                                                        "--json").stdout)}
    assert rows[fingerprint(f"{ok}.pub")]["expiry"] == "2099-12-31T00:00:00Z"
    assert hw.ssh("hana", "true", key=ok).returncode == 0
    p = hw.ssh("hana", "true", key=elsewhere)
    assert p.returncode == 255 and b"Permission denied" in p.stderr


def test_the_users_image_reaches_the_container_through_config(hw, users):
    """`users add --image` is answered on the bundled webhook's /config, in
    ContainerSSH's shape, which the daemon's config webhook client applies."""
    image = "hatchway/demo-admin:latest"
    run(["docker", "tag", IMAGE, image])
    try:
        hw.keygen("jade")
        users.append("jade")
        cli(hw, "users", "add", "jade", "--key", f"{hw.keys['jade']}.pub", "--image", image)
        hw.reconfigure({"config_webhook": {"url": f"http://127.0.0.1:{WEBHOOK_PORT}/config"}})
        assert inspect_session(hw, "jade")["Config"]["Image"] == image
        assert inspect_session(hw, "alice")["Config"]["Image"] == IMAGE
    finally:
        hw.wait_no_containers(timeout=30, user="jade")
        run(["docker", "rmi", image], check=False)


# ------------------------------------------------------------------ REST API

class Api:
    """A client of the running webhook's admin API that checks every reply
    against the shipped OpenAPI document and records what it has seen."""

    def __init__(self, token: str):
        self.doc = yaml.safe_load(OPENAPI.read_text())
        jsonschema.Draft202012Validator.check_schema(self.doc["components"]["schemas"]["Key"])
        self.resolver = jsonschema.RefResolver.from_schema(self.doc)
        self.token = token
        self.seen: set[tuple[str, str, str]] = set()

    def _deref(self, obj):
        while isinstance(obj, dict) and "$ref" in obj:
            obj = self.resolver.resolve(obj["$ref"])[1]
        return obj

    def __call__(self, method, template, params=(), body=None, token=..., raw_body=None):
        path = template
        for name, value in zip(("{name}", "{fingerprint}"), params):
            path = path.replace(name, quote(value, safe=":"))
        op = self.doc["paths"][template][method.lower()]
        if body is not None and raw_body is None:
            req = op["requestBody"]["content"]["application/json"]["schema"]
            try:                            # the documented schema describes what is accepted
                jsonschema.Draft202012Validator(req, resolver=self.resolver).validate(body)
                body_valid = True
            except jsonschema.ValidationError:
                body_valid = False
        headers = {"Content-Type": "application/json"}
        token = self.token if token is ... else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        c = http.client.HTTPConnection("127.0.0.1", WEBHOOK_PORT, timeout=30)
        data = raw_body if raw_body is not None else \
            (None if body is None else json.dumps(body).encode())
        c.request(method, path, data, headers)
        r = c.getresponse()
        payload = r.read()
        c.close()
        status = str(r.status)
        assert status in op["responses"], f"{method} {path}: undocumented status {status}"
        resp = self._deref(op["responses"][status])
        content = resp.get("content", {}).get("application/json")
        if content is None:
            assert payload == b"", f"{method} {path} {status}: body where none is documented"
            reply = None
        else:
            assert r.getheader("Content-Type") == "application/json"
            reply = json.loads(payload)
            jsonschema.Draft202012Validator(content["schema"], resolver=self.resolver) \
                .validate(reply)
        for header in resp.get("headers", {}):
            assert r.getheader(header), f"{method} {path} {status}: no {header} header"
        if body is not None and raw_body is None and status.startswith("2"):
            assert body_valid, f"{method} {path}: accepted a body its schema refuses: {body}"
        self.seen.add((template, method.lower(), status))
        return r.status, reply, r

    def documented(self) -> set[tuple[str, str, str]]:
        return {(path, method, status)
                for path, item in self.doc["paths"].items()
                for method, op in item.items() if method != "parameters"
                for status in op["responses"]}


@pytest.fixture
def api(hw, tmp_path):
    token_file = tmp_path / "admin-token"
    out = cli(hw, "webhook", "token", "--token-file", str(token_file)).stdout
    assert out == f"admin token created: {token_file}\n"
    assert token_file.stat().st_mode & 0o777 == 0o600
    return Api(token_file.read_text().strip())


def test_every_documented_operation_and_response(hw, api, users):
    """Walks the whole API; every (path, method, status) the OpenAPI document
    lists is produced at least once, and every reply matches its schema."""
    k1, k2 = hw.keygen("gina"), hw.keygen("gina_2")
    pub1, pub2 = Path(f"{k1}.pub").read_text(), Path(f"{k2}.pub").read_text()
    fp2 = fingerprint(f"{k2}.pub")
    users.append("gina")

    for template, params in (("/v1/users", ()), ("/v1/users/{name}", ("alice",)),
                             ("/v1/users/{name}/keys", ("alice",)),
                             ("/v1/users/{name}/keys/{fingerprint}", ("alice", fp2)),
                             ("/v1/users/{name}/password", ("alice",))):
        for method, op in api.doc["paths"][template].items():
            if method == "parameters":
                continue
            body = {} if "requestBody" in op else None
            for token in (None, "wrong", api.token + "x"):
                status, reply, r = api(method.upper(), template, params, body, token=token)
                assert status == 401 and r.getheader("WWW-Authenticate").startswith("Bearer")

    assert api("GET", "/v1/users")[0] == 200
    status, user, r = api("POST", "/v1/users", body={"name": "gina", "keys": [pub1]})
    assert status == 201 and r.getheader("Location") == "/v1/users/gina"
    assert (user["keys"], user["account"], user["image"]) == (1, False, None)
    assert api("POST", "/v1/users", body={"name": "gina"})[0] == 409
    assert api("POST", "/v1/users", body={"name": "Gina!"})[0] == 400
    assert api("POST", "/v1/users", body={"name": "ok", "shell": "/bin/bash"})[0] == 400
    assert api("POST", "/v1/users", raw_body=b"{not json")[0] == 400
    assert api("POST", "/v1/users", body={"name": "carol"})[1]["error"].startswith(
        "carol is an existing account")

    assert api("GET", "/v1/users/{name}", ("gina",))[1]["name"] == "gina"
    assert api("GET", "/v1/users/{name}", ("nobody-here",))[0] == 404
    assert api("PATCH", "/v1/users/{name}", ("gina",), {"image": "hatchway/demo:latest"})[1][
        "image"] == "hatchway/demo:latest"
    assert api("PATCH", "/v1/users/{name}", ("gina",), {"image": "no spaces"})[0] == 400
    assert api("PATCH", "/v1/users/{name}", ("nobody-here",), {"image": None})[0] == 404

    assert len(api("GET", "/v1/users/{name}/keys", ("gina",))[1]) == 1
    assert api("GET", "/v1/users/{name}/keys", ("nobody-here",))[0] == 404
    status, key, r = api("POST", "/v1/users/{name}/keys", ("gina",),
                         {"key": pub2, "from": ["127.0.0.0/8"], "expiry": "2099-12-31T23:59:00Z"})
    assert status == 201 and key["fingerprint"] == fp2
    assert r.getheader("Location") == f"/v1/users/gina/keys/{quote(fp2, safe=':')}"
    assert api("POST", "/v1/users/{name}/keys", ("gina",), {"key": pub2})[0] == 409
    assert api("POST", "/v1/users/{name}/keys", ("gina",), {"key": "ssh-rsa AAAA"})[0] == 400
    assert api("POST", "/v1/users/{name}/keys", ("nobody-here",), {"key": pub2})[0] == 404

    # the bundled webhook answers sshd's key helper from what the API stored
    status, reply = _pubkey("gina", pub2)
    assert reply == {"success": True, "authenticatedUsername": "gina",
                     "hatchway": {"from": ["127.0.0.0/8"], "expiry": "2099-12-31T23:59:00Z"}}

    assert api("GET", "/v1/users/{name}/keys/{fingerprint}", ("gina", fp2))[1]["from"] == \
        ["127.0.0.0/8"]
    assert api("GET", "/v1/users/{name}/keys/{fingerprint}", ("gina", "SHA256:x"))[0] == 400
    assert api("GET", "/v1/users/{name}/keys/{fingerprint}", ("alice", fp2))[0] == 404
    assert api("DELETE", "/v1/users/{name}/keys/{fingerprint}", ("gina", fp2))[0] == 204
    assert api("DELETE", "/v1/users/{name}/keys/{fingerprint}", ("gina", fp2))[0] == 404
    assert api("DELETE", "/v1/users/{name}/keys/{fingerprint}", ("gina", "nope"))[0] == 400
    assert _pubkey("gina", pub2)[1] == {"success": False}

    assert api("PUT", "/v1/users/{name}/password", ("gina",), {"password": "s3cret"})[0] == 204
    assert api("GET", "/v1/users/{name}", ("gina",))[1]["password"] is True
    assert api("PUT", "/v1/users/{name}/password", ("gina",), {"password": ""})[0] == 400
    assert api("PUT", "/v1/users/{name}/password", ("nobody-here",), {"password": "x"})[0] == 404
    assert api("DELETE", "/v1/users/{name}/password", ("gina",))[0] == 204
    assert api("DELETE", "/v1/users/{name}/password", ("nobody-here",))[0] == 404

    assert api("DELETE", "/v1/users/{name}", ("gina",))[0] == 204
    assert api("DELETE", "/v1/users/{name}", ("gina",))[0] == 404
    assert _pubkey("gina", pub1)[1] == {"success": False}

    assert sorted(api.documented() - api.seen) == []


def test_a_user_registered_over_rest_logs_in_once_root_adds_the_account(hw, api, users):
    key = hw.keygen("ivan")
    users.append("ivan")
    assert api("POST", "/v1/users", body={"name": "ivan",
                                          "keys": [Path(f"{key}.pub").read_text()]})[0] == 201
    p = hw.ssh("ivan", "true")                  # no host account yet: sshd refuses
    assert p.returncode == 255
    assert cli(hw, "users", "add", "ivan").stdout == "added user ivan\n"
    assert api("GET", "/v1/users/{name}", ("ivan",))[1]["account"] is True
    p = hw.ssh("ivan", "cat /etc/hatchway-demo")
    assert (p.returncode, p.stdout) == (0, b"inside a Hatchway demo container\n"), p.stderr


def _pubkey(user: str, key_line: str):
    c = http.client.HTTPConnection("127.0.0.1", WEBHOOK_PORT, timeout=30)
    c.request("POST", "/pubkey", json.dumps({"username": user, "publicKey": key_line.strip(),
                                             "remoteAddress": "127.0.0.1:4000",
                                             "connectionId": "e2e"}),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    reply = json.loads(r.read())
    c.close()
    return r.status, reply


# ------------------------------------------------------------------ concurrency and abuse

def test_concurrent_keys_add_while_the_server_answers(hw, users, tmp_path):
    users.append("hank")
    cli(hw, "users", "add", "hank")
    workers, per_worker = 6, 5
    for w in range(workers):
        for i in range(per_worker):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"w{w}k{i}",
                 "-f", str(tmp_path / f"w{w}k{i}")])
    alice_line = Path(f"{hw.keys['alice']}.pub").read_text()
    answers: list = []
    stop = threading.Event()

    def ask():
        while not stop.is_set():
            answers.append(_pubkey("alice", alice_line))
            time.sleep(0.01)

    asker = threading.Thread(target=ask)
    asker.start()
    script = 'for f in "$@"; do hatchway keys add hank "$f.pub" --db "$DB" || exit 1; done'
    procs = [subprocess.Popen(["sh", "-c", script, "sh",
                               *[str(tmp_path / f"w{w}k{i}") for i in range(per_worker)]],
                              env={**os.environ, "DB": str(hw.db)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for w in range(workers)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    stop.set()
    asker.join(60)

    for out, err, rc in results:
        assert rc == 0 and err == "", err
        assert out.count("added key") == per_worker
    stored = {k["fingerprint"] for k in json.loads(cli(hw, "keys", "list", "hank", "--json").stdout)}
    want = {fingerprint(tmp_path / f"w{w}k{i}.pub") for w in range(workers)
            for i in range(per_worker)}
    assert stored == want
    wrong = [a for a in answers if a != (200, {"success": True, "authenticatedUsername": "alice"})]
    assert answers and wrong == []
    log = (hw.tmp / "webhook.log").read_text(errors="replace")
    assert "locked" not in log and "Traceback" not in log


def test_the_server_survives_bad_clients(hw):
    def exchange(data: bytes) -> bytes:
        s = socket.create_connection(("127.0.0.1", WEBHOOK_PORT), timeout=30)
        try:
            s.sendall(data)
        except OSError:
            pass
        try:
            return s.recv(200)
        except OSError:
            return b""
        finally:
            s.close()

    stalled = socket.create_connection(("127.0.0.1", WEBHOOK_PORT), timeout=30)
    stalled.sendall(b"POST /pubkey HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"username\"")
    assert exchange(b"POST /pubkey HTTP/1.1\r\nContent-Length: 5\r\n\r\n{{{{{").startswith(
        b"HTTP/1.1 400")
    assert exchange(b"POST /pubkey HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n" +
                    b"x" * 100000).startswith(b"HTTP/1.1 413")
    assert exchange(b"\x00\xff garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert exchange(b"POST /v1/users HTTP/1.1\r\nContent-Length: 3\r\n\r\n[1]").startswith(
        b"HTTP/1.1 401")
    # with one client stalled mid-body, logins go on
    p = hw.ssh("alice", "echo still")
    assert (p.returncode, p.stdout) == (0, b"still\n"), p.stderr
    stalled.close()
    assert hw.procs["webhook"].poll() is None
    assert "Traceback" not in (hw.tmp / "webhook.log").read_text(errors="replace")


def test_webhook_token_rotation(hw, tmp_path):
    token_file = tmp_path / "admin-token"
    cli(hw, "webhook", "token", "--token-file", str(token_file))
    old = token_file.read_text().strip()
    assert cli(hw, "webhook", "token", "--token-file", str(token_file)).stdout == \
        f"admin token unchanged: {token_file}\n"
    assert cli(hw, "webhook", "token", "--rotate", "--token-file", str(token_file)).stdout == \
        f"admin token rotated: {token_file}\n"
    new = token_file.read_text().strip()
    assert new != old
    statuses = []
    for token in (old, new):
        c = http.client.HTTPConnection("127.0.0.1", WEBHOOK_PORT, timeout=30)
        c.request("GET", "/v1/users", headers={"Authorization": f"Bearer {token}"})
        statuses.append(c.getresponse().status)
        c.close()
    assert statuses == [401, 200]
    # the store (and its write-ahead log) keeps the hash, never the token
    for f in hw.db.parent.iterdir():
        assert new.encode() not in f.read_bytes(), f


# ------------------------------------------------------------------ the store's files

@pytest.mark.parametrize("planted", ["keys.db", "keys.db-wal"])
def test_root_never_follows_a_symlink_the_webhooks_user_planted(hw, planted):
    """The store's directory belongs to hatchway-webhook: whoever runs as that
    user can put a symlink where root's `hatchway` would have SQLite create a
    file.  Root must refuse, and nothing may appear where it points."""
    store = hw.tmp / f"planted-{planted}"      # (the stack's directory: others may enter)
    store.mkdir()
    if planted == "keys.db-wal":           # a real store, then its WAL replaced
        run(["hatchway", "users", "list", "--db", str(store / "keys.db")])
        (store / "keys.db-wal").unlink(missing_ok=True)
    run(["chown", "-R", "hatchway-webhook:hatchway-webhook", str(store)])
    target = Path(f"/root/hatchway-planted-{planted}")
    target.unlink(missing_ok=True)
    run(["setpriv", "--reuid=hatchway-webhook", "--regid=hatchway-webhook", "--clear-groups",
         "ln", "-s", str(target), str(store / planted)])
    try:
        p = subprocess.run(["hatchway", "users", "add", "mallory", "--db",
                            str(store / "keys.db")], capture_output=True, text=True, timeout=60)
        assert not target.exists(), "root created a file where the planted symlink points"
        assert p.returncode == 1
        assert p.stderr == f"hatchway: the key store file {store / planted} is a symbolic " \
                           "link; refusing to follow it\n"
    finally:
        target.unlink(missing_ok=True)
        cli(hw, "users", "remove", "mallory", check=False)
