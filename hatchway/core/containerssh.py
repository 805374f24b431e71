"""ContainerSSH's config-webhook answer: what translating it needs everywhere.

A ContainerSSH config server answers `{"config": {...}}` with a partial
ContainerSSH AppConfig (ContainerSSH's config webhook reference and its
`config` package).  Go decodes it
case-insensitively, so `readonlyrootfs`, `ReadonlyRootfs` and `readOnlyRootFS`
are the same key here too.  Every field is either translated, ignored because
it means nothing under Hatchway (agent settings, ContainerSSH's own timeouts),
or refused: a field Hatchway would silently not honour could be a restriction
the server meant to impose.  Each backend translates its own section
(backends/<name>/containerssh.py); daemon/containerssh.py dispatches.
"""

from __future__ import annotations


class Unsupported(ValueError):
    """A field that cannot be honoured; the message names it."""


def lower(d: dict, where: str) -> dict:
    if not isinstance(d, dict):
        raise Unsupported(f"{where}: expected an object")
    out = {}
    for k, v in d.items():
        lk = str(k).lower()
        if lk in out:
            raise Unsupported(f"{where}.{k}: given twice (keys are case-insensitive)")
        out[lk] = v
    return out


def refuse_rest(d: dict, done: set, where: str) -> None:
    rest = sorted(set(d) - done)
    if rest:
        raise Unsupported(f"{where}.{rest[0]}: not supported by Hatchway")


def session_fields(d: dict, where: str, out: dict) -> set:
    """The session settings both of ContainerSSH's backends carry (in
    `docker.execution` and `kubernetes.pod`): mode, shellCommand, subsystems.
    Returns the keys it took."""
    session = out.setdefault("session", {})
    done = set()
    if "mode" in d:
        done.add("mode")
        # ContainerSSH's three modes are Hatchway's (session.mode); its
        # `persistent` (Kubernetes only there) works on both backends here.
        if d["mode"] not in ("session", "connection", "persistent"):
            raise Unsupported(f"{where}.mode: {d['mode']!r} is not supported")
        session["mode"] = d["mode"]
    if "shellcommand" in d:
        done.add("shellcommand")
        session["shell"] = d["shellcommand"]
    if "subsystems" in d:
        done.add("subsystems")
        subs = lower(d["subsystems"], f"{where}.subsystems")
        if "sftp" in subs:
            sftp = subs["sftp"]
            session["subsystems"] = {"sftp": [sftp] if isinstance(sftp, str) else sftp}
    return done


def drop_empty(out: dict) -> None:
    for key in [key for key, v in out.items() if v == {}]:
        del out[key]
