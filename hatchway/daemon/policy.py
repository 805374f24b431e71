"""The admin's policy: what a session's container may be, whoever asked for it.

Applied to every session's final configuration (file, groups, templates and
config webhook merged), so it holds whatever a webhook answers.  A violation
names the field; the session is refused before anything is created.  What
the policy says about a backend's own section lives with that backend
(backends/<name>/policy.py); the shared rules in core/policy.py.
"""

from __future__ import annotations

from hatchway.backends import registry
from hatchway.core import config as config_mod
from hatchway.core.policy import Origin, Violation

__all__ = ["Origin", "Violation", "check", "check_webhook_fields", "leaves"]


def leaves(partial: dict, spec=None, prefix: str = "") -> list[str]:
    """Dotted names of what a partial config sets.  A mapping that is data
    (env, tmpfs, a pod template) counts as one field."""
    spec = config_mod.schema() if spec is None else spec
    out = []
    for k, v in partial.items():
        sub = spec.fields.get(k) if isinstance(spec, config_mod.S) else None
        if isinstance(v, dict) and isinstance(sub, config_mod.S):
            out += leaves(v, sub, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def check_webhook_fields(partial: dict, may_set: list[str]) -> None:
    for name in leaves(partial):
        if not any(name == allowed or name.startswith(allowed + ".") for allowed in may_set):
            raise Violation(name, "the config webhook may not set it (policy.webhook_may_set)")


def check(cfg: dict, user: str, webhook: dict | None = None) -> dict:
    """Raise Violation, or return cfg as its backend's policy left it (limits
    capped, mount sources resolved).  `webhook`: what the config webhook's
    answer set (the rest is the admin's)."""
    name = cfg["backend"]
    origin = Origin(user, (webhook or {}).get(name) or {})
    registry.policy(name).check(cfg[name], cfg["policy"], origin)
    return cfg
