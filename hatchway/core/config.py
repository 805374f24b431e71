"""Loading and validating /etc/hatchway/hatchway.yaml.

Both halves of Hatchway read the same file: the key helper needs the `auth`
section, the daemon everything else.  The schema below is the one place that
says which keys exist, their types and their defaults; every error names the
file, the line and the dotted key so an admin can fix it without guessing.
"""

from __future__ import annotations

import copy
import re

from .errors import ConfigError  # noqa: F401  (defined apart, see errors.py)

# Plain classes and no `typing` at run time: `dataclasses` (with inspect, ast,
# dis) and `typing` cost ~10 ms to import, and hatchway-keys imports this module
# whenever the config changed.  Annotations stay strings (__future__).

DEFAULT_PATH = "/etc/hatchway/hatchway.yaml"


# --------------------------------------------------------------------------
# value types

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_duration(value: Any) -> float:
    """`5s`, `500ms`, `2m`, `1h` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s or 500ms")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like 5s or 500ms, got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: Any) -> int:
    """`512m`, `2g`, `1Gi` or a bare number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512m or 2g")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"expected a size like 512m or 2g, got {value!r}")
    unit = (m.group(2) or "").lower().rstrip("b")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


class T:
    """One typed leaf of the schema."""
    __slots__ = ("kind", "default", "choices", "item", "check", "doc")

    def __init__(self, kind: str, default: Any = None, choices: tuple = (),
                 item: "T | None" = None, check: "Callable[[Any], Any] | None" = None,
                 doc: str = ""):
        self.kind = kind           # str int float bool duration size enum list map any
        self.default = default
        self.choices = choices
        self.item = item           # element type for list/map
        self.check = check         # extra validation, may normalise
        self.doc = doc


class S:
    """A section: a mapping with a fixed set of keys."""
    __slots__ = ("fields", "open")

    def __init__(self, fields: "dict[str, T | S] | None" = None, open: bool = False):
        self.fields = {} if fields is None else fields
        self.open = open           # unknown keys allowed (passed through as-is)


class M:
    """A mapping from free-form names (e.g. group names) to sections."""
    __slots__ = ("item", "default")

    def __init__(self, item: S, default: Any = None):
        self.item = item
        self.default = {} if default is None else default


def _url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"expected an absolute path, got {value!r}")
    return value


def _docker_host(value: str) -> str:
    if not re.match(r"^(unix://|tcp://)", value):
        raise ValueError(f"expected unix:///path or tcp://host:port, got {value!r}")
    return value


def _nonempty_argv(value: list) -> list:
    if not value:
        raise ValueError("expected a non-empty command list")
    return value


def _mode(value: str) -> str:
    if value != "session":
        raise ValueError(f"only `session` mode (a fresh container per SSH session) is "
                         f"supported, got {value!r}")
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


STR = lambda d=None, **k: T("str", d, **k)            # noqa: E731
PATH = lambda d=None: T("str", d, check=_abs_path)    # noqa: E731

# What a container looks like; also what `groups` entries and the config
# webhook may override (the latter only where the policy allows).
DOCKER = S({
    "host": T("str", "unix:///var/run/docker.sock", check=_docker_host),
    "ca_file": PATH(),
    "cert_file": PATH(),
    "key_file": PATH(),
    "image": T("str", "hatchway/demo:latest"),
    "pull": T("enum", "IfNotPresent", choices=("IfNotPresent", "Always", "Never")),
    "user": T("str", None),
    "workdir": T("str", None),
    "hostname": T("str", None),
    "env": T("map", {}, item=T("str")),
    "network": T("str", None),
    "read_only": T("bool", False),
    "tmpfs": T("map", {}, item=T("str")),
    "mounts": T("list", [], item=T("any"), check=_mounts),
    "memory": T("size", None),
    "cpus": T("float", None),
    "pids_limit": T("int", None),
    "privileged": T("bool", False),
    "cap_add": T("list", [], item=T("str")),
    "cap_drop": T("list", [], item=T("str")),
    "devices": T("list", [], item=T("str")),
    "pid_mode": T("str", None),
    "ipc_mode": T("str", None),
    "start_timeout": T("duration", 60.0),
})

def _pod_spec(value: dict) -> dict:
    """A PodSpec as Kubernetes' JSON/YAML spells it (checked by the policy and by
    the apiserver); only its shape is checked here."""
    containers = value.get("containers", [])
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise ValueError("containers: expected a list of container mappings")
    return value


