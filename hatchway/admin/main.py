"""`hatchway`: the admin command (check, sshd, users, keys, sessions, gc, webhook)."""

from __future__ import annotations

import json
import os
import stat
import sys

import click

from hatchway.backends import labels
from hatchway.core import config as config_mod

from . import sshd_snippet, users_keys_cmd as admin_cli

config_option = click.option("--config", "config_path", default=config_mod.DEFAULT_PATH,
                             show_default=True, help="Hatchway's config file")


def fail(msg: str) -> None:
    click.echo(f"hatchway: {msg}", err=True)
    sys.exit(1)


def load(path: str) -> dict:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        fail(str(e))


@click.group()
def cli():
    """Hatchway: every SSH login in its own container."""


# ------------------------------------------------------------------ sessions

def _docker(cfg):
    from hatchway.backends.docker.backend import api_for
    return api_for(cfg)


def _sessions(cfg, user: str | None = None) -> list[dict]:
    from hatchway.backends.docker.api import DockerError
    # this host's sessions only: a dockerd may serve several hosts
    filters = [f"{labels.MANAGED}=true", f"{labels.HOST}={labels.host_id()}"] + \
        ([f"{labels.USER}={user}"] if user else [])
    try:
        return _docker(cfg).list(filters)
    except DockerError as e:
        fail(str(e))


def end_sessions_of(user: str, config_path: str = config_mod.DEFAULT_PATH) -> int:
    cfg = load(config_path)
    api = _docker(cfg)
    found = _sessions(cfg, user)
    for c in found:
        api.remove(c["Id"])
    return len(found)


@cli.group()
def sessions():
    """Live sessions (their containers)."""


@sessions.command("list")
@click.option("--json", "as_json", is_flag=True)
@config_option
def sessions_list(as_json, config_path):
    """List live sessions."""
    rows = []
    for c in _sessions(load(config_path)):
        lab = c.get("Labels") or {}
        rows.append({"session": lab.get(labels.SESSION, "")[:12], "user": lab.get(labels.USER),
                     "mode": lab.get(labels.MODE), "container": c["Id"][:12],
                     "state": c.get("State"), "status": c.get("Status"),
                     "orphan": "no" if labels.process_alive(lab.get(labels.PROCESS, "")) else "yes"})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        admin_cli.table(rows, ["session", "user", "mode", "container", "status", "orphan"])


@sessions.command("kill")
@click.argument("ident")
@config_option
def sessions_kill(ident, config_path):
    """End a session (by session id prefix, container id prefix or user name)."""
    cfg = load(config_path)
    api = _docker(cfg)
    hits = [c for c in _sessions(cfg)
            if (c.get("Labels") or {}).get(labels.SESSION, "").startswith(ident)
            or c["Id"].startswith(ident) or (c.get("Labels") or {}).get(labels.USER) == ident]
    if not hits:
        fail(f"no session matches {ident!r}")
    for c in hits:
        api.remove(c["Id"])
    click.echo(f"ended {len(hits)} session(s)")


@cli.command()
@config_option
def gc(config_path):
    """Remove containers whose session process is gone (what the reaper does)."""
    from hatchway import backends
    removed = backends.make(load(config_path)).reap(
        lambda lab: labels.process_alive(lab.get(labels.PROCESS, "")))
    click.echo(f"removed {len(removed)} orphaned container(s)" +
               (": " + ", ".join(removed) if removed else ""))


# ------------------------------------------------------------------ sshd

@cli.group()
def sshd():
    """The sshd drop-in that routes hatchway-users into containers."""


@sshd.command("enable")
@click.option("--template", default=sshd_snippet.TEMPLATE, show_default=True)
def sshd_enable(template):
    """Install the drop-in, validate it with sshd -t / -T, reload sshd."""
    try:
        for note in sshd_snippet.enable(template):
            click.echo(note)
    except (sshd_snippet.SnippetError, OSError) as e:
        fail(str(e))
    click.echo(f"enabled {sshd_snippet.TARGET}")


@sshd.command("disable")
def sshd_disable():
    """Remove the drop-in and reload sshd."""
    try:
        for note in sshd_snippet.disable():
            click.echo(note)
    except (sshd_snippet.SnippetError, OSError) as e:
        fail(str(e))


