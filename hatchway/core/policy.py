"""What every backend's part of the admin policy shares: the refusal, and the
few rules about names, paths and limits that hold whatever runs the session
(daemon/policy.py applies the policy; backends/<name>/policy.py hold the rest).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field

from .errors import HatchwayError

# Host paths that are never mounted into a session, whatever the prefixes say,
# nor is any directory above one of them (/run holds the Docker socket): each
# hands out the container engine, the host's kernel interfaces, or Hatchway's
# own secrets.
NEVER_MOUNT = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd",
               "/var/run/containerd", "/var/lib/docker", "/var/lib/containerd",
               "/var/lib/kubelet", "/proc", "/sys", "/dev", "/etc/hatchway",
               "/var/lib/hatchway", "/run/hatchway")


class Violation(HatchwayError):
    """The policy refuses a session's configuration; `field` is the dotted key.
    The user is shown the field and the rule; `detail` (host paths, values
    the user did not choose) goes to the log only."""

    def __init__(self, field: str, why: str, detail: str | None = None):
        message = f"policy refuses {field}: {why}"
        super().__init__(message, f"{message} ({detail})" if detail else message)
        self.field = field


@dataclass
class Origin:
    """Whose session a configuration is for, and what of a backend's section
    the config webhook set (the rest is the admin's: file, groups, templates)."""
    user: str
    webhook: dict = field(default_factory=dict)


def cap_name(name: str) -> str:
    """`cap_net_raw`, `CAP_NET_RAW` and `NET_RAW` are one capability."""
    name = name.upper()
    return name[4:] if name.startswith("CAP_") else name


def capability_allowed(cap: str, allowed: list[str]) -> bool:
    names = {cap_name(c) for c in allowed}
    return cap_name(cap) in names or "ALL" in names


# Capabilities Docker (and containerd) give every container that a shell
# user has no use for: raw sockets (spoofing, sniffing on the bridge), device
# nodes, the audit log, file capabilities.  Dropped unless the policy allows
# them by name (policy.allow_capabilities).
BASELINE_DROP = ("NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP")


def baseline_drop(allowed: list[str]) -> list[str]:
    return [c for c in BASELINE_DROP if not capability_allowed(c, allowed)]


def never_mounted(path: str, extra: tuple = ()) -> bool:
    """`/`, a path in NEVER_MOUNT (or `extra`) or below one, or a directory
    above one: mounting /run hands out /run/docker.sock as surely as mounting
    the socket itself.  `path` is compared as written and, where it exists
    here, resolved."""
    paths = {posixpath.normpath(path)}
    try:
        paths.add(os.path.realpath(path, strict=True))
    except OSError:
        pass
    never = set()
    for s in NEVER_MOUNT + tuple(extra):
        never.add(s)
        never.add(os.path.realpath(s))
    for p in paths:
        if p == "/":
            return True
        for s in never:
            if p == s or p.startswith(s + "/") or s.startswith(p.rstrip("/") + "/"):
                return True
    return False


def under(real: str, prefixes: list[str]) -> bool:
    """`real` (an already resolved path) is one of `prefixes` (resolved now) or
    below one."""
    for p in prefixes:
        try:
            p = os.path.realpath(p, strict=True)
        except OSError:
            continue
        if real == p or real.startswith(p.rstrip("/") + "/"):
            return True
    return False


def capped(value, most, field: str, limit: str):
    """A resource limit under the policy's maximum `most` (None or 0: no
    maximum).  Unset, zero and negative values all mean "unlimited" to the
    engines, which is more than any maximum: they become the maximum.  More
    than it is refused."""
    if not most or most <= 0:
        return value
    if value is None or value <= 0:
        return most
    if value > most:
        raise Violation(field, f"{value} exceeds policy.{limit} ({most})")
    return value

