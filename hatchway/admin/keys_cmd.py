"""`hatchway keys add|list|remove`: public keys in the bundled webhook's store."""

from __future__ import annotations

import os
import sys

import click

from hatchway.core import sshkeys

from .common import db_option, dump, fail, json_option, one_line_errors, open_store, table


def read_key(source: str) -> sshkeys.PublicKey:
    try:
        if source == "-":
            text = sys.stdin.read(1 << 20)
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read(1 << 20)
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read a key from {source}: {getattr(e, 'strerror', None) or e}")
    try:
        return sshkeys.parse_text(text)
    except sshkeys.BadKey as e:
        fail(f"{'standard input' if source == '-' else source}: {e}")


@click.group()
def keys():
    """Manage public keys in the bundled webhook."""


@keys.command("add")
@click.argument("name")
@click.argument("source", metavar="FILE|-")
@click.option("--from", "source_patterns", metavar="PATTERNS",
              help="allowed client addresses, comma-separated, e.g. 10.0.0.0/8")
@click.option("--expiry", metavar="TIME",
              help="the key stops working then (UTC; 2027-01-31T18:00 or 202701311800)")
@json_option
@db_option
@one_line_errors
def keys_add(name, source, source_patterns, expiry, as_json, db):
    """Register a public key for NAME."""
    key = read_key(source)
    row = open_store(db).add_key(name, key, source_patterns, expiry)
    if as_json:
        dump(row)
    else:
        click.echo(f"added key {key.fingerprint} for {name}")


@keys.command("list")
@click.argument("name", required=False)
@json_option
@db_option
@one_line_errors
def keys_list(name, as_json, db):
    """List keys (of NAME, or of everyone)."""
    rows = open_store(db).keys(name)
    if as_json:
        dump(rows)
    else:
        table(rows, ["user", "fingerprint", "type", "comment", "from", "expiry"], "no keys")


@keys.command("remove")
@click.argument("name")
@click.argument("key", metavar="FINGERPRINT|FILE|-")
@db_option
@one_line_errors
def keys_remove(name, key, db):
    """Remove a key from NAME, named by its fingerprint (as `keys list` and
    `ssh-keygen -l` show it) or given as a public key file."""
    fingerprint = read_key(key).fingerprint if key == "-" or os.path.isfile(key) else key
    open_store(db).remove_key(name, fingerprint)
    click.echo(f"removed key {fingerprint} from {name}")
