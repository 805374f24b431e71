"""The configuration one session runs with.

    file config
      + `groups:` entries for the groups the user is in (in file order)
      + templates filled in ({user}, {uid}, {gid}, {group})
      + the config webhook's answer (ContainerSSH shape), fields allowed by the policy
      → the admin's policy (daemon/policy.py)
      → the typed Config the session and its backend read

Merging happens on the validated mappings (core/config.py); only the result
is typed.  Called once per session, after the user is identified and before
anything is created.  Any failure refuses the session with one line for the
user: there is no silent fallback to a configuration nobody asked for.
"""

from __future__ import annotations

import dataclasses
import logging
import pwd

from hatchway.backends import registry
from hatchway.core import config as config_mod
from hatchway.core import http11
from hatchway.core.errors import HatchwayError
from hatchway.core.identity import user_groups
from hatchway.core.webhook_client import WebhookError, fetch_config

from . import containerssh as containerssh_config, policy

log = logging.getLogger("hatchwayd")

TEMPLATE = config_mod.TEMPLATE


class ConfigRefused(HatchwayError):
    """This session's configuration is not allowed or not available; the message
    is one line for the user (and the log)."""
    code = 255


def fill_templates(value, ctx: dict):
    if isinstance(value, str):
        return TEMPLATE.sub(lambda m: ctx[m.group(1)], value)
    if isinstance(value, list):
        return [fill_templates(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: fill_templates(v, ctx) for k, v in value.items()}
    return value


def effective_config(base, *, user: str, uid: int, remote_address: str,
                     connection_id: str):
    """The daemon's typed Config in, this session's typed Config out."""
    if "/" in user or user in (".", ".."):
        raise ConfigRefused("this user name cannot be used in a container configuration")
    pw = pwd.getpwuid(uid)
    groups = user_groups(user, pw.pw_gid)
    cfg = dataclasses.asdict(base)      # a deep copy, as mappings to merge into
    for name, override in base.groups.items():
        if name in groups:
            cfg = config_mod.merge(cfg, override)

    ctx = {"user": user, "uid": str(uid), "gid": str(pw.pw_gid),
           "group": groups[0] if groups else str(pw.pw_gid)}
    for section in ("session", *registry.BACKENDS):
        cfg[section] = fill_templates(cfg[section], ctx)

    part = {}
    if cfg["config_webhook"]["url"]:
        part = _ask_webhook(cfg, user, remote_address, connection_id)
        cfg = config_mod.merge(cfg, part)
    try:
        return config_mod.typed(policy.check(cfg, user, part))
    except policy.Violation as e:
        raise ConfigRefused(e.message, e.log_reason) from None


def _ask_webhook(cfg: dict, user: str, remote: str, conn_id: str) -> dict:
    cw = cfg["config_webhook"]
    try:
        reply = fetch_config(cw, username=user, remote_address=remote, connection_id=conn_id,
                             deadline=http11.Deadline(cw["timeout"]))
    except (WebhookError, http11.HTTPError) as e:
        log.warning("config webhook failed for %s: %s", user, e)
        raise ConfigRefused(f"cannot get this session's configuration: {e}") from None
    try:
        part = containerssh_config.translate(reply)
        part = config_mod.validate(part)
    except ValueError as e:
        log.warning("config webhook answer refused for %s: %s", user, e)
        raise ConfigRefused(f"the configuration service sent an unusable answer: {e}") from None
    if part.get("backend") == cfg["backend"]:
        del part["backend"]         # ContainerSSH servers often restate it; no change
    try:
        policy.check_webhook_fields(part, cfg["policy"]["webhook_may_set"])
    except policy.Violation as e:
        raise ConfigRefused(e.message, e.log_reason) from None
    if part:
        log.info("config webhook for %s set %s", user, ", ".join(policy.leaves(part)))
    return part
