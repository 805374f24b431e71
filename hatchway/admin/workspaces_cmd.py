"""`hatchway workspaces list|stop|rm`: the containers or pods of `connection`
and `persistent` modes (backends/workspaces.py), as the configured backend
lists them, with what this host's record says about their sessions."""

from __future__ import annotations

import json
import time

import click

from hatchway.backends import labels, registry
from hatchway.backends import workspaces as W
from hatchway.backends.base import Backend, Found
from hatchway.daemon.limits import human

from .common import config_option, fail, load_config, one_line_errors, table


def _open(config_path: str) -> tuple[Backend, str]:
    cfg = load_config(config_path)
    return registry.make(cfg), W.root_for(cfg)


def found_workspaces(b: Backend, user: str | None = None) -> list[Found]:
    return [f for f in b.list(user) if W.is_workspace(f.labels)]


def row(f: Found, root: str, backend: str, now: float) -> dict:
    lab = f.labels
    rec = W.Record(lab[labels.WORKSPACE], root)
    meta, live = rec.meta(), rec.live()
    started = meta.get("started") or f.created
    if live:
        idle = "in use"
    elif not f.running:
        since = meta.get("stopped_at")
        idle = f"stopped {human(now - since)}" if isinstance(since, (int, float)) else "stopped"
    elif isinstance(meta.get("idle_since"), (int, float)):
        idle = human(max(0.0, now - meta["idle_since"]))
    else:
        idle = "?"
    return {"user": lab.get(labels.USER), "mode": lab.get(labels.MODE), "backend": backend,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
            if isinstance(started, (int, float)) else "",
            "idle": idle, "sessions": len(live), "container": lab[labels.WORKSPACE],
            "state": f.state}


@click.group()
def workspaces():
    """Workspaces: the containers of connection and persistent modes."""


@workspaces.command("list")
@click.option("--json", "as_json", is_flag=True)
@config_option
@one_line_errors
def workspaces_list(as_json, config_path):
    """List workspaces: user, mode, backend, started, idle, container or pod."""
    b, root = _open(config_path)
    now = time.time()
    rows = [row(f, root, b.cfg.backend, now) for f in found_workspaces(b)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        table(rows, ["user", "mode", "backend", "started", "idle", "sessions", "container",
                     "state"], empty="no workspaces")


@workspaces.command("stop")
@click.argument("user")
@config_option
@one_line_errors
def workspaces_stop(user, config_path):
    """Stop USER's persistent workspace now (its sessions end)."""
    b, root = _open(config_path)
    hits = [f for f in found_workspaces(b, user) if f.labels.get(labels.MODE) == "persistent"]
    if not hits:
        fail(f"{user} has no persistent workspace")
    for f in hits:
        rec = W.Record(f.labels[labels.WORKSPACE], root)
        with rec.lock():
            if not b.stop(f):
                fail(f"cannot stop {rec.name}")
            rec.set_meta(stopped_at=time.time(), idle_since=time.time())
        click.echo(f"stopped {rec.name}")


@workspaces.command("rm")
@click.argument("user")
@config_option
@one_line_errors
def workspaces_rm(user, config_path):
    """Remove USER's workspaces, with their file systems (their sessions end)."""
    b, root = _open(config_path)
    hits = found_workspaces(b, user)
    if not hits:
        fail(f"{user} has no workspace")
    for f in hits:
        rec = W.Record(f.labels[labels.WORKSPACE], root)
        with rec.lock():
            if not b.remove(f):
                fail(f"cannot remove {rec.name}")
            rec.forget()
        click.echo(f"removed {rec.name}")
