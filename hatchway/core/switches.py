"""Per-user switches read from the config file alone: `session.agent_forwarding`
and `session.port_forwarding`.  hatchway-keys decides with them what a key
line may carry, and the port relay what it may join; the config webhook
cannot turn them on.  It imports nothing: the key helper loads it on every
login."""


def switch_policy(cfg: dict, field: str) -> dict:
    """What decides a per-user switch such as `session.agent_forwarding` or
    `session.port_forwarding` (what hatchway-keys may print, what the port
    relay allows): the file's `session.<field>` and, in file order, every
    `groups:` entry that sets it (the daemon merges groups the same way,
    daemon/resolve.py)."""
    groups = [[name, g["session"][field]]
              for name, g in (cfg.get("groups") or {}).items()
              if isinstance((g or {}).get("session"), dict)
              and isinstance(g["session"].get(field), bool)]
    return {"default": cfg["session"][field] is True, "groups": groups}


def switch_allows(policy: dict, groups: list[str]) -> bool:
    """`switch_policy`'s answer for a user in `groups` (names): the last
    entry of theirs that sets it wins."""
    allowed = policy.get("default") is True
    for name, value in policy.get("groups") or []:
        if name in groups:
            allowed = value is True
    return allowed