# Where sessions run when `backend: kubernetes`; see hatchway.yaml(5).
KUBERNETES = S({
    # connection: a kubeconfig file, the pod's service account (in_cluster), or
    # server + ca_file + token_file / cert_file + key_file
    "kubeconfig": PATH(),
    "context": T("str", None),
    "in_cluster": T("bool", False),
    "server": T("str", None, check=_url),
    "ca_file": PATH(),
    "token_file": PATH(),
    "cert_file": PATH(),
    "key_file": PATH(),
    "namespace": T("str", "default"),
    "image": T("str", None, doc="the session container's image; overrides the pod template's"),
    "pod": T("map", {}, item=T("any"), check=_pod_spec, doc="PodSpec template"),
    "container": T("str", None, doc="the container sessions run in; default the first"),
    "idle_command": T("list", ["/bin/sh", "-c", "while :; do sleep 3600; done"],
                      item=T("str"), check=_nonempty_argv),
    "service_account_token": T("bool", False),
    "start_timeout": T("duration", 60.0),
})

SESSION = S({
    "mode": T("str", "session", check=_mode),
    "shell": T("list", ["/bin/sh"], item=T("str"), check=_nonempty_argv),
    "subsystems": S({
        "sftp": T("list", ["/usr/lib/openssh/sftp-server"], item=T("str")),
    }),
    "host_sftp_commands": T("list", ["/usr/lib/openssh/sftp-server", "internal-sftp"],
                            item=T("str")),
    "env_allow": T("list", ["LANG", "LC_*", "GIT_PROTOCOL"], item=T("str")),
    "stop_grace": T("duration", 1.0, doc="after a hangup: SIGHUP, then removal"),
})

# A group may change what its members' containers look like, not where the
# daemon finds Docker.
DOCKER_OVERRIDE = S({k: v for k, v in DOCKER.fields.items()
                     if k not in ("host", "ca_file", "cert_file", "key_file")})
# The namespace stays the daemon's: the reaper looks for orphans there.
KUBERNETES_OVERRIDE = S({k: v for k, v in KUBERNETES.fields.items()
                         if k in ("image", "pod", "container", "idle_command",
                                  "service_account_token", "start_timeout")})
SESSION_OVERRIDE = S({k: v for k, v in SESSION.fields.items()
                      if k not in ("host_sftp_commands", "stop_grace")})


SCHEMA = S({
    "auth": S({
        "webhook": S({
            "url": T("str", "http://127.0.0.1:8642", check=_url),
            "timeout": T("duration", 5.0, doc="total deadline of one key check"),
            "request_timeout": T("duration", 2.0),
            "ca_file": PATH(),
            "cert_file": PATH(),
            "key_file": PATH(),
            "token_file": PATH(),
            "max_body": T("size", 65536),
        }),
        "cache": S({
            "ttl": T("duration", 10.0),
            "stale_if_error": T("duration", 0.0),
            "dir": PATH("/var/cache/hatchway-keys"),
        }),
    }),
    "config_webhook": S({
        "url": T("str", None, check=_url),
        "timeout": T("duration", 10.0),
        "request_timeout": T("duration", 5.0),
        "ca_file": PATH(),
        "cert_file": PATH(),
        "key_file": PATH(),
        "token_file": PATH(),
        "max_body": T("size", 1 << 20),
    }),
    "backend": T("enum", "docker", choices=("docker", "kubernetes")),
    "daemon": S({
        "socket": PATH("/run/hatchway/hatchwayd.sock"),
        "reap_interval": T("duration", 60.0),
        "hello_timeout": T("duration", 10.0),
    }),
    "docker": DOCKER,
    "kubernetes": KUBERNETES,
    "session": SESSION,
    "groups": M(S({"docker": DOCKER_OVERRIDE, "kubernetes": KUBERNETES_OVERRIDE,
                   "session": SESSION_OVERRIDE})),
    "policy": S({
        "webhook_may_set": T("list", ["docker.image", "docker.env", "docker.user",
                                      "docker.workdir", "docker.mounts", "docker.tmpfs",
                                      "docker.read_only", "docker.memory", "docker.cpus",
                                      "docker.pids_limit", "kubernetes.image",
                                      "kubernetes.pod", "session.shell",
                                      "session.subsystems"],
                             item=T("str")),
        "mount_prefixes": T("list", [], item=T("str")),
        "allow_privileged": T("bool", False),
        "allow_host_namespaces": T("bool", False),
        "allow_capabilities": T("list", [], item=T("str")),
        "allow_devices": T("bool", False),
        "max_memory": T("size", None),
        "max_cpus": T("float", None),
        "max_pids": T("int", None),
    }),
    "log": S({
        "level": T("enum", "info", choices=("debug", "info", "warning", "error")),
    }),
})


