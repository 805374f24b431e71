"""Loading and validating /etc/hatchway/hatchway.yaml.

Every part of Hatchway reads the same file: the key helper its `auth`
section, the daemon everything else.  Each section is declared once, as a
class (`@section`): its attributes are the schema (type, default, extra
check), and the class is what the daemon reads once a session's
configuration is resolved: a frozen dataclass, so `cfg.session.mode`, never
`cfg["session"]["mode"]`.  Backends declare their own sections in their own
folders (backends/<name>/settings.py); `schema()` puts them in, under the
names backends/registry.py gives.

A config exists in two forms, on purpose: the validated mapping that load()
returns, which `groups:` entries, templates and the config webhook are merged
into (daemon/resolve.py), and the typed Config that build() makes of it for
everything downstream.  Every error names the file, the line and the dotted
key, so an admin can fix it without guessing.
"""

from __future__ import annotations

import copy
import dataclasses
import re

from .errors import ConfigError  # noqa: F401  (defined apart, see errors.py)

# No `typing` at run time: it costs hatchway-keys (which imports this module
# whenever the config changed) a few ms more.  Annotations stay strings
# (__future__).

DEFAULT_PATH = "/etc/hatchway/hatchway.yaml"
# Placeholders a session's settings may hold (filled per user by daemon/resolve.py)
TEMPLATE = re.compile(r"\{(user|uid|gid|group)\}")


# --------------------------------------------------------------------------
# value types

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_duration(value: object) -> float:
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


def parse_size(value: object) -> int:
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

    def __init__(self, kind: str, default: object = None, choices: tuple = (),
                 item: "T | None" = None, check=None,
                 doc: str = ""):
        self.kind = kind           # str int float bool duration size enum list map any
        self.default = default
        self.choices = choices
        self.item = item           # element type for list/map
        self.check = check         # extra validation, may normalise
        self.doc = doc


class S:
    """A section: a mapping with a fixed set of keys (and, when declared with
    @section, the class its values are built into)."""
    __slots__ = ("fields", "open", "typed")

    def __init__(self, fields: "dict[str, T | S | M] | None" = None, open: bool = False,
                 typed: type | None = None):
        self.fields = {} if fields is None else fields
        self.open = open           # unknown keys allowed (passed through as-is)
        self.typed = typed

    def without(self, keys) -> "S":
        """The same section without `keys` (what a `groups:` entry may not set)."""
        return S({k: v for k, v in self.fields.items() if k not in keys})


class M:
    """A mapping from free-form names (e.g. group names) to sections."""
    __slots__ = ("item", "default")

    def __init__(self, item: S, default: object = None):
        self.item = item
        self.default = {} if default is None else default


class Sub:
    """A nested section inside a @section class: `subsystems: Subsystems = Sub(Subsystems)`."""
    __slots__ = ("cls",)

    def __init__(self, cls: type):
        self.cls = cls


def section(cls: type) -> type:
    """Make `cls` a config section: its T/Sub/M attributes, in order, become
    its schema (`cls.SCHEMA`), and the class a frozen dataclass of them."""
    fields = {}
    for name, value in list(vars(cls).items()):
        if isinstance(value, T) or isinstance(value, M):
            fields[name] = value
        elif isinstance(value, Sub):
            fields[name] = value.cls.SCHEMA
        else:
            continue
        delattr(cls, name)          # a field, not a dataclass default: build() gives all
    cls = dataclasses.dataclass(frozen=True)(cls)
    cls.SCHEMA = S(fields, typed=cls)
    return cls


def build(schema: "S | T | M", value):
    """The typed form of a validated value: @section classes for sections,
    the value itself for everything else."""
    if isinstance(schema, S) and schema.typed is not None:
        value = value or {}
        return schema.typed(**{k: build(sub, value.get(k)) for k, sub in schema.fields.items()})
    return value


def check_url(value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def check_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"expected an absolute path, got {value!r}")
    return value


def check_argv(value: list) -> list:
    if not value:
        raise ValueError("expected a non-empty command list")
    return value


PATH = lambda d=None: T("str", d, check=check_path)    # noqa: E731


# --------------------------------------------------------------------------
# the sections every backend shares

@section
class AuthWebhook:
    url: str = T("str", "http://127.0.0.1:8642", check=check_url)
    timeout: float = T("duration", 5.0, doc="total deadline of one key check")
    request_timeout: float = T("duration", 2.0)
    ca_file: str | None = PATH()
    cert_file: str | None = PATH()
    key_file: str | None = PATH()
    token_file: str | None = PATH()
    max_body: int = T("size", 65536)


@section
class AuthCache:
    ttl: float = T("duration", 10.0)
    stale_if_error: float = T("duration", 0.0)
    dir: str = PATH("/var/cache/hatchway-keys")


@section
class Auth:
    webhook: AuthWebhook = Sub(AuthWebhook)
    cache: AuthCache = Sub(AuthCache)


