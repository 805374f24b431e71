"""Client side of the ContainerSSH-compatible webhooks (auth `/pubkey`, config).

Wire format (ContainerSSH 0.5/0.6): JSON POST, `Content-Type: application/json`,
the path appended to the configured URL by plain concatenation.  Replies are
decoded leniently, because reference servers echo request fields back; the
only "yes" is HTTP 200 with `"success": true` (a JSON boolean, not a string).

Hatchway extensions in a `/pubkey` reply, ignored by ContainerSSH itself:
    "hatchway": {"from": ["192.0.2.0/24", "*.example.com"],
                 "expiry": "2026-12-31T23:59:00Z" | 1798761540 | "20261231"}
They become sshd's own `from="…"` and `expiry-time="…"` options.  A reply that
carries them malformed is a denial: the server meant to restrict the key.
"""

from __future__ import annotations

import json
import re
import time

from . import http11
from .errors import Decision, HatchwayError  # noqa: F401  (Decision: re-exported)


class WebhookError(HatchwayError):
    """The webhook could not give an answer (as opposed to answering no)."""


def _tls(conf: dict) -> dict:
    return {k: conf.get(k) for k in ("ca_file", "cert_file", "key_file")}


def _headers(conf: dict) -> dict[str, str]:
    h = {"Content-Type": "application/json", "Accept": "application/json",
         "Connection": "close", "User-Agent": "hatchway"}
    token_file = conf.get("token_file")
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise WebhookError(f"cannot read token file {token_file}: {e.strerror}") from None
        if not token or any(c in token for c in "\r\n"):
            raise WebhookError(f"token file {token_file} is empty or malformed")
        h["Authorization"] = f"Bearer {token}"
    return h


def post_json(conf: dict, url: str, payload: dict, deadline: http11.Deadline) -> tuple[int, object]:
    """POST `payload`; retry only failures that never reached the server, and
    only while the deadline allows.  Returns (status, decoded JSON or None)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = _headers(conf)
    scheme_host, path = _split(url)
    delay = 0.1
    while True:
        try:
            resp = http11.request(scheme_host, "POST", path, body, headers, deadline,
                                  conf.get("request_timeout"), conf.get("max_body") or 65536,
                                  _tls(conf))
            break
        except http11.HTTPError as e:
            if not e.retryable:
                raise WebhookError(str(e)) from None
            try:
                left = deadline.left()
            except http11.HTTPError:
                raise WebhookError(str(e)) from None
            if left is not None and left <= delay:
                raise WebhookError(str(e)) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    try:
        text = resp.body.decode("utf-8")
        data = json.loads(text) if text.strip() else None
    except (UnicodeDecodeError, ValueError, RecursionError):   # the last: a nesting bomb
        data = None
    return resp.status, data


def _split(url: str) -> tuple[str, str]:
    m = re.match(r"^(https?://[^/]+)(/.*)?$", url)
    if not m:
        raise WebhookError(f"bad webhook URL {url!r}")
    return m.group(1), m.group(2) or "/"


# ----------------------------------------------------------------- /pubkey

# \Z, not $ (which also matches before a trailing newline): a newline in a
# pattern would split the line sshd reads.
_FROM_PATTERN = re.compile(r"!?[A-Za-z0-9.:/*?_-]{1,255}\Z")


def check_pubkey(conf: dict, *, username: str, public_key: str, remote_address: str,
                 connection_id: str, client_version: str | None = None,
                 deadline: http11.Deadline) -> Decision:
    payload = {"username": username, "remoteAddress": remote_address,
               "connectionId": connection_id, "publicKey": public_key}
    if client_version:
        payload["clientVersion"] = client_version
    status, data = post_json(conf, conf["url"] + "/pubkey", payload, deadline)
    if status != 200:
        raise WebhookError(f"webhook answered HTTP {status}")
    if not isinstance(data, dict):
        raise WebhookError("webhook reply is not a JSON object")
    success = data.get("success")
    if success is not True:
        if success is False:
            return Decision(False, "webhook said no")
        raise WebhookError("webhook reply has no boolean 'success'")
    return Decision(True, "webhook said yes", extension_options(data.get("hatchway")))


def extension_options(ext) -> list[str]:
    """Turn the optional `hatchway` reply object into authorized_keys options.
    Raises WebhookError (→ deny) on anything malformed."""
    if ext is None:
        return []
    if not isinstance(ext, dict):
        raise WebhookError("'hatchway' extension is not an object")
    opts: list[str] = []
    src = ext.get("from")
    if src is not None:
        if isinstance(src, str):
            src = [src]
        if not isinstance(src, list) or not src or not all(
                isinstance(p, str) and _FROM_PATTERN.match(p) for p in src):
            raise WebhookError("'hatchway.from' must be a non-empty list of address patterns")
        opts.append('from="%s"' % ",".join(src))
    exp = ext.get("expiry")
    if exp is not None:
        opts.append('expiry-time="%s"' % expiry_time(exp))
    return opts


def expiry_time(value) -> str:
    """Unix seconds, ISO 8601 or sshd's own YYYYMMDD[HHMM[SS]] -> sshd's format (UTC)."""
    import datetime as dt
    if isinstance(value, bool):
        raise WebhookError("'hatchway.expiry' is not a time")
    if isinstance(value, (int, float)):
        try:
            t = dt.datetime.fromtimestamp(value, dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise WebhookError("'hatchway.expiry' is out of range") from None
        return t.strftime("%Y%m%d%H%M%SZ")
    if isinstance(value, str):
        if re.fullmatch(r"\d{8}(\d{4}(\d{2})?)?Z?", value):
            return value if value.endswith("Z") else value + "Z"
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise WebhookError("'hatchway.expiry' is not a recognised time") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%SZ")
    raise WebhookError("'hatchway.expiry' is not a time")


# ----------------------------------------------------------------- config

def fetch_config(conf: dict, *, username: str, remote_address: str, connection_id: str,
                 client_version: str | None = None,
                 deadline: http11.Deadline) -> dict:
    """Ask the config webhook for this connection's overrides (ContainerSSH shape).
    Returns the `config` object (possibly empty); raises WebhookError otherwise."""
    payload = {"username": username, "authenticatedUsername": username,
               "remoteAddress": remote_address, "connectionId": connection_id}
    if client_version:
        payload["clientVersion"] = client_version
    status, data = post_json(conf, conf["url"], payload, deadline)
    if status != 200:
        raise WebhookError(f"config webhook answered HTTP {status}")
    if not isinstance(data, dict):
        raise WebhookError("config webhook reply is not a JSON object")
    cfg = data.get("config", {})
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise WebhookError("config webhook reply has a non-object 'config'")
    return cfg
