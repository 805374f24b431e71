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
import signal
import subprocess
import time
from typing import Callable

USERS_GROUP = "hatchway-users"
HOMES = "/var/lib/hatchway/homes"
# Debian's adduser default NAME_REGEX (^[a-z][-a-z0-9_]*\$?$) without the
# trailing `$` of machine accounts; 32 is useradd's limit.
NAME = re.compile(r"^[a-z][-a-z0-9_]{0,31}$")
ADDUSER_CONF = "/etc/adduser.conf"
# Names that must never become container users even before such an account
# exists on this host (names of existing accounts are refused anyway).
RESERVED = {"root", "hatchway", "hatchway-keys", "hatchway-webhook", "hatchway-users", "docker",
            "sshd", "nobody", "daemon", "admin", "sudo", "wheel", "staff", "adm", "operator",
            "systemd-network", "systemd-resolve", "messagebus", "www-data", "backup", "mail"}


class AccountError(Exception):
    pass


def check_name(name: str) -> None:
    """Debian's rules for a user name, plus the host's own NAME_REGEX if set."""
    if not NAME.fullmatch(name):
        shown = name if name.isprintable() and len(name) <= 40 else "(unprintable or too long)"
        raise AccountError(f"invalid user name {shown!r}: use lower-case letters, digits, '-' "
                           "and '_', starting with a letter, at most 32 characters")
    if name in RESERVED:
        raise AccountError(f"user name {name!r} is reserved")
    local = _local_name_regex()
    if local is not None and not local.search(name):
        raise AccountError(f"user name {name!r} does not match NAME_REGEX in {ADDUSER_CONF}")


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
        if not is_member(name):
            raise AccountError(f"{name} is an existing account that is not a Hatchway user; "
                               "pick another name")
        return
    try:
        grp.getgrnam(name)
    except KeyError:
        return
    raise AccountError(f"a group named {name} already exists; pick another name")


def is_member(name: str) -> bool:
    try:
        pw = pwd.getpwnam(name)
        group = grp.getgrnam(USERS_GROUP)
    except KeyError:
        return False
    return pw.pw_gid == group.gr_gid or name in group.gr_mem


def create(name: str) -> bool:
    """Create the account, or adopt an existing one only if it is already ours.
    True if it was created now."""
    check_name(name)
    try:
        grp.getgrnam(USERS_GROUP)
    except KeyError:
        raise AccountError(f"group {USERS_GROUP} does not exist (is the package installed?)") \
            from None
    check_free(name)
    if is_member(name):
        # adopted: undo the expiry an interrupted `users remove` may have set
        run(["usermod", "--expiredate", "", name])
        return False
    home = os.path.join(HOMES, name)
    os.makedirs(HOMES, mode=0o755, exist_ok=True)
    os.makedirs(home, mode=0o755, exist_ok=True)
    os.chown(home, 0, 0)
    os.chmod(home, 0o755)
    run(["useradd", "--no-create-home", "--home-dir", home, "--shell", "/bin/sh",
         "--user-group", "--groups", USERS_GROUP, "--password", "*",
         "--comment", "Hatchway container user", name])
    return True


def remove(name: str, end_sessions: Callable[[str], object] | None = None,
           grace: float = 5.0) -> bool:
    """Remove the account if it is a Hatchway user; false if there was none.

    In this order, so that nothing the user runs survives and nothing new
    starts: expire the account (sshd and PAM refuse new logins at once), end
    the live sessions (`end_sessions(name)` removes their containers, which
    ends each session's ForceCommand), stop whatever still runs as the uid
    (the sshd session processes), delete the account (userdel refuses while
    the uid runs anything), then end sessions once more for one that was being
    set up meanwhile."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return False
    if not is_member(name):
        raise AccountError(f"{name} is not a Hatchway user; not removing it")
    run(["usermod", "--expiredate", "1", name])
    if end_sessions is not None:
        end_sessions(name)
    _stop_processes(pw.pw_uid, grace)
    run(["userdel", name])
    if end_sessions is not None:
        end_sessions(name)
    try:
        os.rmdir(os.path.join(HOMES, name))
    except OSError:
        pass
    return True


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if uid in (int(x) for x in line.split()[1:]):
                            pids.append(int(entry))
                        break
        except OSError:
            continue
    return pids


def _stop_processes(uid: int, grace: float) -> None:
    """TERM, then after `grace` seconds KILL, every process running as `uid`."""
    if uid == 0:
        raise AccountError("refusing to stop the processes of uid 0")
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        pids = _processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if sig == signal.SIGKILL and time.monotonic() > deadline + grace:
            raise AccountError(f"processes of uid {uid} do not end: {pids[:5]}")
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.1)


def run(argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise AccountError(f"{argv[0]} failed: {msg[-1] if msg else p.returncode}")
