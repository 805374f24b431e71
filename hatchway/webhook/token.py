"""The admin REST API's bearer token.

The token lives in /etc/hatchway/admin-token, mode 0600, owned by root: only
root (and whoever root gives it to) can use the API.  The webhook itself runs
as hatchway-webhook and cannot read that file; the store holds the token's
SHA-256 instead, which is all the server needs to check a presented token and
is useless to anyone who reads it (the token is 256 random bits, so a plain
hash cannot be searched).

`hatchway webhook token` (run by the package's postinst, and by admins to
rotate) creates the file if it is missing and writes the hash into the store;
the server reads the hash on every request, so a rotation takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from hatchway.core import fsutil
from hatchway.core.errors import HatchwayError

from .store import Store

DEFAULT_FILE = "/etc/hatchway/admin-token"
SETTING = "admin_token_sha256"
PREFIX = "hwa_"


class TokenError(HatchwayError):
    pass


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _read(path: str) -> str:
    st = os.lstat(path)
    if not os.path.isfile(path) or os.path.islink(path):
        raise TokenError(f"{path} is not a regular file")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise TokenError(f"{path} must be mode 0600 and owned by uid {os.geteuid()} "
                         f"(it is {st.st_mode & 0o777:04o}, uid {st.st_uid})")
    with open(path, encoding="ascii") as f:
        token = f.read().strip()
    if not token or any(c.isspace() for c in token):
        raise TokenError(f"{path} does not hold a token")
    return token


def _write(path: str, token: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fsutil.atomic_write(path, (token + "\n").encode("ascii"), 0o600, durable=True)


def ensure(store: Store, path: str = DEFAULT_FILE, rotate: bool = False) -> str:
    """Make the token file and the stored hash agree; returns what was done:
    created, rotated, synced (the store learnt an existing token) or unchanged."""
    try:
        if rotate or not os.path.lexists(path):
            token = PREFIX + secrets.token_urlsafe(32)
            _write(path, token)
            action = "rotated" if rotate else "created"
        else:
            token = _read(path)
            action = "unchanged"
    except (OSError, UnicodeDecodeError) as e:
        raise TokenError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    want = digest(token)
    if store.setting(SETTING) != want:
        store.set_setting(SETTING, want)
        if action == "unchanged":
            action = "synced"
    return action


def check(store: Store, authorization: str | None) -> str | None:
    """None if `authorization` carries the admin token, else why not (one line)."""
    want = store.setting(SETTING)
    if not want:
        return "the admin API has no token yet: run `hatchway webhook token` as root"
    if not authorization:
        return "missing bearer token"
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "expected `Authorization: Bearer <token>`"
    if not hmac.compare_digest(digest(token.strip()), want):
        return "wrong token"
    return None
