"""The bundled webhook's store: users, their keys, and the admin token's hash,
in one SQLite file under /var/lib/hatchway/webhook.

The webhook server (user hatchway-webhook) and any number of root admin
commands use it at once.  WAL mode lets readers go on while one writer works;
every write is one short `BEGIN IMMEDIATE` transaction, which waits for the
write lock (busy timeout) instead of failing half-way with "database is locked".

Everything that enters the store is checked here, so the CLI and the REST API
refuse the same things with the same one-line reasons; `StoreError.status` is
the HTTP status the REST API answers with.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import sqlite3
import time
from contextlib import contextmanager

from hatchway.core import identity, sshkeys
from hatchway.core.errors import HatchwayError

DEFAULT_PATH = "/var/lib/hatchway/webhook/keys.db"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name      TEXT PRIMARY KEY,
    image     TEXT,
    password  TEXT,           -- scrypt hash (see hash_password), or NULL
    created   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id          INTEGER PRIMARY KEY,
    user        TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    type        TEXT NOT NULL,
    data        TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL,
    source      TEXT,          -- comma-separated sshd from= patterns, or NULL
    expiry      TEXT,          -- ISO 8601 UTC, or NULL
    created     REAL NOT NULL,
    UNIQUE (user, fingerprint)
);
CREATE INDEX IF NOT EXISTS keys_by_blob ON keys (user, type, data);
CREATE TABLE IF NOT EXISTS settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"""

# Docker image references: registry[:port]/path[:tag][@digest], no spaces or
# shell characters (the image name travels to the Docker API, never a shell).
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_FINGERPRINT = re.compile(r"^(SHA256:)?([A-Za-z0-9+/]{43})=?$")
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
MAX_PASSWORD = 1024


class Refused(HatchwayError):
    """A request the webhook refuses, with the HTTP status (and headers) it
    answers; one line for the admin or the client."""
    status = 400

    def __init__(self, message: str, status: int | None = None, headers: dict | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers = headers or {}


class StoreError(Refused):
    """Refused input or state of the store (the CLI and the REST API alike)."""


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ input checks

def check_user_name(name) -> str:
    """Debian's rules plus: not an existing account that is not ours."""
    if not isinstance(name, str):
        raise StoreError("user name must be a string")
    try:
        identity.check_name(name)
        identity.check_free(name)
    except identity.NameRefused as e:
        raise StoreError(str(e)) from None
    return name


def check_image(image) -> str | None:
    if image is None:
        return None
    if not isinstance(image, str) or not _IMAGE.fullmatch(image) or "//" in image:
        shown = image if isinstance(image, str) and image.isprintable() else "(unprintable)"
        raise StoreError(f"invalid image reference {shown[:80]!r}")
    return image


def check_source(patterns) -> str | None:
    """sshd from= patterns, as a list or one comma-separated string -> stored form."""
    from hatchway.core.webhook_client import WebhookError, extension_options
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",")]
    try:
        extension_options({"from": patterns})
    except WebhookError:
        raise StoreError("'from' must be a non-empty list of address patterns such as "
                         "10.0.0.0/8, 192.0.2.* or !192.0.2.1") from None
    return ",".join(patterns)


