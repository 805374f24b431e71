"""The admin policy on the `kubernetes` section: the pod template (called by
daemon/policy.py, after groups, templates and the config webhook are merged)."""

from __future__ import annotations

import posixpath
import re

from hatchway.core.policy import (Origin, Violation, baseline_drop, cap_name,
                                  capability_allowed, never_mounted)

from . import podfields

_QUANTITY = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
             "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "m": 0.001}
GROUPS = ("initContainers", "containers")


def quantity(value, where: str = "kubernetes.pod") -> float:
    """A Kubernetes resource quantity (`512Mi`, `1G`, `500m`, `2`) as a number."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|M|G|T|m)?\s*", str(value))
    if not m:
        raise Violation(where, f"cannot read the quantity {str(value)[:40]!r}")
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


def check(k: dict, pol: dict, origin: Origin) -> None:
    """Every field of the pod template from the allowlist (podfields.py); no
    privileged containers, no host namespaces, capabilities from the
    allowlist, hostPath volumes only under policy.mount_prefixes (never /,
    never a container engine socket or a directory above one); every
    container limited, its baseline capabilities dropped and no privilege
    escalation, unless the policy allows it."""
    spec = k.get("pod") or {}
    podfields.check(spec, pol["allow_pod_fields"])
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f) and not pol["allow_host_namespaces"]:
            raise Violation(f"kubernetes.pod.{f}", "host namespaces are not allowed")
    _seccomp(spec.get("securityContext"), "kubernetes.pod.securityContext")
    if not spec.get("containers"):
        spec["containers"] = [{"name": "session"}]   # what the backend would add
    for group in GROUPS:
        for i, c in enumerate(spec.get(group) or []):
            _container(c, pol, f"kubernetes.pod.{group}[{i}]")
    for i, v in enumerate(spec.get("volumes") or []):
        hp = v.get("hostPath")
        if hp is None:
            continue
        path = str(hp.get("path", ""))
        where = f"kubernetes.pod.volumes[{i}].hostPath"
        if never_mounted(path.rstrip("/") or "/"):
            raise Violation(where, "that host path may never be mounted", path)
        if not _host_path_allowed(path, pol["mount_prefixes"]):
            raise Violation(where, "the host path is not under an allowed prefix "
                            "(policy.mount_prefixes)", path)
    _limits(spec, k.get("container"), pol)
    k["pod"] = spec


def _seccomp(sc, where: str) -> None:
    profile = (sc or {}).get("seccompProfile") or {}
    if profile.get("type") == "Unconfined":
        raise Violation(f"{where}.seccompProfile", "an unconfined seccomp profile is not allowed")


def _container(c: dict, pol: dict, where: str) -> None:
    sc = c.get("securityContext") or {}
    _seccomp(sc, f"{where}.securityContext")
    privileged = bool(sc.get("privileged") or sc.get("procMount") == "Unmasked")
    if privileged and not pol["allow_privileged"]:
        raise Violation(f"{where}.securityContext", "privileged containers are not allowed")
    caps = sc.get("capabilities") or {}
    for cap in caps.get("add") or []:
        if not capability_allowed(cap, pol["allow_capabilities"]):
            raise Violation(f"{where}.securityContext", f"capability {cap} is not allowed")
    for p in c.get("ports") or []:
        if p.get("hostPort") and not pol["allow_host_namespaces"]:
            raise Violation(f"{where}.ports", "host ports are not allowed")
    drop = [cap_name(x) for x in caps.get("drop") or []]
    if "ALL" not in drop:
        drop += [x for x in baseline_drop(pol["allow_capabilities"]) if x not in drop]
    caps = dict(caps, drop=drop)
    sc = dict(sc, capabilities=caps)
    if not pol["allow_new_privileges"]:
        if sc.get("allowPrivilegeEscalation") is True:
            raise Violation(f"{where}.securityContext.allowPrivilegeEscalation",
                            "gaining privileges is not allowed (policy.allow_new_privileges)")
        # (the API refuses false together with privileged or SYS_ADMIN, which
        # only an admin can have allowed)
        if not privileged and "SYS_ADMIN" not in {cap_name(x) for x in caps.get("add") or []}:
            sc["allowPrivilegeEscalation"] = False
    c["securityContext"] = sc


def _limits(spec: dict, wanted: str | None, pol: dict) -> None:
    """Memory and CPU limits on every container, under the policy's maximum
    (0: none).  Init containers run one at a time, before the others: each
    may have the maximum.  The others run together: their limits add up to
    at most the maximum, and the session container, when it has none, gets
    what the others leave.  Zero means "unlimited" to the kubelet and counts
    as unset.  (Kubernetes has no process limit per pod in the PodSpec: that
    is the kubelet's podPidsLimit.)"""
    containers = spec["containers"]
    session = next((c for c in containers if c.get("name") == wanted), None) if wanted \
        else containers[0]
    for res, limit in (("memory", "max_memory"), ("cpu", "max_cpus")):
        most = pol[limit]
        if not most:
            continue
        total, unset = 0.0, None
        for group in GROUPS:
            for i, c in enumerate(spec.get(group) or []):
                where = f"kubernetes.pod.{group}[{i}].resources.limits.{res}"
                resources = c.get("resources") or {}
                limits = dict(resources.get("limits") or {})
                c["resources"] = dict(resources, limits=limits)
                q = quantity(limits[res], where) if limits.get(res) is not None else 0
                if q > most:
                    raise Violation(where, f"{limits[res]} exceeds policy.{limit} ({most})")
                if group == "initContainers":
                    if q <= 0:
                        limits[res] = _fmt(res, most)
                    continue
                if q <= 0:
                    if c is not session:
                        raise Violation(where, f"every container beside the session's needs "
                                        f"a {res} limit (policy.{limit})")
                    unset = limits
                total += q
        if total > most:
            raise Violation(f"kubernetes.pod.containers.resources.limits.{res}",
                            f"the containers' limits add up to more than policy.{limit} ({most})")
        if unset is not None:
            if most - total <= 0:
                raise Violation(f"kubernetes.pod.containers.resources.limits.{res}",
                                f"nothing of policy.{limit} is left for the session container")
            unset[res] = _fmt(res, most - total)


def _fmt(res: str, value: float) -> str:
    return str(int(value)) if res == "memory" else str(round(value, 3))
