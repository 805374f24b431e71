"""The admin's policy: what a session's container may be, whoever asked for it.

Applied to every session's final configuration (file, groups, templates and
config webhook merged), so it holds whatever a webhook answers.  A violation
names the field; the session is refused before anything is created.
"""

from __future__ import annotations

import os

DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd",
                  "/var/run/containerd")


class Violation(Exception):
    def __init__(self, field: str, why: str):
        super().__init__(f"policy refuses {field}: {why}")
        self.field = field


def leaves(partial: dict, prefix: str = "") -> list[str]:
    """Dotted names of what a partial config sets.  A mapping that is data
    (env, tmpfs) counts as one field."""
    out = []
    for k, v in partial.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and path in ("docker", "kubernetes", "session", "session.subsystems"):
            out += leaves(v, path + ".")
        else:
            out.append(path)
    return out


def check_webhook_fields(partial: dict, may_set: list[str]) -> None:
    for name in leaves(partial):
        if not any(name == allowed or name.startswith(allowed + ".") for allowed in may_set):
            raise Violation(name, "the config webhook may not set it (policy.webhook_may_set)")


def _cap(name: str) -> str:
    name = name.upper()
    return name[4:] if name.startswith("CAP_") else name


def _under(real: str, prefixes: list[str]) -> bool:
    for p in prefixes:
        try:
            p = os.path.realpath(p, strict=True)
        except OSError:
            continue
        if real == p or real.startswith(p.rstrip("/") + "/"):
            return True
    return False


def resolve_source(path: str) -> str:
    """The real path of a bind mount source, every symlink and `..` resolved;
    it must exist (Docker would otherwise create it as root)."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError as e:
        raise Violation("docker.mounts", f"source {path} cannot be used ({e.strerror})") from None


def check(cfg: dict, webhook_mounts: list | None = None) -> dict:
    """Raise Violation, or return cfg with limits capped and mount sources
    replaced by their resolved real paths (so nothing can be swapped between
    this check and Docker's mount)."""
    if cfg.get("backend") == "kubernetes":
        check_pod(cfg)
    d, pol = cfg["docker"], cfg["policy"]
    if d.get("privileged") and not pol["allow_privileged"]:
        raise Violation("docker.privileged", "privileged containers are not allowed")
    for field in ("network", "pid_mode", "ipc_mode"):
        value = d.get(field) or ""
        if value == "host" and not pol["allow_host_namespaces"]:
            raise Violation(f"docker.{field}", "host namespaces are not allowed")
        if value.startswith("container:"):
            raise Violation(f"docker.{field}", "joining another container is never allowed")
    allowed = {_cap(c) for c in pol["allow_capabilities"]}
    for cap in d.get("cap_add") or []:
        if _cap(cap) not in allowed and "ALL" not in allowed:
            raise Violation("docker.cap_add", f"capability {cap} is not allowed")
    if d.get("devices") and not pol["allow_devices"]:
        raise Violation("docker.devices", "devices are not allowed")

    for field, limit in (("memory", "max_memory"), ("cpus", "max_cpus"),
                         ("pids_limit", "max_pids")):
        most = pol[limit]
        if most is None:
            continue
        if d.get(field) is None:
            d[field] = most                 # unlimited is more than the maximum
        elif d[field] > most:
            raise Violation(f"docker.{field}", f"{d[field]} exceeds policy.{limit} ({most})")

    from_webhook = {(m["Source"], m["Target"]) for m in webhook_mounts or []}
    prefixes = pol["mount_prefixes"]
    checked = []
    for m in d.get("mounts") or []:
        if m["Type"] != "bind":
            checked.append(m)
            continue
        real = resolve_source(m["Source"])
        if real == "/" or any(real == s or real.startswith(s + "/") for s in DOCKER_SOCKETS):
            raise Violation("docker.mounts", f"{m['Source']} may never be mounted")
        if (prefixes or (m["Source"], m["Target"]) in from_webhook) and not _under(real, prefixes):
            raise Violation("docker.mounts", f"{m['Source']} (really {real}) is not under an "
                            "allowed prefix (policy.mount_prefixes)")
        checked.append(dict(m, Source=real))
    d["mounts"] = checked
    return cfg


# -------------------------------------------------------------- Kubernetes

_QUANTITY = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
             "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "m": 0.001}


def quantity(value) -> float:
    """A Kubernetes resource quantity (`512Mi`, `1G`, `500m`, `2`) as a number."""
    import re
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|M|G|T|m)?\s*", str(value))
    if not m:
        raise Violation("kubernetes.pod", f"cannot read the quantity {value!r}")
    return float(m.group(1)) * _QUANTITY[m.group(2) or ""]


def _host_path_allowed(path: str, prefixes: list[str]) -> bool:
    """hostPath lives on the node, not here: it cannot be resolved, so it is
    judged as written (absolute, no `..`, under a prefix)."""
    import posixpath
    if not path.startswith("/") or ".." in path.split("/"):
        return False
    norm = posixpath.normpath(path)
    for p in prefixes:
        p = posixpath.normpath(p)
        if norm == p or norm.startswith(p.rstrip("/") + "/"):
            return True
    return False


def check_pod(cfg: dict) -> dict:
    """The same admin policy, on the pod template: no privileged containers, no
    host namespaces, capabilities from the allowlist, hostPath volumes only
    under policy.mount_prefixes (never /, never a container engine socket), and
    the session container's limits capped like Docker's."""
    k, pol = cfg["kubernetes"], cfg["policy"]
    spec = k.get("pod") or {}
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f) and not pol["allow_host_namespaces"]:
            raise Violation(f"kubernetes.pod.{f}", "host namespaces are not allowed")
    allowed = {_cap(c) for c in pol["allow_capabilities"]}
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(spec.get(group) or []):
            where = f"kubernetes.pod.{group}[{i}].securityContext"
            sc = c.get("securityContext") or {}
            if (sc.get("privileged") or sc.get("procMount") == "Unmasked") \
                    and not pol["allow_privileged"]:
                raise Violation(where, "privileged containers are not allowed")
            for cap in (sc.get("capabilities") or {}).get("add") or []:
                if _cap(cap) not in allowed and "ALL" not in allowed:
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
        if norm == "/" or any(norm == s or norm.startswith(s + "/") for s in DOCKER_SOCKETS):
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
    return cfg
