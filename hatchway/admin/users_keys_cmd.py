"""`hatchway users …`, `hatchway keys …`, `hatchway webhook …`.

The commands work on the bundled webhook's store directly (SQLite copes with
the server using it at the same time); the server sees every change on its
next request.  Users are host accounts too, so `users add|remove` need root.
Output is a table for people, `--json` (the REST API's objects) for scripts;
every error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import sys

import click

from hatchway.core import sshkeys
from hatchway.webhook import token as admin_token
from hatchway.webhook.store import DEFAULT_PATH, Store, StoreError, check_image, check_user_name

from . import accounts


def fail(msg: str) -> None:
    click.echo(f"hatchway: {msg}", err=True)
    sys.exit(1)


def one_line_errors(fn):
    """Turn the errors an admin can cause or fix into `hatchway: <why>`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (StoreError, accounts.AccountError, admin_token.TokenError, sshkeys.BadKey) as e:
            fail(str(e))
        except sqlite3.Error as e:
            fail(f"key store {kwargs.get('db', DEFAULT_PATH)}: {e}")
        except OSError as e:
            fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    return wrapper


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(f"{what} changes host accounts: run it as root")


def open_store(path: str) -> Store:
    try:
        return Store(path)
    except (sqlite3.Error, OSError) as e:
        fail(f"cannot open the key store {path}: {getattr(e, 'strerror', None) or e}")


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


db_option = click.option("--db", default=DEFAULT_PATH, show_default=True,
                         help="the bundled webhook's store")
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def register(cli: click.Group, on_user_removed=None) -> None:
    """Attach the users/keys/webhook groups to the top-level `hatchway` command.
    `on_user_removed(name)` ends that user's live sessions (hatchway/admin/main.py knows how)."""

    @cli.group()
    def users():
        """Manage Hatchway users (host account + entry in the bundled webhook)."""

    @users.command("add")
    @click.argument("name")
    @click.option("--key", "key_source", metavar="FILE|-", help="register this public key")
    @click.option("--image", help="container image for this user")
    @json_option
    @db_option
    @one_line_errors
    def users_add(name, key_source, image, as_json, db):
        """Create the container user NAME: host account and webhook entry."""
        need_root("users add")
        check_user_name(name)
        check_image(image)
        key = read_key(key_source) if key_source else None
        store = open_store(db)
        registered = store.has_user(name)
        if registered and accounts.is_member(name):
            fail(f"user {name} already exists")
        created = accounts.create(name)
        try:
            if registered:      # registered through the REST API: this gives it an account
                if image is not None:
                    store.set_image(name, image)
                if key is not None:
                    store.add_key(name, key)
            else:
                store.add_user(name, image, [key] if key else [])
        except BaseException:
            if created:
                accounts.remove(name)
            raise
        if as_json:
            dump(store.user(name))
        else:
            click.echo(f"added user {name}" + (f" with key {key.fingerprint}" if key else ""))

    @users.command("remove")
    @click.argument("name")
    @db_option
    @one_line_errors
    def users_remove(name, db):
        """Remove user NAME: live sessions, account and keys."""
        need_root("users remove")
        store = open_store(db)
        try:
            accounts.check_free(name)   # an account, if any, must be a Hatchway user's
        except accounts.AccountError:
            fail(f"{name} is not a Hatchway user; not removing it")
        had_entry = store.remove_user(name)
        had_account = accounts.remove(name, end_sessions=on_user_removed)
        if not (had_account or had_entry):
            fail(f"no such user {name}")
        click.echo(f"removed user {name}")

    @users.command("list")
    @json_option
    @db_option
    @one_line_errors
    def users_list(as_json, db):
        """List registered users."""
        rows = open_store(db).users()
        if as_json:
            dump(rows)
            return
        for r in rows:
            r["account"] = "yes" if r["account"] else "MISSING"
        table(rows, ["name", "keys", "image", "account", "created"], "no users")

    @users.command("passwd")
    @click.argument("name")
    @click.option("--clear", is_flag=True, help="remove the password")
    @db_option
    @one_line_errors
    def users_passwd(name, clear, db):
        """Set NAME's password for the webhook's /password (read from standard input).

        Only ContainerSSH-style servers ask /password, and the webhook answers
        it only when started with --allow-passwords."""
        store = open_store(db)
        if clear:
            store.set_password(name, None)
            click.echo(f"cleared the password of {name}")
            return
        store.user(name)                    # no prompting for a user that is not there
        if sys.stdin.isatty():
            password = click.prompt("password", hide_input=True, confirmation_prompt=True)
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        store.set_password(name, password)
        click.echo(f"set the password of {name}")

    @cli.group()
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

    @cli.group()
    def webhook():
        """The bundled auth/config webhook and its admin API."""

    @webhook.command("serve")
    @click.option("--listen", default="127.0.0.1:8642", show_default=True, metavar="ADDR:PORT")
    @click.option("--allow-passwords", is_flag=True,
                  help="answer /password from the passwords `users passwd` sets")
    @db_option
    def webhook_serve(listen, allow_passwords, db):
        """Serve the ContainerSSH-compatible webhook and the admin API."""
        from hatchway.webhook.server import parse_listen, serve
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format="%(levelname)s %(message)s")
        try:
            parse_listen(listen)
        except ValueError as e:
            fail(f"--listen: {e}")
        try:
            serve(listen, db, allow_passwords)
        except (sqlite3.Error, OSError) as e:
            fail(f"cannot serve on {listen} with store {db}: "
                 f"{getattr(e, 'strerror', None) or e}")
        except KeyboardInterrupt:
            pass

    @webhook.command("token")
    @click.option("--rotate", is_flag=True, help="replace the token with a new one")
    @click.option("--token-file", default=admin_token.DEFAULT_FILE, show_default=True)
    @db_option
    @one_line_errors
    def webhook_token(rotate, token_file, db):
        """Create (or rotate) the admin API's bearer token.

        The token is written to --token-file (mode 0600, root only); the store
        keeps only its SHA-256, so the unprivileged server can check it."""
        action = admin_token.ensure(open_store(db), token_file, rotate)
        click.echo(f"admin token {action}: {token_file}")
