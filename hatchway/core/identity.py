"""Who is a Hatchway user: a member of one group, `hatchway-users`.

The sshd drop-in matches on that group (`Match Group hatchway-users`), the
daemon refuses anyone outside it, and the admin commands create, adopt and
remove only its members; all three ask here.
"""

from __future__ import annotations

import grp
import os
import pwd
import re

from .errors import HatchwayError

GROUP = "hatchway-users"


def group_id() -> int | None:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


def is_member(pw: pwd.struct_passwd) -> bool:
    """Primary group or supplementary member, as sshd's Match Group sees it."""
    try:
        g = grp.getgrnam(GROUP)
    except KeyError:
        return False
    return pw.pw_gid == g.gr_gid or pw.pw_name in g.gr_mem


def is_member_name(name: str) -> bool:
    try:
        return is_member(pwd.getpwnam(name))
    except KeyError:
        return False


def members() -> list[str]:
    try:
        g = grp.getgrnam(GROUP)
    except KeyError:
        return []
    return sorted(set(g.gr_mem) | {p.pw_name for p in pwd.getpwall() if p.pw_gid == g.gr_gid})


# ------------------------------------------------------------------ new names

class NameRefused(HatchwayError):
    """A name that cannot become a Hatchway user's, with the reason."""


# Debian's adduser default NAME_REGEX (^[a-z][-a-z0-9_]*\$?$) without the
# trailing `$` of machine accounts; 32 is useradd's limit.
NAME = re.compile(r"^[a-z][-a-z0-9_]{0,31}$")
ADDUSER_CONF = "/etc/adduser.conf"
# Names that must never become container users even before such an account
# exists on this host (names of existing accounts are refused anyway).
RESERVED = {"root", "hatchway", "hatchway-keys", "hatchway-webhook", "hatchway-users", "docker",
            "sshd", "nobody", "daemon", "admin", "sudo", "wheel", "staff", "adm", "operator",
            "systemd-network", "systemd-resolve", "messagebus", "www-data", "backup", "mail"}


def user_groups(user: str, gid: int) -> list[str]:
    """The names of every group `user` (primary gid `gid`) is in."""
    names = []
    for g in os.getgrouplist(user, gid):
        try:
            names.append(grp.getgrgid(g).gr_name)
        except KeyError:
            pass
    return names


def check_name(name: str) -> None:
    """Debian's rules for a user name, plus the host's own NAME_REGEX if set."""
    if not NAME.fullmatch(name):
        shown = name if name.isprintable() and len(name) <= 40 else "(unprintable or too long)"
        raise NameRefused(f"invalid user name {shown!r}: use lower-case letters, digits, '-' "
                          "and '_', starting with a letter, at most 32 characters")
    if name in RESERVED:
        raise NameRefused(f"user name {name!r} is reserved")
    local = _local_name_regex()
    if local is not None and not local.search(name):
        raise NameRefused(f"user name {name!r} does not match NAME_REGEX in {ADDUSER_CONF}")


def _local_name_regex():
    """NAME_REGEX from adduser.conf, if the admin set one Python can read."""
    try:
        with open(ADDUSER_CONF, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    m = re.search(r'^\s*NAME_REGEX\s*=\s*"?(.*?)"?\s*$', text, re.M)
    if not m:
        return None
    try:
        return re.compile(m.group(1))
    except re.error:
        return None


def check_free(name: str) -> None:
    """The name must not collide with an account or group that is not ours."""
    try:
        pwd.getpwnam(name)
        exists = True
    except KeyError:
        exists = False
    if exists:
        if not is_member_name(name):
            raise NameRefused(f"{name} is an existing account that is not a Hatchway user; "
                              "pick another name")
        return
    try:
        grp.getgrnam(name)
    except KeyError:
        return
    raise NameRefused(f"a group named {name} already exists; pick another name")
