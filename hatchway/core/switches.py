"""Per-user switches read from the config file alone: `session.agent_forwarding`,
`session.port_forwarding` and the list `session.remote_forward_ports`.
hatchway-keys decides with them what a key line may carry, and the port relay
what it may join; the config webhook cannot turn them on.  It imports
nothing: the key helper loads it on every login."""


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


# `session.remote_forward_ports` (ssh -R): a list, not a switch.  A `groups:`
# entry that sets it replaces the list for its members, like a switch.
MAX_REMOTE_PORTS = 256      # one permitlisten option per port on the key line


def parse_ports(items) -> list[int]:
    """`[8080, "9000-9009"]` -> the sorted ports.  Ports below 1024 are
    refused (sshd lets no user listen there) and so is the relay's 870;
    raises ValueError with a short reason."""
    if not isinstance(items, list):
        raise ValueError("expected a list of ports or LOW-HIGH ranges")
    out: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"not a port: {item!r}")
        if isinstance(item, int):
            low = high = item
        elif isinstance(item, str) and item.count("-") == 1 \
                and all(p.strip().isdigit() for p in item.split("-")):
            low, high = (int(p) for p in item.split("-"))
        elif isinstance(item, str) and item.strip().isdigit():
            low = high = int(item)
        else:
            raise ValueError(f"not a port or LOW-HIGH range: {item!r}")
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"{item!r}: ports must be 1024-65535, low before high")
        out.update(range(low, high + 1))
        if len(out) > MAX_REMOTE_PORTS:
            raise ValueError(f"more than {MAX_REMOTE_PORTS} ports")
    return sorted(out)


def list_policy(cfg: dict, field: str) -> dict:
    """Like switch_policy, for a list such as `session.remote_forward_ports`."""
    groups = [[name, g["session"][field]]
              for name, g in (cfg.get("groups") or {}).items()
              if isinstance((g or {}).get("session"), dict)
              and isinstance(g["session"].get(field), list)]
    return {"default": list(cfg["session"].get(field) or []), "groups": groups}


def list_for(policy: dict, groups: list[str]) -> list[int]:
    """`list_policy`'s answer for a user in `groups`: the last entry of
    theirs that sets it wins."""
    ports = policy.get("default") or []
    for name, value in policy.get("groups") or []:
        if name in groups:
            ports = value or []
    return [p for p in ports if isinstance(p, int) and not isinstance(p, bool)]


def all_listed(policy: dict) -> set[int]:
    """Every port any user may be given: what the guard reserves."""
    out = set(policy.get("default") or [])
    for _name, value in policy.get("groups") or []:
        out.update(value or [])
    return {p for p in out if isinstance(p, int) and not isinstance(p, bool)}
