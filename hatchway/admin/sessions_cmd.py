"""`hatchway sessions list|kill` and `hatchway gc`: live sessions, as the
configured backend lists their containers or pods."""

from __future__ import annotations

import json

import click

from hatchway.backends import labels, registry
from hatchway.backends.base import Backend, Found

from .common import config_option, fail, load_config, one_line_errors, table


def backend(config_path: str) -> Backend:
    return registry.make(load_config(config_path))


def end_sessions(user: str, config_path: str) -> int:
    """Remove every container/pod of `user`'s sessions; how many there were.
    Raises HatchwayError when the backend cannot be asked."""
    b = backend(config_path)
    found = b.list(user)
    for f in found:
        b.remove(f)
    return len(found)


def _row(f: Found) -> dict:
    lab = f.labels
    return {"session": lab.get(labels.SESSION, "")[:12], "user": lab.get(labels.USER),
            "mode": lab.get(labels.MODE), "container": f.name[:30], "state": f.state,
            "orphan": "no" if labels.owner_alive(lab) else "yes"}


@click.group()
def sessions():
    """Live sessions (their containers or pods)."""


@sessions.command("list")
@click.option("--json", "as_json", is_flag=True)
@config_option
@one_line_errors
def sessions_list(as_json, config_path):
    """List live sessions."""
    rows = [_row(f) for f in backend(config_path).list()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        table(rows, ["session", "user", "mode", "container", "state", "orphan"])


@sessions.command("kill")
@click.argument("ident")
@config_option
@one_line_errors
def sessions_kill(ident, config_path):
    """End a session (by session id prefix, container id/pod name prefix or user name)."""
    b = backend(config_path)
    hits = [f for f in b.list() if f.labels.get(labels.SESSION, "").startswith(ident)
            or f.name.startswith(ident) or f.labels.get(labels.USER) == ident]
    if not hits:
        fail(f"no session matches {ident!r}")
    for f in hits:
        b.remove(f)
    click.echo(f"ended {len(hits)} session(s)")


@click.command()
@config_option
@one_line_errors
def gc(config_path):
    """Remove containers whose session process is gone (what the reaper does)."""
    removed = backend(config_path).reap(labels.owner_alive)
    click.echo(f"removed {len(removed)} orphaned container(s)" +
               (": " + ", ".join(removed) if removed else ""))