def check_expiry(value, now: float | None = None) -> str | None:
    """ISO 8601, sshd's YYYYMMDD[HHMM[SS]] or Unix seconds -> ISO 8601 UTC, in the future."""
    from hatchway.core.webhook_client import WebhookError, expiry_time
    if value is None:
        return None
    try:
        sshd_form = expiry_time(value).rstrip("Z").ljust(14, "0")
        t = dt.datetime.strptime(sshd_form, "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
    except (WebhookError, ValueError):
        raise StoreError("expiry must be a time such as 2027-01-31T18:00:00Z or 202701311800 "
                         "(UTC)") from None
    if t.timestamp() <= (time.time() if now is None else now):
        raise StoreError(f"expiry {t:%Y-%m-%dT%H:%M:%SZ} is in the past")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_fingerprint(fp) -> str:
    """`SHA256:…` as `ssh-keygen -l` prints it (the prefix may be left out)."""
    m = _FINGERPRINT.fullmatch(fp) if isinstance(fp, str) else None
    if not m:
        raise StoreError("a key fingerprint looks like SHA256:<43 base64 characters>, "
                         "as `ssh-keygen -l` or `hatchway keys list` shows it")
    return "SHA256:" + m.group(2)


def hash_password(password: str) -> str:
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD:
        raise StoreError(f"a password must be a non-empty string of at most {MAX_PASSWORD} "
                         "characters")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "scrypt$%d$%d$%d$%s$%s" % (_SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"],
                                      base64.b64encode(salt).decode(),
                                      base64.b64encode(digest).decode())


def password_matches(stored: str | None, password: bytes) -> bool:
    try:
        scheme, n, r, p, salt, digest = (stored or "").split("$")
        if scheme != "scrypt" or len(password) > MAX_PASSWORD * 4:
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# ------------------------------------------------------------------ the store

class Store:
    def __init__(self, path: str = DEFAULT_PATH, setup: bool = True):
        """Open the store; with `setup`, create or upgrade its schema first.
        The webhook server opens one connection per thread with setup=False."""
        self.path = path
        if setup:
            _create_owned(path)
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                  check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.execute("PRAGMA foreign_keys = ON")
        if setup:
            self._setup()

    def _setup(self) -> None:
        if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.db.execute("PRAGMA journal_mode = WAL")
        with self.tx() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            # a store from before version 1 lacks this column
            cols = {r["name"] for r in db.execute("PRAGMA table_info(users)")}
            if "password" not in cols:
                db.execute("ALTER TABLE users ADD COLUMN password TEXT")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- users

    def add_user(self, name: str, image: str | None = None,
                 keys: list[sshkeys.PublicKey] = ()) -> dict:
        check_user_name(name)
        check_image(image)
        with self.tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"user {name} already exists")
            db.execute("INSERT INTO users (name, image, created) VALUES (?, ?, ?)",
                       (name, image, time.time()))
            for key in keys:
                self._insert_key(db, name, key, None, None)
        return self.user(name)

    def set_image(self, name: str, image: str | None) -> dict:
        check_image(image)
        with self.tx() as db:
            if db.execute("UPDATE users SET image = ? WHERE name = ?", (image, name)).rowcount == 0:
                raise NotFound(f"no such user {name}")
        return self.user(name)

    def set_password(self, name: str, password: str | None) -> None:
        hashed = None if password is None else hash_password(password)
        with self.tx() as db:
            if db.execute("UPDATE users SET password = ? WHERE name = ?",
                          (hashed, name)).rowcount == 0:
                raise NotFound(f"no such user {name}")

    def check_password(self, name: str, password: bytes) -> bool:
        row = self.db.execute("SELECT password FROM users WHERE name = ?", (name,)).fetchone()
        return bool(row) and password_matches(row["password"], password)

    def remove_user(self, name: str) -> bool:
        """Remove the user and (cascading) their keys; false if there was none."""
        with self.tx() as db:
            return db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    def user(self, name: str) -> dict:
        """The user as the API shows it; NotFound if not registered."""
        rows = self._users("WHERE u.name = ?", (name,))
        if not rows:
            raise NotFound(f"no such user {name}")
        return rows[0]

    def has_user(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None

    def image(self, name: str) -> str | None:
        row = self.db.execute("SELECT image FROM users WHERE name = ?", (name,)).fetchone()
        return row["image"] if row else None

    def users(self) -> list[dict]:
        return self._users("", ())

    def _users(self, where: str, args: tuple) -> list[dict]:
        rows = self.db.execute(
            "SELECT u.name, u.image, u.password IS NOT NULL AS password, u.created, "
            "COUNT(k.id) AS keys FROM users u LEFT JOIN keys k ON k.user = u.name "
            f"{where} GROUP BY u.name ORDER BY u.name", args).fetchall()
        return [{"name": r["name"], "image": r["image"], "keys": r["keys"],
                 "password": bool(r["password"]), "account": identity.is_member_name(r["name"]),
                 "created": _iso(r["created"])} for r in rows]

    # -- keys

    def add_key(self, user: str, key: sshkeys.PublicKey, source=None, expiry=None) -> dict:
        source, expiry = check_source(source), check_expiry(expiry)
        with self.tx() as db:
            if not db.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone():
                raise NotFound(f"no such user {user}")
            self._insert_key(db, user, key, source, expiry)
        return self.key(user, key.fingerprint)

    @staticmethod
    def _insert_key(db, user, key, source, expiry) -> None:
        if db.execute("SELECT 1 FROM keys WHERE user = ? AND fingerprint = ?",
                      (user, key.fingerprint)).fetchone():
            raise Conflict(f"user {user} already has key {key.fingerprint}")
        db.execute("INSERT INTO keys (user, type, data, comment, fingerprint, source, expiry, "
                   "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (user, key.type, key.b64, key.comment, key.fingerprint, source, expiry,
                    time.time()))

    def key(self, user: str, fingerprint: str) -> dict:
        fingerprint = check_fingerprint(fingerprint)
        if not self.has_user(user):
            raise NotFound(f"no such user {user}")
        row = self.db.execute("SELECT * FROM keys WHERE user = ? AND fingerprint = ?",
                              (user, fingerprint)).fetchone()
        if row is None:
            raise NotFound(f"user {user} has no key {fingerprint}")
        return _key_view(row)

    def keys(self, user: str | None = None) -> list[dict]:
        if user is None:
            rows = self.db.execute("SELECT * FROM keys ORDER BY user, id").fetchall()
        else:
            if not self.has_user(user):
                raise NotFound(f"no such user {user}")
            rows = self.db.execute("SELECT * FROM keys WHERE user = ? ORDER BY id",
                                   (user,)).fetchall()
        return [_key_view(r) for r in rows]

    def remove_key(self, user: str, fingerprint: str) -> None:
        fingerprint = check_fingerprint(fingerprint)
        with self.tx() as db:
            if not db.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone():
                raise NotFound(f"no such user {user}")
            if db.execute("DELETE FROM keys WHERE user = ? AND fingerprint = ?",
                          (user, fingerprint)).rowcount == 0:
                raise NotFound(f"user {user} has no key {fingerprint}")

    def find_key(self, user: str, key_type: str, data: str) -> dict | None:
        """The stored key a /pubkey request names, or None."""
        row = self.db.execute("SELECT * FROM keys WHERE user = ? AND type = ? AND data = ?",
                              (user, key_type, data)).fetchone()
        return _key_view(row) if row else None

    # -- settings

    def setting(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return row["value"] if row else None

    def set_setting(self, name: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO settings (name, value) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value))


def _key_view(row) -> dict:
    key = sshkeys.PublicKey(row["type"], base64.b64decode(row["data"]), row["comment"])
    return {"user": row["user"], "fingerprint": row["fingerprint"], "type": row["type"],
            "comment": row["comment"], "key": key.openssh(),
            "from": row["source"].split(",") if row["source"] else None,
            "expiry": row["expiry"], "created": _iso(row["created"])}


def _create_owned(path: str) -> None:
    """Create an empty store file owned like its directory before SQLite sees it.

    The webhook runs as hatchway-webhook and must be able to write the file; as
    root SQLite gives the -wal/-shm files it creates the database file's owner,
    so getting the file right first gets them right too (creating it through
    sqlite3 as root and chowning afterwards would leave root-owned -wal/-shm
    behind whenever the process ends without closing the connection)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    except FileExistsError:
        return
    try:
        parent = os.stat(os.path.dirname(os.path.abspath(path)))
        if os.geteuid() == 0 and parent.st_uid != 0:
            os.fchown(fd, parent.st_uid, parent.st_gid)
    finally:
        os.close(fd)
