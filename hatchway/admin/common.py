"""What every `hatchway` command shares: one-line errors, the config, the key
store, tables and JSON.

Every error is one line on stderr (`hatchway: <why>`) and exit status 1;
output is a table for people, `--json` (the REST API's objects) for scripts.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
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
    try:
        return Store(path)
    except (sqlite3.Error, OSError) as e:
        fail(f"cannot open the key store {path}: {getattr(e, 'strerror', None) or e}")


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
