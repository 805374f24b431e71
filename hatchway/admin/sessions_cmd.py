"""`hatchway sessions list|kill` and `hatchway gc`: live sessions, as their
own processes record them (daemon/live.py), and their containers or pods, as
the configured backend lists them.  A session in a workspace (connection and
persistent modes) has a record like any other; the workspace itself is
`hatchway workspaces`' (workspaces_cmd.py)."""

from __future__ import annotations

import json
import os
import signal
import time

import click

from hatchway.backends import labels, registry
from hatchway.backends import workspaces as W
from hatchway.backends.base import Backend
from hatchway.daemon import live, recording

from .common import config_option, fail, load_config, one_line_errors, table


def backend(cfg) -> Backend:
    return registry.make(cfg)


def end_sessions(user: str, config_path: str) -> int:
    """Remove every container/pod of `user`'s sessions, workspaces included
    (the account is going); how many there were.  Raises HatchwayError when
    the backend cannot be asked."""
    b = backend(load_config(config_path))
    found = b.list(user)
    for f in found:
        b.remove(f)
    return len(found)


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def rows(cfg) -> list[dict]:
    """Live sessions from their records, then the containers of the backend
    that no live session record claims: running (their owner lives but keeps
    no record) or orphan (the reaper will remove them)."""
    out, claimed = [], set()
    for rec in live.records(cfg.daemon.socket):
        if not rec["live"]:
            continue
        claimed.add(rec.get("session"))
        out.append({"session": str(rec.get("session", ""))[:12], "user": rec.get("user"),
                    "remote": rec.get("remote"), "command": rec.get("command"),
                    "mode": rec.get("mode"), "container": str(rec.get("container", ""))[:30],
                    "started": time.strftime("%Y-%m-%d %H:%M:%S",
                                             time.localtime(rec.get("started", 0))),
                    "idle": _ago(rec.get("active", 0)), "state": "live",
                    "pid": rec.get("pid"), "id": rec.get("session")})
    for f in backend(cfg).list():
        sid = f.labels.get(labels.SESSION, "")
        if sid in claimed or W.is_workspace(f.labels) or f.spare:
            continue
        out.append({"session": sid[:12], "user": f.labels.get(labels.USER), "remote": "",
                    "command": "", "mode": f.labels.get(labels.MODE),
                    "container": f.name[:30], "started": "", "idle": "",
                    "state": "running" if labels.owner_alive(f.labels) else "orphan",
                    "pid": None, "id": sid})
    return out


@click.group()
def sessions():
    """Live sessions: who, from where, since when, in which container."""


@sessions.command("list")
@click.option("--json", "as_json", is_flag=True)
@config_option
@one_line_errors
def sessions_list(as_json, config_path):
    """List live sessions (and containers no live session owns)."""
    found = rows(load_config(config_path))
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        table(found, ["session", "user", "remote", "started", "idle", "command", "mode",
                      "container", "state"], "no sessions")


@sessions.command("kill")
@click.argument("ident")
@click.option("--wait", "wait_s", default=30.0, show_default=True,
              help="seconds to wait for the sessions to end")
@config_option
@one_line_errors
def sessions_kill(ident, wait_s, config_path):
    """End sessions (by session id prefix, container prefix or user name).

    A live session is told to end, as a hangup would end it: the user sees
    `hatchway: this session was ended by an administrator`, the command gets
    SIGHUP, and its container goes (a workspace stays: what the session ran in
    it is killed).  A container no session owns is removed."""
    cfg = load_config(config_path)
    hits = [r for r in rows(cfg) if r["id"].startswith(ident) or r["user"] == ident
            or r["container"].startswith(ident)]
    if not hits:
        fail(f"no session matches {ident!r}")
    b = backend(cfg)
    for r in hits:
        if r["state"] == "live":
            try:
                os.kill(int(r["pid"]), signal.SIGTERM)
            except (OSError, TypeError, ValueError):
                pass            # it ended meanwhile
        else:
            for f in b.list():
                if f.labels.get(labels.SESSION) == r["id"]:
                    b.remove(f)
    deadline = time.monotonic() + wait_s
    left = {r["id"] for r in hits if r["state"] == "live"}
    while left and time.monotonic() < deadline:
        live_now = {rec.get("session") for rec in live.records(cfg.daemon.socket)
                    if rec["live"]}
        left &= live_now
        time.sleep(0.1)
    if left:
        fail(f"{len(left)} session(s) did not end within {wait_s:g}s: "
             + ", ".join(sorted(s[:12] for s in left)))
    click.echo(f"ended {len(hits)} session(s)")


@sessions.command("play")
@click.argument("ident")
@click.option("--speed", default=1.0, show_default=True, help="replay this many times faster")
@click.option("--max-wait", default=2.0, show_default=True,
              help="seconds of inactivity shown at most")
@click.option("--cat", "at_once", is_flag=True, help="print the output at once, no timing")
@config_option
@one_line_errors
def sessions_play(ident, speed, max_wait, at_once, config_path):
    """Replay a recorded session (by session id prefix) as its user saw it.

    Recordings are asciicast v2 files under recordings.dir/<user>/; `asciinema
    play FILE` replays them too."""
    cfg = load_config(config_path)
    found = recording.find(cfg.recordings.dir, ident)
    if not found:
        fail(f"no recording of a session {ident!r} in {cfg.recordings.dir}")
    if len(found) > 1:
        fail(f"{ident!r} names {len(found)} recordings; give more of the session id")
    out = click.get_text_stream("stdout")
    last = 0.0
    with open(found[0], encoding="utf-8") as f:
        json.loads(f.readline())                        # the header
        for line in f:
            t, kind, data = json.loads(line)
            if kind != "o":
                continue
            if not at_once:
                time.sleep(min(max(t - last, 0), max_wait) / max(speed, 0.01))
            last = t
            out.write(data)
            out.flush()


@click.command()
@config_option
@one_line_errors
def gc(config_path):
    """Remove containers whose session process is gone and look after
    workspaces (what the reaper does)."""
    cfg = load_config(config_path)
    b = backend(cfg)
    removed = b.reap(labels.owner_alive)
    live.sweep(cfg.daemon.socket)
    click.echo(f"removed {len(removed)} orphaned container(s)" +
               (": " + ", ".join(removed) if removed else ""))
    for line in b.tend_workspaces():
        click.echo(f"workspace {line}")
