"""What every backend's part of the admin policy shares: the refusal, and the
few rules about names, paths and limits that hold whatever runs the session
(daemon/policy.py applies the policy; backends/<name>/policy.py hold the rest).
"""

from __future__ import annotations

import os

from .errors import HatchwayError

# Host paths that are never mounted into a session, whatever the prefixes say:
# each hands out the container engine, or (/run/hatchway) the daemon's socket
# and every session's forwarded agent.
NEVER_MOUNT = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd",
               "/var/run/containerd", "/run/hatchway", "/var/run/hatchway")


class Violation(HatchwayError):
    """The policy refuses a session's configuration; `field` is the dotted key."""

    def __init__(self, field: str, why: str):
        super().__init__(f"policy refuses {field}: {why}")
        self.field = field


def cap_name(name: str) -> str:
    """`cap_net_raw`, `CAP_NET_RAW` and `NET_RAW` are one capability."""
    name = name.upper()
    return name[4:] if name.startswith("CAP_") else name


def capability_allowed(cap: str, allowed: list[str]) -> bool:
    names = {cap_name(c) for c in allowed}
    return cap_name(cap) in names or "ALL" in names


def never_mounted(path: str) -> bool:
    """`/` or a container engine's socket (or a path below one)."""
    return path == "/" or any(path == s or path.startswith(s + "/") for s in NEVER_MOUNT)


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
    """A resource limit under the policy's maximum `most` (None: no maximum):
    unset becomes the maximum, more than it is refused."""
    if most is None:
        return value
    if value is None:
        return most                 # unlimited is more than the maximum
    if value > most:
        raise Violation(field, f"{value} exceeds policy.{limit} ({most})")
    return value