@section
class ConfigWebhook:
    url: str | None = T("str", None, check=check_url)
    timeout: float = T("duration", 10.0)
    request_timeout: float = T("duration", 5.0)
    ca_file: str | None = PATH()
    cert_file: str | None = PATH()
    key_file: str | None = PATH()
    token_file: str | None = PATH()
    max_body: int = T("size", 1 << 20)


@section
class Daemon:
    socket: str = PATH("/run/hatchway/hatchwayd.sock")
    reap_interval: float = T("duration", 60.0)
    hello_timeout: float = T("duration", 10.0)


@section
class Subsystems:
    sftp: list = T("list", ["/usr/lib/openssh/sftp-server"], item=T("str"))


def _ports(value):
    from .switches import parse_ports
    return parse_ports(value)


@section
class Session:
    mode: str = T("enum", "session", choices=("session", "connection", "persistent"))
    shell: list = T("list", ["/bin/sh"], item=T("str"), check=check_argv)
    subsystems: Subsystems = Sub(Subsystems)
    host_sftp_commands: list = T("list", ["/usr/lib/openssh/sftp-server", "internal-sftp"],
                                 item=T("str"))
    env_allow: list = T("list", ["LANG", "LC_*", "GIT_PROTOCOL"], item=T("str"))
    stop_grace: float = T("duration", 1.0, doc="after a hangup: SIGHUP, then removal")
    # pty sessions as asciicast (daemon/recording.py): off, output, or all
    # (output and what the user typed)
    record: str = T("enum", "off", choices=("off", "output", "all"))
    # `ssh -A` reaching the container (daemon/agent.py): off unless the admin
    # turns it on here or in a `groups:` entry.  hatchway-keys reads the same
    # two places to decide whether sshd may forward the agent at all
    # (keys/compiled_config.py); the config webhook can never turn it on.
    agent_forwarding: bool = T("bool", False)
    # `ssh -L/-D/-W localhost:PORT` reaching 127.0.0.1:PORT inside the
    # user's container or pod (daemon/portfwd.py, daemon/netguard.py): off unless the
    # admin turns it on here or in a `groups:` entry.  hatchway-keys and the
    # relay read the same two places of the file; the config webhook never
    # widens it.
    port_forwarding: bool = T("bool", False)
    # `ssh -R P:...` for these ports only (ints or "LOW-HIGH"): sshd's
    # listener stays on the host's loopback, where the guard lets only the
    # relay reach it; the relay listens on 127.0.0.1:P inside the user's
    # container (daemon/rfwd.py).  Empty: -R refused.  File only, like the two above.
    remote_forward_ports: list = T("list", [], check=_ports)
    idle_timeout: float = T("duration", 0.0, doc="no byte either way for this long ends it")
    max_duration: float = T("duration", 0.0, doc="a session ends after this long")


# What a `groups:` entry or the config webhook may not change in `session`.
SESSION_DAEMON_WIDE = ("host_sftp_commands", "stop_grace")
# What the config webhook may set by default, besides each backend's list
# (ContainerSSH answers carry `mode` routinely).
WEBHOOK_MAY_SET = ["session.shell", "session.subsystems", "session.mode"]


@section
class Workspace:
    """connection and persistent modes (backends/workspaces.py)."""
    idle_timeout: float = T("duration", 3600.0,
                            doc="persistent: stopped after this long without a session")
    remove_after: float = T("duration", 0.0, doc="persistent: removed after this long stopped")
    connection_grace: float = T("duration", 2.0,
                                doc="connection: how long it outlives its last session")


def _not_negative(value):
    if value is not None and value < 0:
        raise ValueError("cannot be negative (0 means no limit)")
    return value


@section
class Policy:
    webhook_may_set: list = T("list", None, item=T("str"))   # default: see schema()
    mount_prefixes: list = T("list", [], item=T("str"))
    allow_privileged: bool = T("bool", False)
    allow_host_namespaces: bool = T("bool", False)
    allow_capabilities: list = T("list", [], item=T("str"))
    allow_devices: bool = T("bool", False)
    allow_new_privileges: bool = T("bool", False)
    allow_suid_mounts: bool = T("bool", False)
    allow_pod_fields: list = T("list", [], item=T("str"))
    # Every session is limited unless the admin says otherwise: these are
    # both the maximum and the default (0: no maximum, no default).
    max_memory: int = T("size", 1 << 30, check=_not_negative)
    max_cpus: float = T("float", 1.0, check=_not_negative)
    max_pids: int = T("int", 1024, check=_not_negative)


@section
class Limits:
    """What the daemon's main process counts (0: no limit)."""
    max_sessions: int = T("int", 200, check=_not_negative)
    max_sessions_per_user: int = T("int", 20, check=_not_negative)
    # Each session creates a container: a user's loop of logins would keep
    # the engine busy creating them for everyone.  At most max_starts_per_user
    # sessions of one user start within any starts_window.
    max_starts_per_user: int = T("int", 60, check=_not_negative)
    starts_window: float = T("duration", 60.0)


