"""The bundled webhook's key store: one SQLite file under /var/lib/hatchway/webhook.

WAL mode and a busy timeout make it safe for the webhook server and any number
of admin commands at once; each write is one short transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager

from . import sshkeys

DEFAULT_PATH = "/var/lib/hatchway/webhook/keys.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name     TEXT PRIMARY KEY,
    image    TEXT,
    created  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id          INTEGER PRIMARY KEY,
    user        TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    type        TEXT NOT NULL,
    data        TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL,
    source      TEXT,          -- comma-separated from= patterns, or NULL
    expiry      TEXT,          -- sshd expiry-time, or NULL
    created     REAL NOT NULL,
    UNIQUE (user, fingerprint)
);
"""


class StoreError(Exception):
    pass


class Store:
    def __init__(self, path: str = DEFAULT_PATH):
        self.path = path
        new = not os.path.exists(path)
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                  check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.execute("PRAGMA foreign_keys = ON")
        if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.db.execute("PRAGMA journal_mode = WAL")
        self.db.executescript(SCHEMA)
        if new:
            os.chmod(path, 0o640)
            # The webhook runs as its own user and must own the file; SQLite then
            # gives the -wal/-shm files it creates as root the same owner.
            parent = os.stat(os.path.dirname(os.path.abspath(path)))
            if os.geteuid() == 0 and parent.st_uid != 0:
                os.chown(path, parent.st_uid, parent.st_gid)

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

    def add_user(self, name: str, image: str | None = None) -> None:
        with self.tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise StoreError(f"user {name} is already registered")
            db.execute("INSERT INTO users (name, image, created) VALUES (?, ?, ?)",
                       (name, image, time.time()))

    def ensure_user(self, name: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO users (name, created) VALUES (?, ?)",
                       (name, time.time()))

    def set_image(self, name: str, image: str | None) -> None:
        with self.tx() as db:
            if db.execute("UPDATE users SET image = ? WHERE name = ?", (image, name)).rowcount == 0:
                raise StoreError(f"no such user {name}")

    def remove_user(self, name: str) -> bool:
        with self.tx() as db:
            return db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    def user(self, name: str) -> dict | None:
        row = self.db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def users(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT u.name, u.image, u.created, COUNT(k.id) AS keys FROM users u "
            "LEFT JOIN keys k ON k.user = u.name GROUP BY u.name ORDER BY u.name").fetchall()
        return [dict(r) for r in rows]

    # -- keys

    def add_key(self, user: str, key: sshkeys.PublicKey, source: str | None = None,
                expiry: str | None = None) -> dict:
        with self.tx() as db:
            if not db.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone():
                raise StoreError(f"no such user {user}")
            if db.execute("SELECT 1 FROM keys WHERE user = ? AND fingerprint = ?",
                          (user, key.fingerprint)).fetchone():
                raise StoreError(f"user {user} already has key {key.fingerprint}")
            db.execute("INSERT INTO keys (user, type, data, comment, fingerprint, source, expiry, "
                       "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (user, key.type, key.b64, key.comment, key.fingerprint, source, expiry,
                        time.time()))
        return self.key(user, key.fingerprint)

    def key(self, user: str, fingerprint: str) -> dict | None:
        row = self.db.execute("SELECT * FROM keys WHERE user = ? AND fingerprint = ?",
                              (user, fingerprint)).fetchone()
        return dict(row) if row else None

    def keys(self, user: str | None = None) -> list[dict]:
        if user is None:
            rows = self.db.execute("SELECT * FROM keys ORDER BY user, id").fetchall()
        else:
            rows = self.db.execute("SELECT * FROM keys WHERE user = ? ORDER BY id",
                                   (user,)).fetchall()
        return [dict(r) for r in rows]

    def remove_key(self, user: str, fingerprint: str) -> bool:
        with self.tx() as db:
            return db.execute("DELETE FROM keys WHERE user = ? AND fingerprint = ?",
                              (user, fingerprint)).rowcount > 0

    def find_key(self, user: str, key_type: str, data: str) -> dict | None:
        row = self.db.execute("SELECT * FROM keys WHERE user = ? AND type = ? AND data = ?",
                              (user, key_type, data)).fetchone()
        return dict(row) if row else None