# --------------------------------------------------------------------------
# loading


def _yaml():
    import yaml  # deferred: costs ~20 ms, and the key helper's fast path avoids it
    return yaml


def _convert(node, schema, path: str, fname: str) -> Any:
    """Turn a yaml node into a Python value checked against `schema`."""
    yaml = _yaml()
    line = node.start_mark.line + 1
    where = f"{fname}:{line}: {path}"

    def fail(msg: str):
        raise ConfigError(f"{where}: {msg}")

    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return None

    if isinstance(schema, M):
        if not isinstance(node, yaml.MappingNode):
            fail("expected a mapping of names")
        named: dict[str, Any] = {}
        for knode, vnode in node.value:
            key = str(knode.value)
            if key in named:
                raise ConfigError(f"{fname}:{knode.start_mark.line + 1}: {path}.{key}: "
                                  "duplicate key")
            named[key] = _convert(vnode, schema.item, f"{path}.{key}", fname) or {}
        return named

    if isinstance(schema, S):
        if not isinstance(node, yaml.MappingNode):
            fail("expected a mapping of keys")
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            sub = f"{path}.{key}" if path else str(key)
            if key in out:
                raise ConfigError(f"{fname}:{knode.start_mark.line + 1}: {sub}: duplicate key")
            if key not in schema.fields:
                if schema.open:
                    out[key] = _plain(vnode)
                    continue
                known = ", ".join(sorted(schema.fields))
                raise ConfigError(f"{fname}:{knode.start_mark.line + 1}: {sub}: "
                                  f"unknown key (known here: {known})")
            out[key] = _convert(vnode, schema.fields[key], sub, fname)
        return out

    t: T = schema
    value = _plain(node)
    try:
        value = coerce(t, value, path)
    except ValueError as e:
        fail(str(e))
    return value


def coerce(t: T, value: Any, path: str = "") -> Any:
    """Check one value against a leaf type; raises ValueError with a short reason."""
    if value is None:
        return None
    k = t.kind
    if k == "str":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_kind(value)}")
    elif k == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_kind(value)}")
    elif k == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {_kind(value)}")
        value = float(value)
    elif k == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_kind(value)}")
    elif k == "duration":
        value = parse_duration(value)
    elif k == "size":
        value = parse_size(value)
    elif k == "enum":
        if value not in t.choices:
            raise ValueError(f"expected one of {', '.join(t.choices)}, got {value!r}")
    elif k == "list":
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_kind(value)}")
        if t.item is not None:
            value = [coerce(t.item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    elif k == "map":
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {_kind(value)}")
        if t.item is not None:
            value = {str(kk): coerce(t.item, vv, f"{path}.{kk}") for kk, vv in value.items()}
    if t.check is not None:
        value = t.check(value)
    return value


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "nothing"}.get(type(value),
                                                                         type(value).__name__)


def _plain(node) -> Any:
    """A yaml node as plain Python data (safe types only)."""
    yaml = _yaml()
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def defaults(schema: S | T | M = SCHEMA) -> Any:
    if isinstance(schema, S):
        return {k: defaults(v) for k, v in schema.fields.items()}
    return copy.deepcopy(schema.default)


def validate(data: Any, schema: S | T = SCHEMA, path: str = "") -> Any:
    """Check a partial config that did not come from YAML (the config webhook's,
    translated); raises ValueError naming the dotted key."""
    if isinstance(schema, S):
        if not isinstance(data, dict):
            raise ValueError(f"{path or 'config'}: expected a mapping")
        out = {}
        for k, v in data.items():
            sub = f"{path}.{k}" if path else k
            if k not in schema.fields:
                raise ValueError(f"{sub}: unknown key")
            out[k] = validate(v, schema.fields[k], sub)
        return out
    if isinstance(schema, M):
        raise ValueError(f"{path}: cannot be set here")
    try:
        return coerce(schema, data, path)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` onto `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        elif v is not None or k not in out:
            out[k] = v
    return out


def load_text(text: str, fname: str = "<config>") -> dict:
    yaml = _yaml()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{fname}:{line}: not valid YAML: {problem}") from None
    if node is None:
        return defaults()
    given = _convert(node, SCHEMA, "", fname)
    return merge(defaults(), given)


def load(path: str = DEFAULT_PATH) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    return load_text(text, path)