def check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected ADDR:PORT, got {value!r}")
    return value


@section
class Recordings:
    dir: str = PATH("/var/lib/hatchway/recordings")
    max_size: int = T("size", 50_000_000)
    retention: float = T("duration", 30 * 86400.0)
    banner: str = T("str", "this session is being recorded")


@section
class Metrics:
    # Prometheus text format at http://<listen>/metrics; null: no metrics
    listen: str | None = T("str", "127.0.0.1:9733", check=check_listen)


@section
class Log:
    level: str = T("enum", "info", choices=("debug", "info", "warning", "error"))


_SCHEMA: list = []


def schema() -> S:
    """The whole file: the shared sections and one section per registered
    backend, each under its registry name.  Built once per process."""
    if _SCHEMA:
        return _SCHEMA[0]
    from hatchway.backends import registry
    backends = {name: registry.settings(name) for name in registry.BACKENDS}
    may_set = WEBHOOK_MAY_SET + [f"{name}.{k}" for name, mod in backends.items()
                                 for k in mod.WEBHOOK_MAY_SET]
    policy = S(dict(Policy.SCHEMA.fields, webhook_may_set=T("list", may_set, item=T("str"))),
               typed=Policy)
    group = S({"session": Session.SCHEMA.without(SESSION_DAEMON_WIDE),
               "workspace": Workspace.SCHEMA,
               **{name: mod.Settings.SCHEMA.without(mod.DAEMON_WIDE)
                  for name, mod in backends.items()}})
    fields = {
        "auth": Auth.SCHEMA,
        "config_webhook": ConfigWebhook.SCHEMA,
        "backend": T("enum", "docker", choices=tuple(backends)),
        "daemon": Daemon.SCHEMA,
        **{name: mod.Settings.SCHEMA for name, mod in backends.items()},
        "session": Session.SCHEMA,
        "workspace": Workspace.SCHEMA,
        "groups": M(group),
        "policy": policy,
        "recordings": Recordings.SCHEMA,
        "metrics": Metrics.SCHEMA,
        "limits": Limits.SCHEMA,
        "log": Log.SCHEMA,
    }
    # The whole config, typed: Config(auth=Auth(...), docker=DockerSettings(...), ...)
    typed = dataclasses.make_dataclass("Config", list(fields), frozen=True)
    typed.__doc__ = "hatchway.yaml, resolved and typed: one attribute per section."
    _SCHEMA.append(S(fields, typed=typed))
    return _SCHEMA[0]


# --------------------------------------------------------------------------
# loading


def _yaml():
    import yaml  # deferred: costs ~20 ms, and the key helper's fast path avoids it
    return yaml


def _convert(node, schema, path: str, fname: str) -> object:
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
        named: dict[str, object] = {}
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
        out: dict[str, object] = {}
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


def coerce(t: T, value: object, path: str = "") -> object:
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


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "nothing"}.get(type(value),
                                                                         type(value).__name__)


def _plain(node) -> object:
    """A yaml node as plain Python data (safe types only)."""
    yaml = _yaml()
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def defaults(spec: "S | T | M | None" = None):
    """The value of `spec` (a section, a leaf; default: the whole file) when
    nothing is given."""
    spec = schema() if spec is None else spec
    if isinstance(spec, S):
        return {k: defaults(v) for k, v in spec.fields.items()}
    return copy.deepcopy(spec.default)


def validate(data: object, spec: "S | T | M | None" = None, path: str = "") -> object:
    """Check a partial config that did not come from YAML (the config webhook's,
    translated); raises ValueError naming the dotted key."""
    spec = schema() if spec is None else spec
    if isinstance(spec, S):
        if not isinstance(data, dict):
            raise ValueError(f"{path or 'config'}: expected a mapping")
        out = {}
        for k, v in data.items():
            sub = f"{path}.{k}" if path else k
            if k not in spec.fields:
                raise ValueError(f"{sub}: unknown key")
            out[k] = validate(v, spec.fields[k], sub)
        return out
    if isinstance(spec, M):
        raise ValueError(f"{path}: cannot be set here")
    try:
        return coerce(spec, data, path)
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
    except RecursionError:
        raise ConfigError(f"{fname}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            line = mark.line + 1
        elif isinstance(getattr(e, "position", None), int):     # a character YAML refuses
            line = text.count("\n", 0, e.position) + 1
        else:
            line = 0
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{fname}:{line}: not valid YAML: {problem}") from None
    given = None if node is None else _convert(node, schema(), "", fname)
    # an empty file and an explicit `null` document both mean: all defaults
    return merge(defaults(), given or {})


def typed(cfg: dict):
    """The typed Config of a validated (and possibly merged) mapping."""
    return build(schema(), cfg)


def load(path: str = DEFAULT_PATH) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    return load_text(text, path)
