"""Host accounts for container users.

sshd needs a passwd entry before it even asks the key helper, so every
Hatchway user has one, built so that nothing the user controls is ever read on
the host (notes/openssh.md §3):

  - group hatchway-users (which is what the sshd Match keys on), no other
    privileged group;
  - login shell /bin/sh: dash reads no rc files for `sh -c`, and nologin would
    break ForceCommand;
  - password field `*`: no password login, but not "locked" either;
  - a root-owned, read-only home outside anything mounted into containers, so
    there is no ~/.bashrc, ~/.pam_environment or ~/.ssh for anyone to plant.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess

USERS_GROUP = "hatchway-users"
HOMES = "/var/lib/hatchway/homes"
# Debian's adduser default NAME_REGEX, without upper case; 32 is useradd's limit.
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
RESERVED = {"root", "hatchway", "hatchway-keys", "hatchway-webhook", "docker", "sshd",
            "nobody", "daemon", "admin", "sudo", "wheel", "staff", "adm"}


class AccountError(Exception):
    pass


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise AccountError(f"invalid user name {name!r}: use lower-case letters, digits, '-' "
                           "and '_', starting with a letter, at most 32 characters")
    if name in RESERVED:
        raise AccountError(f"user name {name!r} is reserved")


def is_member(name: str) -> bool:
    try:
        pw = pwd.getpwnam(name)
        group = grp.getgrnam(USERS_GROUP)
    except KeyError:
        return False
    return pw.pw_gid == group.gr_gid or name in group.gr_mem


def create(name: str) -> None:
    """Create the account, or adopt an existing one only if it is already ours."""
    check_name(name)
    try:
        grp.getgrnam(USERS_GROUP)
    except KeyError:
        raise AccountError(f"group {USERS_GROUP} does not exist (is the package installed?)") \
            from None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        pw = None
    if pw is not None:
        if not is_member(name):
            raise AccountError(f"{name} is an existing account that is not a Hatchway user; "
                               "pick another name")
        return
    try:
        grp.getgrnam(name)
        raise AccountError(f"a group named {name} already exists; pick another name")
    except KeyError:
        pass
    home = os.path.join(HOMES, name)
    os.makedirs(HOMES, mode=0o755, exist_ok=True)
    os.makedirs(home, mode=0o755, exist_ok=True)
    os.chown(home, 0, 0)
    os.chmod(home, 0o755)
    run(["useradd", "--no-create-home", "--home-dir", home, "--shell", "/bin/sh",
         "--user-group", "--groups", USERS_GROUP, "--password", "*",
         "--comment", "Hatchway container user", name])


def remove(name: str) -> bool:
    """Remove the account if it is a Hatchway user; false if there was none."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    if not is_member(name):
        raise AccountError(f"{name} is not a Hatchway user; not removing it")
    run(["userdel", name])
    home = os.path.join(HOMES, name)
    try:
        os.rmdir(home)
    except OSError:
        pass
    return True


def run(argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise AccountError(f"{argv[0]} failed: {msg[-1] if msg else p.returncode}")