# ------------------------------------------------------------------ check

@cli.command()
@config_option
def check(config_path):
    """Validate the config and the environment; non-zero exit on any problem."""
    problems, notes = [], []
    try:
        cfg = config_mod.load(config_path)
        notes.append(f"{config_path}: valid")
    except config_mod.ConfigError as e:
        click.echo(f"FAIL {e}")
        sys.exit(1)

    for key in ("ca_file", "cert_file", "key_file", "token_file"):
        path = cfg["auth"]["webhook"].get(key)
        if path:
            problems += _secret_problems(path, key, secret=key in ("key_file", "token_file"))

    from hatchway.backends.docker.api import DockerError
    if cfg["backend"] == "docker":
        api = _docker(cfg)
        try:
            api.call("GET", "/_ping", ok=(200,))
            notes.append(f"docker: reachable at {cfg['docker']['host']}")
            if not api.image_exists(cfg["docker"]["image"]):
                msg = f"docker: image {cfg['docker']['image']} is not present"
                (problems if cfg["docker"]["pull"] == "Never" else notes).append(msg)
        except DockerError as e:
            problems.append(f"docker: {e}")
        problems += _daemon_socket_access(cfg["docker"]["host"])

    sock = cfg["daemon"]["socket"]
    if not os.path.exists(sock):
        problems.append(f"hatchwayd: no socket at {sock} (is hatchway.service running?)")
    sshd_problems, sshd_notes = sshd_snippet.check()
    problems += [f"sshd: {p}" for p in sshd_problems]
    notes += [f"sshd: {n}" for n in sshd_notes]

    for n in notes:
        click.echo(f"ok   {n}")
    for p in problems:
        click.echo(f"FAIL {p}")
    sys.exit(1 if problems else 0)


def _daemon_socket_access(host: str, user: str = "hatchway") -> list[str]:
    """`check` runs as root, which reaches any socket; the daemon runs as
    `hatchway` and needs the socket's group (docker installed after Hatchway,
    or a socket with another group, leave it out)."""
    import grp
    import pwd
    if not host.startswith("unix://"):
        return []
    path = host[len("unix://"):]
    try:
        st = os.stat(path)
        pw = pwd.getpwnam(user)
    except (OSError, KeyError):
        return []               # reachability is reported above
    groups = os.getgrouplist(user, pw.pw_gid)
    if st.st_uid == pw.pw_uid or st.st_mode & stat.S_IWOTH or \
            (st.st_gid in groups and st.st_mode & stat.S_IWGRP):
        return []
    try:
        gname = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        gname = str(st.st_gid)
    return [f"docker: user {user} cannot open {path} (not in its group {gname}): run "
            f"`adduser {user} {gname}`, then restart hatchwayd"]


KEY_HELPER = "hatchway-keys"


def _secret_problems(path: str, what: str, secret: bool, user: str = KEY_HELPER) -> list[str]:
    """The key helper runs as `user` and must be able to read every TLS file
    and the token; the private key and the token must be readable by nobody else."""
    import pwd
    try:
        st = os.stat(path)
    except OSError as e:
        return [f"auth.webhook.{what}: {path}: {e.strerror}"]
    if secret and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [f"auth.webhook.{what}: {path} is readable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); make it 0600, owned by {user}"]
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return [f"auth.webhook.{what}: user {user} does not exist (reinstall the package)"]
    if not _readable_by(st, pw):
        return [f"auth.webhook.{what}: {path} is not readable by {user}, so every key "
                f"check fails; `chown {user} {path}`"]
    return []


def _readable_by(st: os.stat_result, pw) -> bool:
    import grp
    if st.st_uid == pw.pw_uid:
        return bool(st.st_mode & stat.S_IRUSR)
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


admin_cli.register(cli, on_user_removed=lambda name: end_sessions_of(name))


def main() -> int:
    # click's own usage errors, in the same one-line form as every other error
    try:
        cli.main(prog_name="hatchway", standalone_mode=False)
    except click.ClickException as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
        click.echo(f"hatchway: {e.format_message()}{hint}", err=True)
        return e.exit_code
    except click.Abort:
        click.echo("hatchway: aborted", err=True)
        return 1
    return 0
