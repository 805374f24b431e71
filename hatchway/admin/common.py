"""What every `hatchway` command shares: one-line errors, the config, the key
store, tables and JSON.

Every error is one line on stderr (`hatchway: <why>`) and exit status 1;
output is a table for people, `--json` (the REST API's objects) for scripts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import stat
import sys

import click

from hatchway.core import config as config_mod
from hatchway.core.errors import HatchwayError
from hatchway.webhook.store import DEFAULT_PATH, Store

config_option = click.option("--config", "config_path", default=config_mod.DEFAULT_PATH,
                             show_default=True, help="Hatchway's config file")
db_option = click.option("--db", default=DEFAULT_PATH, show_default=True,
                         help="the bundled webhook's store")
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def fail(msg: str) -> None:
    click.echo(f"hatchway: {msg}", err=True)
    sys.exit(1)


def one_line_errors(fn):
    """Turn the errors an admin can cause or fix into `hatchway: <why>`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HatchwayError as e:
            fail(e.message)
        except sqlite3.Error as e:
            fail(f"key store {kwargs.get('db', DEFAULT_PATH)}: {e}")
        except OSError as e:
            fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    return wrapper


def load_config(path: str):
    """The typed config, or a one-line failure."""
    try:
        return config_mod.typed(config_mod.load(path))
    except config_mod.ConfigError as e:
        fail(e.message)


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(f"{what} changes host accounts: run it as root")


def open_store(path: str) -> Store:
    """The store at `path`.  Run as root, every file access of the store is
    made with the rights of its directory's owner (the webhook's user), who
    could otherwise plant a symlink there (keys.db, keys.db-wal, keys.db-shm)
    and have root's SQLite create or overwrite any file it points to."""
    try:
        owner = _store_owner(path)
        if owner is None:
            return Store(path)
        with _rights_of(*owner):
            return _AsOwner(Store(path), owner)
    except (sqlite3.Error, OSError) as e:
        fail(f"cannot open the key store {path}: {getattr(e, 'strerror', None) or e}")


def _store_owner(path: str) -> tuple[int, int] | None:
    """(uid, gid) to act as on the store, or None (not root, or a root-owned
    directory).  Refuses symlinks and files its directory's owner did not make."""
    directory = os.path.dirname(os.path.abspath(path))
    st = os.stat(directory)
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            f = os.lstat(name)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(f.st_mode):
            fail(f"the key store file {name} is a symbolic link; refusing to follow it")
        if f.st_uid not in (0, st.st_uid):
            fail(f"the key store file {name} belongs to uid {f.st_uid}, not to the owner of "
                 f"{directory}; refusing to use it")
    if os.geteuid() != 0 or st.st_uid == 0:
        return None
    return st.st_uid, st.st_gid


@contextlib.contextmanager
def _rights_of(uid: int, gid: int):
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


class _AsOwner:
    """A Store whose every method runs with the rights of the store's owner."""

    def __init__(self, store: Store, owner: tuple[int, int]):
        self._store = store
        self._owner = owner

    def __getattr__(self, name):
        value = getattr(self._store, name)
        if not callable(value):
            return value

        def as_owner(*args, **kwargs):
            with _rights_of(*self._owner):
                return value(*args, **kwargs)
        return as_owner


def table(rows: list[dict], cols: list[str], empty: str = "") -> None:
    if not rows:
        if empty:
            click.echo(empty)
        return

    def cell(v) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, list):
            return ",".join(v)
        return "" if v is None else str(v)
    widths = [max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in cols]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for r in rows:
        click.echo("  ".join(cell(r.get(c)).ljust(w) for c, w in zip(cols, widths)).rstrip())


def dump(obj) -> None:
    click.echo(json.dumps(obj, indent=2))
