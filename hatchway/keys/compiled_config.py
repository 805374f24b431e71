"""The key helper's copy of its config section, parsed once.

sshd starts hatchway-keys twice per login; importing PyYAML alone costs it
~10 ms of a ~40 ms run.  So the helper keeps the validated `auth` section as
JSON in its private directory (/var/cache/hatchway-keys, mode 0700, its own
user), tagged with the SHA-256 of the YAML file's bytes and the identity of the
schema module: any change to either, and the YAML is parsed (and validated as
a whole) again.  A config with errors is never stored, so it is refused on
every call, as before.  Anyone able to write this directory could also forge
cached answers, so the copy adds no trust the answer cache does not already need.
"""

from __future__ import annotations

import json
import os

from hatchway.core import fsutil
from hatchway.core.digest import sha256
from hatchway.core.switches import list_policy, switch_policy
from hatchway.core.errors import ConfigError

DEFAULT_DIR = "/var/cache/hatchway-keys"
CONFIG_PATH = "/etc/hatchway/hatchway.yaml"     # = config.DEFAULT_PATH, without importing it
# The schema, by its files: importing it costs the helper a few ms, and it is
# needed only when the YAML has to be parsed again.
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "config.json"


def private_dir(path: str) -> bool:
    """A directory owned by this process's user that nobody else may enter."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) == 0o040000 and st.st_uid == os.geteuid() \
        and not st.st_mode & 0o077


def schema_files() -> list[str]:
    """Every file the schema is made of: the shared sections, the backend
    registry and each backend's own section."""
    backends = os.path.join(PACKAGE, "backends")
    files = [os.path.join(PACKAGE, "core", "config.py"), os.path.join(backends, "registry.py")]
    for name in sorted(os.listdir(backends)):
        path = os.path.join(backends, name, "settings.py")
        if os.path.isfile(path):
            files.append(path)
    return files


def _schema_id() -> list:
    return [[st.st_ino, st.st_size, st.st_mtime_ns]
            for st in map(os.stat, schema_files())]


def load_auth(path: str, state_dir: str = DEFAULT_DIR) -> tuple[dict, bool]:
    """(the validated `auth` section, whether it came from the stored copy).
    Raises ConfigError like config.load."""
    conf, cached = load(path, state_dir)
    return conf["auth"], cached


def load(path: str, state_dir: str = DEFAULT_DIR) -> tuple[dict, bool]:
    """({"auth": the validated `auth` section, "agent" and "ports": the
    forwarding switches (core/switches.py switch_policy), "rports": the -R
    port lists (list_policy)},
    whether it came from the stored copy).  Raises ConfigError like config.load."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    tag = {"path": path, "sha256": sha256(raw).hexdigest(), "schema": _schema_id()}
    usable = private_dir(state_dir)
    stored = os.path.join(state_dir, NAME)
    if usable:
        try:
            with open(stored, encoding="utf-8") as f:
                entry = json.load(f)
            if entry.get("tag") == tag and isinstance(entry.get("auth"), dict) \
                    and isinstance(entry.get("agent"), dict) \
                    and isinstance(entry.get("ports"), dict) \
                    and isinstance(entry.get("rports"), dict):
                return {"auth": entry["auth"], "agent": entry["agent"],
                        "ports": entry["ports"], "rports": entry["rports"]}, True
        except (OSError, ValueError, AttributeError, RecursionError):
            pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    from hatchway.core import config as config_mod
    cfg = config_mod.load_text(text, path)
    conf = {"auth": cfg["auth"], "agent": switch_policy(cfg, "agent_forwarding"),
            "ports": switch_policy(cfg, "port_forwarding"),
            "rports": list_policy(cfg, "remote_forward_ports")}
    if usable:
        _store(stored, {"tag": tag, **conf})
    return conf, False


def _store(path: str, entry: dict) -> None:
    try:
        fsutil.atomic_write(path, json.dumps(entry).encode(), 0o600)
    except (OSError, TypeError, ValueError):
        pass
