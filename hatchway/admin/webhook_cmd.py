"""`hatchway webhook serve|token`: the bundled auth/config webhook and its
admin API's token."""

from __future__ import annotations

import logging
import sqlite3
import sys

import click

from hatchway.webhook import token as admin_token

from .common import db_option, fail, one_line_errors, open_store


@click.group()
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
