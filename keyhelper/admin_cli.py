"""`hatchway users …`, `hatchway keys …`, `hatchway webhook serve`.

The commands work on the bundled webhook's store directly (root only); the
server picks changes up on its next request.  Every error is one line on
stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import click

from . import accounts, sshkeys
from .store import DEFAULT_PATH, Store, StoreError


def fail(msg: str) -> None:
    click.echo(f"hatchway: {msg}", err=True)
    sys.exit(1)


def open_store(path: str) -> Store:
    try:
        return Store(path)
    except Exception as e:
        fail(f"cannot open the key store {path}: {e}")


def read_key(source: str) -> sshkeys.PublicKey:
    try:
        text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read key from {source}: {e}")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        fail(f"expected exactly one public key in {source}, found {len(lines)}")
    try:
        return sshkeys.parse_line(lines[0])
    except sshkeys.BadKey as e:
        fail(f"{source}: {e}")


def table(rows: list[dict], cols: list[str]) -> None:
    if not rows:
        return
    widths = [max(len(c), *(len(str(r.get(c) or "")) for r in rows)) for c in cols]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for r in rows:
        click.echo("  ".join(str(r.get(c) or "").ljust(w) for c, w in zip(cols, widths)).rstrip())


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


db_option = click.option("--db", default=DEFAULT_PATH, show_default=True,
                         help="the bundled webhook's key store")


def register(cli: click.Group, on_user_removed=None) -> None:
    """Attach the users/keys/webhook groups to the top-level `hatchway` command.
    `on_user_removed(name)` lets the caller end that user's live sessions."""

    @cli.group()
    def users():
        """Manage Hatchway users (host account + key store entry)."""

    @users.command("add")
    @click.argument("name")
    @click.option("--key", "key_source", metavar="FILE|-", help="register this public key")
    @click.option("--image", help="container image for this user")
    @db_option
    def users_add(name, key_source, image, db):
        """Create a container user NAME."""
        key = read_key(key_source) if key_source else None
        store = open_store(db)
        try:
            accounts.create(name)
            store.ensure_user(name)
            if image is not None:
                store.set_image(name, image)
            if key is not None:
                store.add_key(name, key)
        except (accounts.AccountError, StoreError) as e:
            fail(str(e))
        click.echo(f"added user {name}" + (f" with key {key.fingerprint}" if key else ""))

    @users.command("remove")
    @click.argument("name")
    @db_option
    def users_remove(name, db):
        """Remove user NAME: account, keys and live sessions."""
        store = open_store(db)
        try:
            had_account = accounts.is_member(name)
            had_entry = store.remove_user(name)
            if on_user_removed is not None and had_account:
                on_user_removed(name)
            accounts.remove(name)
        except accounts.AccountError as e:
            fail(str(e))
        if not (had_account or had_entry):
            fail(f"no such user {name}")
        click.echo(f"removed user {name}")

    @users.command("list")
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    @db_option
    def users_list(as_json, db):
        """List registered users."""
        rows = open_store(db).users()
        for r in rows:
            r["account"] = "yes" if accounts.is_member(r["name"]) else "MISSING"
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            for r in rows:
                r["created"] = _when(r["created"])
            table(rows, ["name", "keys", "image", "account", "created"])

    @cli.group()
    def keys():
        """Manage public keys in the bundled webhook's store."""

    @keys.command("add")
    @click.argument("name")
    @click.argument("source", metavar="FILE|-")
    @click.option("--from", "source_patterns", help="allowed client addresses, e.g. 10.0.0.0/8")
    @click.option("--expiry", help="key stops working at this time (YYYYMMDD[HHMM] UTC)")
    @db_option
    def keys_add(name, source, source_patterns, expiry, db):
        """Register a public key for NAME."""
        key = read_key(source)
        try:
            from .webhook_client import WebhookError, extension_options
            extension_options({"from": source_patterns.split(",")} if source_patterns else None)
            extension_options({"expiry": expiry} if expiry else None)
        except WebhookError as e:
            fail(str(e).replace("'hatchway.", "'--"))
        try:
            open_store(db).add_key(name, key, source_patterns, expiry)
        except StoreError as e:
            fail(str(e))
        click.echo(f"added key {key.fingerprint} for {name}")

    @keys.command("list")
    @click.argument("name", required=False)
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    @db_option
    def keys_list(name, as_json, db):
        """List keys (of NAME, or of everyone)."""
        rows = open_store(db).keys(name)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            for r in rows:
                r["created"] = _when(r["created"])
            table(rows, ["user", "fingerprint", "type", "comment", "source", "expiry"])

    @keys.command("remove")
    @click.argument("name")
    @click.argument("fingerprint")
    @db_option
    def keys_remove(name, fingerprint, db):
        """Remove key FINGERPRINT (as `keys list` shows it) from NAME."""
        if not open_store(db).remove_key(name, fingerprint):
            fail(f"{name} has no key {fingerprint}")
        click.echo(f"removed key {fingerprint} from {name}")

    @cli.group()
    def webhook():
        """The bundled auth/config webhook."""

    @webhook.command("serve")
    @click.option("--listen", default="127.0.0.1:8642", show_default=True)
    @db_option
    def webhook_serve(listen, db):
        """Serve the ContainerSSH-compatible webhook."""
        from .webhook_server import serve
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format="%(levelname)s %(message)s")
        try:
            serve(listen, db)
        except OSError as e:
            fail(f"cannot listen on {listen}: {e.strerror or e}")
        except KeyboardInterrupt:
            pass
