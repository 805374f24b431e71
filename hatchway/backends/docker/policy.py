"""The admin policy on the `docker` section (called by daemon/policy.py, after
groups, templates and the config webhook are merged)."""

from __future__ import annotations

import os

from hatchway.core.policy import Violation, capability_allowed, capped, never_mounted, under


def check(d: dict, pol: dict, webhook_mounts: list) -> None:
    """Raise Violation, or cap the limits and replace mount sources by their
    resolved real paths in `d` (so nothing can be swapped between this check
    and Docker's mount)."""
    if d.get("privileged") and not pol["allow_privileged"]:
        raise Violation("docker.privileged", "privileged containers are not allowed")
    for field in ("network", "pid_mode", "ipc_mode"):
        value = d.get(field) or ""
        if value == "host" and not pol["allow_host_namespaces"]:
            raise Violation(f"docker.{field}", "host namespaces are not allowed")
        if value.startswith("container:"):
            raise Violation(f"docker.{field}", "joining another container is never allowed")
    for cap in d.get("cap_add") or []:
        if not capability_allowed(cap, pol["allow_capabilities"]):
            raise Violation("docker.cap_add", f"capability {cap} is not allowed")
    if d.get("devices") and not pol["allow_devices"]:
        raise Violation("docker.devices", "devices are not allowed")

    for field, limit in (("memory", "max_memory"), ("cpus", "max_cpus"),
                         ("pids_limit", "max_pids")):
        d[field] = capped(d.get(field), pol[limit], f"docker.{field}", limit)

    from_webhook = {(m["Source"], m["Target"]) for m in webhook_mounts or []}
    prefixes = pol["mount_prefixes"]
    checked = []
    for m in d.get("mounts") or []:
        if m["Type"] != "bind":
            checked.append(m)
            continue
        real = resolve_source(m["Source"])
        if never_mounted(real):
            raise Violation("docker.mounts", f"{m['Source']} may never be mounted")
        if (prefixes or (m["Source"], m["Target"]) in from_webhook) and not under(real, prefixes):
            raise Violation("docker.mounts", f"{m['Source']} (really {real}) is not under an "
                            "allowed prefix (policy.mount_prefixes)")
        checked.append(dict(m, Source=real))
    d["mounts"] = checked


def resolve_source(path: str) -> str:
    """The real path of a bind mount source, every symlink and `..` resolved;
    it must exist (Docker would otherwise create it as root)."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError as e:
        raise Violation("docker.mounts", f"source {path} cannot be used ({e.strerror})") from None
