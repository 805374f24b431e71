"""Checks shared by the chroot tests of both Debian releases."""

from __future__ import annotations

from . import layout
from .roots import Root

MEMBER, OUTSIDER = "alice", "carol"
DROPIN = "/etc/ssh/sshd_config.d/10-hatchway.conf"
TEMPLATE = "/usr/share/hatchway/sshd_config.d/10-hatchway.conf"
SHELL = "/usr/lib/hatchway/hatchway-shell"
KEYS = "/usr/lib/hatchway/hatchway-keys"


def installed_layout_problems(root: Root) -> list[str]:
    """layout.problems() for what `dpkg -L hatchway` lists, stat'ed in the root."""
    paths = [p for p in root.run(["dpkg", "-L", "hatchway"]).stdout.splitlines()
             if p.strip() and p != "/."]
    out = root.run(["stat", "-c", "%n|%A|%U|%G", *paths]).stdout
    entries = {}
    for line in out.splitlines():
        name, mode, owner, group = line.rsplit("|", 3)
        entries[name] = (mode, owner, group)
    return layout.problems(entries)


def effective(root: Root, user: str) -> dict[str, str]:
    """sshd -T for `user`, first value per keyword."""
    root.run(["install", "-d", "-m", "0755", "/run/sshd"])
    out = root.run(["sshd", "-T", "-C", f"user={user},host=localhost,addr=127.0.0.1"]).stdout
    values: dict[str, str] = {}
    for line in out.splitlines():
        k, _, v = line.partition(" ")
        values.setdefault(k, v)
    return values


def add_users(root: Root) -> None:
    """A member made the way an admin makes one, and an ordinary account."""
    if root.run(["getent", "passwd", MEMBER], check=False).returncode == 0:
        return
    root.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"/root/{MEMBER}"])
    root.run(["hatchway", "users", "add", MEMBER, "--key", f"/root/{MEMBER}.pub"])
    root.run(["useradd", "--create-home", "--shell", "/bin/sh", OUTSIDER])


def assert_dropin_applies_to_members_only(root: Root) -> None:
    alice, carol, rootuser = (effective(root, u) for u in (MEMBER, OUTSIDER, "root"))
    assert alice["forcecommand"] == f"exec {SHELL}"
    assert alice["authorizedkeyscommand"].startswith(f"{KEYS} %u %t %k")
    assert alice["authorizedkeyscommanduser"] == "hatchway-keys"
    assert alice["authorizedkeysfile"] == "none"
    for key in ("allowstreamlocalforwarding",
                "x11forwarding", "permittunnel", "passwordauthentication", "permituserrc"):
        assert alice[key] == "no", key
    # local TCP forwarding to loopback is a maximum only, like the agent: key
    # lines start with `restrict`, and hatchway-keys adds `port-forwarding`
    # only behind its canary
    # and remote forwarding on the ports the key line's permitlisten lists
    assert alice["allowtcpforwarding"] == "yes"
    assert alice["permitopen"] == "localhost:* 127.0.0.1:* [::1]:*"
    assert alice["permitlisten"] == "any"
    assert alice["gatewayports"] == "no"
    assert alice["allowstreamlocalforwarding"] == "no"
    # the agent's maximum only: key lines start with `restrict` (hatchway-keys)
    assert alice["allowagentforwarding"] == "yes"
    assert alice["disableforwarding"] == "no"
    for other in (carol, rootuser):
        assert other["forcecommand"] == "none"
        assert other["authorizedkeyscommand"] == "none"
        assert other["allowtcpforwarding"] == "yes"   # Debian's default, untouched
