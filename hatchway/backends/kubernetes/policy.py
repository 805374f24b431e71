"""The admin policy on the `kubernetes` section: the pod template (called by
daemon/policy.py, after groups, templates and the config webhook are merged)."""

from __future__ import annotations

import posixpath
import re

from hatchway.core.policy import Violation, capability_allowed, never_mounted

_QUANTITY = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
             "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "m": 0.001}


def quantity(value) -> float:
    """A Kubernetes resource quantity (`512Mi`, `1G`, `500m`, `2`) as a number."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|M|G|T|m)?\s*", str(value))
    if not m:
        raise Violation("kubernetes.pod", f"cannot read the quantity {value!r}")
    return float(m.group(1)) * _QUANTITY[m.group(2) or ""]


def _host_path_allowed(path: str, prefixes: list[str]) -> bool:
    """hostPath lives on the node, not here: it cannot be resolved, so it is
    judged as written (absolute, no `..`, under a prefix)."""
    if not path.startswith("/") or ".." in path.split("/"):
        return False
    norm = posixpath.normpath(path)
    for p in prefixes:
        p = posixpath.normpath(p)
        if norm == p or norm.startswith(p.rstrip("/") + "/"):
            return True
    return False


def check(k: dict, pol: dict, webhook_mounts: list) -> None:
    """The same admin policy, on the pod template: no privileged containers, no
    host namespaces, capabilities from the allowlist, hostPath volumes only
    under policy.mount_prefixes (never /, never a container engine socket), and
    the session container's limits capped like Docker's."""
    spec = k.get("pod") or {}
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f) and not pol["allow_host_namespaces"]:
            raise Violation(f"kubernetes.pod.{f}", "host namespaces are not allowed")
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(group) or []):
            where = f"kubernetes.pod.{group}[{i}].securityContext"
            sc = c.get("securityContext") or {}
            if (sc.get("privileged") or sc.get("procMount") == "Unmasked") \
                    and not pol["allow_privileged"]:
                raise Violation(where, "privileged containers are not allowed")
            for cap in (sc.get("capabilities") or {}).get("add") or []:
                if not capability_allowed(cap, pol["allow_capabilities"]):
                    raise Violation(where, f"capability {cap} is not allowed")
            for p in c.get("ports") or []:
                if p.get("hostPort") and not pol["allow_host_namespaces"]:
                    raise Violation(f"kubernetes.pod.{group}[{i}].ports",
                                    "host ports are not allowed")
    for i, v in enumerate(spec.get("volumes") or []):
        hp = v.get("hostPath")
        if hp is None:
            continue
        path = str(hp.get("path", ""))
        where = f"kubernetes.pod.volumes[{i}].hostPath"
        norm = path.rstrip("/") or "/"
        if never_mounted(norm):
            raise Violation(where, f"{path} may never be mounted")
        if not _host_path_allowed(path, pol["mount_prefixes"]):
            raise Violation(where, f"{path} is not under an allowed prefix "
                            "(policy.mount_prefixes)")
    containers = spec.get("containers") or []
    session = next((c for c in containers if c.get("name") == k.get("container")),
                   None) if k.get("container") else (containers[0] if containers else None)
    for res, limit, unit in (("memory", "max_memory", 1), ("cpu", "max_cpus", 1)):
        most = pol[limit]
        if most is None or session is None:
            continue
        limits = session.setdefault("resources", {}).setdefault("limits", {})
        if limits.get(res) is None:
            limits[res] = str(int(most)) if res == "memory" else str(most)
        elif quantity(limits[res]) > most * unit:
            raise Violation(f"kubernetes.pod.containers.resources.limits.{res}",
                            f"{limits[res]} exceeds policy.{limit} ({most})")
    if pol["max_memory"] is not None or pol["max_cpus"] is not None:
        if session is None:         # the backend adds the container: cap it there too
            spec["containers"] = [{"name": "session", "resources": {"limits": {
                **({"memory": str(int(pol["max_memory"]))} if pol["max_memory"] else {}),
                **({"cpu": str(pol["max_cpus"])} if pol["max_cpus"] else {})}}}]
            k["pod"] = spec
