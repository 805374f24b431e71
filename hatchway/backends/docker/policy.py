"""The admin policy on the `docker` section (called by daemon/policy.py, after
groups, templates and the config webhook are merged)."""

from __future__ import annotations

from hatchway.core.policy import (Origin, Violation, baseline_drop, cap_name,
                                  capability_allowed, capped)

from . import mounts


def check(d: dict, pol: dict, origin: Origin) -> None:
    """Raise Violation, or leave `d` as the container will be: limits capped,
    the baseline capabilities dropped, mount sources replaced by their
    resolved real paths (so nothing can be swapped between this check and
    Docker's mount)."""
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
    if not d.get("no_new_privileges") and not pol["allow_new_privileges"]:
        raise Violation("docker.no_new_privileges", "gaining privileges (setuid programs) "
                        "is not allowed (policy.allow_new_privileges)")

    for field, limit in (("memory", "max_memory"), ("cpus", "max_cpus"),
                         ("pids_limit", "max_pids")):
        d[field] = capped(d.get(field), pol[limit], f"docker.{field}", limit)

    # Whatever the webhook or a group says about cap_drop, the baseline goes.
    drop = [cap_name(c) for c in d.get("cap_drop") or []]
    d["cap_drop"] = drop + [c for c in baseline_drop(pol["allow_capabilities"])
                            if c not in drop and "ALL" not in drop]

    host = d.get("host") or ""
    socket = (host[len("unix://"):],) if host.startswith("unix://") else ()
    d["mounts"] = mounts.check(d, pol, origin.webhook.get("mounts") or [], socket)
