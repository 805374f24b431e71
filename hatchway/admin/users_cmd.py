"""`hatchway users add|remove|list|passwd`: a Hatchway user is a host account
(sshd needs one; admin/accounts.py) plus an entry in the bundled webhook's
store.  The store is used directly (SQLite copes with the server using it at
the same time); the server sees every change on its next request."""

from __future__ import annotations

import sys

import click

from hatchway.core import identity
from hatchway.core.errors import HatchwayError
from hatchway.webhook.store import check_image, check_user_name

from . import accounts
from .common import (config_option, db_option, dump, fail, json_option, need_root,
                     one_line_errors, open_store, table)
from .keys_cmd import read_key
from .sessions_cmd import end_sessions


@click.group()
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
    if registered and identity.is_member_name(name):
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
@config_option
@one_line_errors
def users_remove(name, db, config_path):
    """Remove user NAME: live sessions, account and keys."""
    need_root("users remove")
    store = open_store(db)
    try:
        identity.check_free(name)   # an account, if any, must be a Hatchway user's
    except identity.NameRefused:
        fail(f"{name} is not a Hatchway user; not removing it")
    had_entry = store.remove_user(name)
    unended = []

    def end(user: str) -> None:
        # Whatever the backend says, the account goes: its processes are
        # stopped anyway, and the reaper removes what their sessions leave.
        try:
            end_sessions(user, config_path)
        except HatchwayError as e:
            unended.append(e.message)
    had_account = accounts.remove(name, end_sessions=end)
    if not (had_account or had_entry):
        fail(f"no such user {name}")
    if unended:
        fail(f"removed user {name}, but could not end its sessions ({unended[0]}); "
             "the reaper removes them once the backend answers")
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
