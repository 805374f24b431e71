"""ContainerSSH's config-webhook answer, in Hatchway's config shape: the
top level here, each backend's section by that backend
(backends/<name>/containerssh.py; core/containerssh.py says how fields are
treated)."""

from __future__ import annotations

from hatchway.backends import registry
from hatchway.core.containerssh import Unsupported, lower, refuse_rest

__all__ = ["Unsupported", "translate"]


def translate(reply_config: dict) -> dict:
    """ContainerSSH `config` object -> Hatchway partial config (unvalidated)."""
    top = lower(reply_config, "config")
    out: dict = {}
    done = set()
    if "backend" in top:
        done.add("backend")
        out["backend"] = top["backend"]
    for name in registry.BACKENDS:
        if name in top:
            done.add(name)
            registry.containerssh(name).translate(lower(top[name], name), out)
    refuse_rest(top, done, "config")
    return out
