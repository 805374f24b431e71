"""What the Docker engine keeps between sessions that keeps users apart: the
Hatchway network (no traffic between its containers) and the users' named
volumes (each labelled with the one user it belongs to).

Both are made on first use, by the session that needs them (the daemon runs
as `hatchway`, a member of group docker), and by `hatchway check`.
"""

from __future__ import annotations

from .. import labels as L
from ..base import BackendError
from .api import ENGINE_DOWN, Docker, DockerError
from .settings import BRIDGE, NETWORK

ICC = "com.docker.network.bridge.enable_icc"
NETWORK_OPTIONS = {ICC: "false", "com.docker.network.bridge.name": BRIDGE}


def ensure_network(api: Docker) -> str:
    """Create the Hatchway network if it is missing; refuse one of that name
    that lets containers talk to each other.  Returns "created" or "present"."""
    created = "present"
    try:
        net = api.call("GET", f"/networks/{NETWORK}")
    except DockerError as e:
        if e.status != 404:
            raise BackendError(ENGINE_DOWN,
                               f"cannot inspect network {NETWORK}: {e}") from None
        try:
            # CheckDuplicate: two sessions creating it at once must not make two
            api.call("POST", "/networks/create", {
                "Name": NETWORK, "Driver": "bridge", "CheckDuplicate": True,
                "Options": NETWORK_OPTIONS, "Labels": {L.MANAGED: "true"}})
            created = "created"
        except DockerError as e:
            if e.status != 409:
                raise BackendError("cannot set up the session network",
                                   f"cannot create network {NETWORK}: {e}") from None
        net = api.call("GET", f"/networks/{NETWORK}")
    if (net.get("Options") or {}).get(ICC) != "false":
        raise BackendError("the session network is not isolated; ask the administrator",
                           f"network {NETWORK} exists without {ICC}=false: remove it "
                           "(`docker network rm`) and Hatchway makes its own")
    return created


def ensure_volume(api: Docker, name: str, user: str) -> None:
    """A named volume for `user`: created labelled for them, or refused when
    it exists and is someone else's, or not Hatchway's, or a bind in disguise
    (the local driver's `o=bind`, which would mount any host path)."""
    try:
        vol = api.call("GET", f"/volumes/{name}")
    except DockerError as e:
        if e.status != 404:
            raise BackendError(ENGINE_DOWN,
                               f"cannot inspect volume {name}: {e}") from None
        try:
            vol = api.call("POST", "/volumes/create", {
                "Name": name, "Driver": "local",
                "Labels": {L.MANAGED: "true", L.USER: user}})
        except DockerError as e:
            raise BackendError("cannot create the session's volume",
                               f"cannot create volume {name}: {e}") from None
    lab = vol.get("Labels") or {}
    opts = vol.get("Options") or {}
    if lab.get(L.MANAGED) != "true" or lab.get(L.USER) != user or vol.get("Driver") != "local" \
            or opts:
        raise BackendError("policy refuses docker.mounts: that volume is not yours",
                           f"volume {name} is not {user}'s Hatchway volume "
                           f"(labels {lab}, driver {vol.get('Driver')}, options {opts})")
