"""Which host directories and volumes a session's container may mount.

A bind mount source is resolved here, once, and Docker is given the real
path.  dockerd resolves that path again in its own mount namespace, so no
descriptor of ours can pin it; what makes the result hold is that nobody but
root (or the owner of the admin's prefix) can change any directory on the
way: a user who can write one of them could turn the next component into a
symlink between this check and Docker's mount.  Writable from inside a
container counts too: a directory this very session mounts writable is
refused on the way to another of its mounts.

A writable bind mount must also not let container root leave a setuid-root
program on the host: Docker's bind options cannot add `nosuid`, so the host
directory must already be on a nosuid mount (a bind mount of a nosuid source
stays nosuid inside the container too), or the container must run as a
non-root uid:gid without new privileges, or the admin says the engine makes
root harmless (policy.allow_suid_mounts, e.g. with userns-remap).
"""

from __future__ import annotations

import os
import re
import stat
from collections import deque

from hatchway.core.policy import Violation, never_mounted, under

MAX_SYMLINKS = 40
# A named volume a session may use: Hatchway's, labelled for its user when
# first created (backend.py); the name says whose it is meant to be.
VOLUME_NAME = re.compile(r"hatchway-[A-Za-z0-9_.-]+")
NON_ROOT_USER = re.compile(r"[1-9][0-9]*:[1-9][0-9]*")


def resolve(path: str, prefixes: list[str]) -> tuple[str, list[str]]:
    """The real path of `path` and the directories looked up on the way.

    Like realpath, but every directory an entry is looked up in must be owned
    by root (or by the owner of the allowed prefix it lies under) and
    writable by its owner only; the source must exist (Docker would create a
    missing one, as root)."""
    todo = deque(path.split("/"))
    current, seen, links = "/", [], 0
    while todo:
        name = todo.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)      # current is real: .. is its parent
            continue
        sticky = _check_dir(current, prefixes, path)
        if current not in seen:
            seen.append(current)
        nxt = os.path.join(current, name)
        try:
            st = os.lstat(nxt)
        except OSError as e:
            raise Violation("docker.mounts", "a mount source cannot be used",
                            f"{path}: {nxt}: {e.strerror}") from None
        if sticky and st.st_uid not in _owners(current, prefixes):
            raise Violation("docker.mounts", "a directory on the way to a mount source may be "
                            "changed by someone other than root",
                            f"{path}: {nxt} is owned by uid {st.st_uid}")
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise Violation("docker.mounts", "a mount source cannot be used",
                                f"{path}: too many symbolic links")
            target = os.readlink(nxt)
            todo.extendleft(reversed(target.split("/")))
            if target.startswith("/"):
                current = "/"
            continue
        if todo and not stat.S_ISDIR(st.st_mode):
            raise Violation("docker.mounts", "a mount source cannot be used",
                            f"{path}: {nxt} is not a directory")
        current = nxt
    return current, seen


def _owners(d: str, prefixes: list[str]) -> set[int]:
    return {0} | {_owner(p) for p in prefixes if under(d, [p])}


def _check_dir(d: str, prefixes: list[str], path: str) -> bool:
    """Raise unless only a trusted owner can change the entries of `d`.  True
    for a sticky directory others may write (like /tmp): there the entry
    looked up must itself belong to a trusted owner, as only its owner (or
    the directory's) may rename or remove it."""
    st = os.stat(d)
    shared = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if st.st_uid not in _owners(d, prefixes) or (shared and not st.st_mode & stat.S_ISVTX):
        raise Violation("docker.mounts", "a directory on the way to a mount source may be "
                        "changed by someone other than root",
                        f"{path}: {d} is owned by uid {st.st_uid}, mode "
                        f"{stat.S_IMODE(st.st_mode):04o}")
    return bool(shared)


def _owner(prefix: str) -> int:
    try:
        return os.stat(os.path.realpath(prefix, strict=True)).st_uid
    except OSError:
        return 0


def check(d: dict, pol: dict, webhook_mounts: list, extra_never: tuple) -> list[dict]:
    """The mounts of docker section `d`, checked, bind sources replaced by
    their real paths."""
    from_webhook = {(m["Source"], m["Target"]) for m in webhook_mounts}
    prefixes = pol["mount_prefixes"]
    checked, looked_up = [], []
    for m in d.get("mounts") or []:
        if m["Type"] == "volume":
            if not VOLUME_NAME.fullmatch(m["Source"]):
                raise Violation("docker.mounts", "only Hatchway's own volumes (hatchway-…) "
                                "may be mounted", m["Source"])
            checked.append(m)
            continue
        real, seen = resolve(m["Source"], prefixes)
        if never_mounted(real, extra_never):
            raise Violation("docker.mounts", "a mount source may never be mounted",
                            f"{m['Source']} (really {real})")
        if (prefixes or (m["Source"], m["Target"]) in from_webhook) and not under(real, prefixes):
            raise Violation("docker.mounts", "a mount source is not under an allowed prefix "
                            "(policy.mount_prefixes)", f"{m['Source']} (really {real})")
        if not m["ReadOnly"] and not _nosuid(real) and not _root_harmless(d, pol):
            raise Violation("docker.mounts", "a writable host directory must be on a nosuid "
                            "file system (or the container user non-root)",
                            f"{m['Source']} (really {real}) is on a mount without nosuid")
        checked.append(dict(m, Source=real))
        looked_up.append((real, seen))
    writable = [m["Source"] for m in checked if m["Type"] == "bind" and not m["ReadOnly"]]
    for real, seen in looked_up:
        for w in writable:
            if w != real and any(under(s, [w]) for s in seen):
                raise Violation("docker.mounts", "a mount source lies inside another writable "
                                "mount of the same session", f"{real} is inside {w}")
    return checked


def _nosuid(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_NOSUID)
    except OSError:
        return False


def _root_harmless(d: dict, pol: dict) -> bool:
    """Nothing in the container can make a setuid-root (or setgid-root) file."""
    if pol["allow_suid_mounts"]:
        return True
    return bool(NON_ROOT_USER.fullmatch(d.get("user") or "")) and d.get("no_new_privileges")
