"""Host accounts for container users.

sshd needs a passwd entry before it even asks the key helper, so every
Hatchway user has one, built so that nothing the user controls is ever read on
the host (Debian's bash, built with SSH_SOURCE_BASHRC, reads ~/.bashrc before
the ForceCommand, and Debian's PAM stack reads ~/.pam_environment):

  - group hatchway-users (which is what the sshd Match keys on), no other
    privileged group;
  - login shell /bin/sh: dash reads no rc files for `sh -c`, and nologin would
    break ForceCommand;
  - password field `*`: no password login, but not "locked" either;
  - a root-owned, read-only home outside anything mounted into containers, so
    there is no ~/.bashrc, ~/.pam_environment or ~/.ssh for anyone to plant.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from typing import Callable

from hatchway.core import fsutil, identity
from hatchway.core.errors import HatchwayError
from hatchway.core.identity import GROUP

HOMES = "/var/lib/hatchway/homes"


class AccountError(HatchwayError):
    pass


def create(name: str) -> bool:
    """Create the account, or adopt an existing one only if it is already ours.
    True if it was created now."""
    identity.check_name(name)
    if identity.group_id() is None:
        raise AccountError(f"group {GROUP} does not exist (is the package installed?)")
    identity.check_free(name)
    if identity.is_member_name(name):
        # adopted: undo the expiry an interrupted `users remove` may have set
        run(["usermod", "--expiredate", "", name])
        return False
    home = os.path.join(HOMES, name)
    os.makedirs(HOMES, mode=0o755, exist_ok=True)
    os.makedirs(home, mode=0o755, exist_ok=True)
    os.chown(home, 0, 0)
    os.chmod(home, 0o755)
    run(["useradd", "--no-create-home", "--home-dir", home, "--shell", "/bin/sh",
         "--user-group", "--groups", GROUP, "--password", "*",
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
    if not identity.is_member(pw):
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
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and uid in (fsutil.proc_uids(int(entry)) or ())]


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
