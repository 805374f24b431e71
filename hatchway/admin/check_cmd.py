"""`hatchway check`: the config, the backend, the daemon's socket, the key
helper's secrets and the sshd drop-in; one line each, non-zero exit on any
problem."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys

import click

from hatchway.backends import registry
from hatchway.core import config as config_mod

from . import sshd_snippet
from .common import config_option


@click.command()
@config_option
def check(config_path):
    """Validate the config and the environment; non-zero exit on any problem."""
    problems, notes = [], []
    try:
        cfg = config_mod.typed(config_mod.load(config_path))
        notes.append(f"{config_path}: valid")
    except config_mod.ConfigError as e:
        click.echo(f"FAIL {e}")
        sys.exit(1)

    webhook = cfg.auth.webhook
    for key, path in (("ca_file", webhook.ca_file), ("cert_file", webhook.cert_file),
                      ("key_file", webhook.key_file), ("token_file", webhook.token_file)):
        if path:
            problems += _secret_problems(path, key, secret=key in ("key_file", "token_file"))

    try:
        backend = registry.make(cfg)
        backend_problems, backend_notes = backend.check()
        backend_problems += agent_problems(cfg, backend.agent_forwarding)
        backend_problems += port_problems(cfg, backend=backend)
        backend_problems += remote_port_problems(cfg)
    except Exception as e:          # a backend that cannot even be set up
        backend_problems, backend_notes = [f"{cfg.backend}: {e}"], []
    problems += backend_problems
    notes += backend_notes

    sock = cfg.daemon.socket
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


def agent_problems(cfg, backend_can: bool) -> list[str]:
    """session.agent_forwarding turned on (top level or a `groups:` entry)
    on a backend that cannot forward agents: such `ssh -A` sessions run
    without one."""
    scopes = [cfg.session.agent_forwarding]
    scopes += [(g.get("session") or {}).get("agent_forwarding") for g in cfg.groups.values()]
    if not any(scopes) or backend_can:
        return []
    return [f"session.agent_forwarding is on, but the {cfg.backend} backend cannot "
            "forward agents yet (ssh -A sessions run without one)"]


def port_problems(cfg, uids_file: str | None = None, busybox: str = "/bin/busybox",
                  backend=None) -> list[str]:
    """session.port_forwarding turned on (top level or a `groups:` entry)
    where it cannot work: a backend with no way into its containers (Docker
    and Kubernetes have one), no static busybox to mount (Docker),
    credentials that may not open a pod's portforward (Kubernetes), or
    hatchway-netguard not running (then hatchway-keys gives no one the
    option: fail closed, but nobody can forward either)."""
    from hatchway.core import portfwd
    scopes = [cfg.session.port_forwarding]
    scopes += [(g.get("session") or {}).get("port_forwarding") for g in cfg.groups.values()]
    if not any(scopes):
        return []
    if cfg.backend not in ("docker", "kubernetes"):
        return [f"session.port_forwarding is on, but the {cfg.backend} backend cannot "
                "forward ports yet (every forward is refused)"]
    out = []
    if cfg.backend == "docker" and not os.access(busybox, os.X_OK):
        out.append(f"session.port_forwarding is on, but {busybox} is missing "
                   "(install busybox-static)")
    if cfg.backend == "kubernetes" and backend is not None:
        from hatchway.backends.kubernetes import rbac
        out += backend.permission_problems(rbac.FORWARDING, "every port forward is refused")[0]
    if not os.path.exists(uids_file or portfwd.UIDS_FILE):
        out.append("session.port_forwarding is on, but hatchway-netguard is not running "
                   "(systemctl enable --now hatchway-netguard); sshd refuses every forward")
    return out


def remote_port_problems(cfg, uids_file: str | None = None) -> list[str]:
    """session.remote_forward_ports given (top level or a `groups:` entry)
    where -R cannot work: a backend other than Docker (the relay listens in
    a container's network namespace on this host), or no hatchway-netguard
    (hatchway-keys then gives no one a port)."""
    from hatchway.core import portfwd
    scopes = [cfg.session.remote_forward_ports]
    scopes += [(g.get("session") or {}).get("remote_forward_ports") for g in cfg.groups.values()]
    if not any(scopes):
        return []
    if cfg.backend != "docker":
        return [f"session.remote_forward_ports is set, but the {cfg.backend} backend cannot "
                "listen inside its containers (ssh -R works on Docker only: sshd accepts the -R, "
                "but nothing listens in the pod)"]
    if not os.path.exists(uids_file or portfwd.UIDS_FILE):
        return ["session.remote_forward_ports is set, but hatchway-netguard is not running "
                "(systemctl enable --now hatchway-netguard); sshd refuses every -R"]
    return []


KEY_HELPER = "hatchway-keys"


def _secret_problems(path: str, what: str, secret: bool, user: str = KEY_HELPER) -> list[str]:
    """The key helper runs as `user` and must be able to read every TLS file
    and the token; the private key and the token must be readable by nobody else."""
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
    if st.st_uid == pw.pw_uid:
        return bool(st.st_mode & stat.S_IRUSR)
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)
