"""The `docker:` section of hatchway.yaml: where the Docker engine is and what
a session's container looks like.  See hatchway.yaml(5)."""

from __future__ import annotations

import re

from hatchway.core.config import PATH, T, check_argv, section

# The network sessions join by default: Hatchway creates it on first use
# (backend.py), a bridge without traffic between its containers.
NETWORK = "hatchway"
BRIDGE = "hatchway0"            # the host interface, for the admin's firewall rules


def _docker_host(value: str) -> str:
    if not re.match(r"^(unix://|tcp://)", value):
        raise ValueError(f"expected unix:///path or tcp://host:port, got {value!r}")
    return value


def _pool_size(value: int) -> int:
    if not 0 <= value <= 50:
        raise ValueError(f"expected 0 (no pool) to 50 spare containers, got {value}")
    return value


def _mounts(value: list) -> list:
    """Normalise `SRC:DST[:ro]` strings and {source,target,read_only,type}
    mappings to Docker's Mounts objects (checked again by the policy)."""
    out = []
    for i, m in enumerate(value):
        if isinstance(m, str):
            parts = m.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ValueError(f"[{i}]: expected SOURCE:TARGET[:ro], got {m!r}")
            m = {"source": parts[0], "target": parts[1], "read_only": parts[2:] == ["ro"]}
        if not isinstance(m, dict):
            raise ValueError(f"[{i}]: expected SOURCE:TARGET[:ro] or a mapping")
        low = {str(k).lower().replace("_", ""): v for k, v in m.items()}
        unknown = set(low) - {"source", "target", "readonly", "type"}
        if unknown:
            raise ValueError(f"[{i}]: unknown mount keys {', '.join(sorted(unknown))}")
        kind = low.get("type", "bind")
        src, dst, ro = low.get("source"), low.get("target"), low.get("readonly", False)
        if kind not in ("bind", "volume"):
            raise ValueError(f"[{i}]: mount type must be bind or volume (use docker.tmpfs)")
        if not isinstance(src, str) or not src or not isinstance(dst, str) \
                or not dst.startswith("/") or not isinstance(ro, bool):
            raise ValueError(f"[{i}]: a mount needs a source, an absolute target "
                             "and a boolean read_only")
        if kind == "bind" and not src.startswith("/"):
            raise ValueError(f"[{i}]: a bind mount source must be an absolute path")
        out.append({"Type": kind, "Source": src, "Target": dst, "ReadOnly": ro})
    return out


@section
class Settings:
    # where the engine is: the daemon's alone (DAEMON_WIDE)
    host: str = T("str", "unix:///var/run/docker.sock", check=_docker_host)
    ca_file: str | None = PATH()
    cert_file: str | None = PATH()
    key_file: str | None = PATH()
    # what a container looks like: also what `groups:` entries and the config
    # webhook may set (the latter only where the policy allows)
    image: str = T("str", "hatchway/demo:latest")
    pull: str = T("enum", "IfNotPresent", choices=("IfNotPresent", "Always", "Never"))
    user: str | None = T("str", None)
    workdir: str | None = T("str", None)
    hostname: str | None = T("str", None)
    env: dict = T("map", {}, item=T("str"))
    network: str = T("str", NETWORK,
                     doc="`hatchway`: the network Hatchway creates, no traffic between containers")
    read_only: bool = T("bool", False)
    tmpfs: dict = T("map", {}, item=T("str"))
    mounts: list = T("list", [], item=T("any"), check=_mounts)
    memory: int | None = T("size", None)
    cpus: float | None = T("float", None)
    pids_limit: int | None = T("int", None)
    privileged: bool = T("bool", False)
    no_new_privileges: bool = T("bool", True)
    cap_add: list = T("list", [], item=T("str"))
    cap_drop: list = T("list", [], item=T("str"))
    devices: list = T("list", [], item=T("str"))
    pid_mode: str | None = T("str", None)
    ipc_mode: str | None = T("str", None)
    start_timeout: float = T("duration", 60.0)
    # session mode: how many spare containers to keep running ahead of
    # logins (pool.py); the daemon's alone (DAEMON_WIDE)
    warm_pool: int = T("int", 0, check=_pool_size)
    # connection and persistent modes, and the warm pool's spares: what the
    # container runs while sessions are exec'd into it
    idle_command: list = T("list", ["/bin/sh", "-c", "while :; do sleep 3600; done"],
                           item=T("str"), check=check_argv)


DAEMON_WIDE = ("host", "ca_file", "cert_file", "key_file", "warm_pool")
WEBHOOK_MAY_SET = ["image", "env", "user", "workdir", "mounts", "tmpfs", "read_only", "memory",
                   "cpus", "pids_limit"]
