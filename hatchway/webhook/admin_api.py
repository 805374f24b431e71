"""The admin REST API of the bundled webhook (`/v1/…`), described for clients
by packaging/openapi/hatchway-admin.yaml (installed under
/usr/share/hatchway/openapi/).

    GET    /v1/users                          the users
    POST   /v1/users                          register one (name, image, keys)
    GET    /v1/users/{name}                   one user
    PATCH  /v1/users/{name}                   change the image
    DELETE /v1/users/{name}                   unregister (the keys go too)
    GET    /v1/users/{name}/keys              their keys
    POST   /v1/users/{name}/keys              add a key (from, expiry)
    GET    /v1/users/{name}/keys/{fp}         one key (fp percent-encoded)
    DELETE /v1/users/{name}/keys/{fp}         remove it
    PUT    /v1/users/{name}/password          set the /password password
    DELETE /v1/users/{name}/password          clear it

The server runs unprivileged, so this API manages what the webhook answers,
nothing on the host: the host account sshd needs and the live sessions are
root's business (`hatchway users add|remove`).  Every request needs the admin
token (admin_token.py); every refusal is a JSON `{"error": "<one line>"}`.
"""

from __future__ import annotations

import json
from urllib.parse import quote, unquote

from hatchway.core import sshkeys

from . import token as admin_token
from .store import Refused, Store


def handle(store: Store, method: str, path: str, headers, body: bytes) -> tuple[int, object, dict]:
    """One admin request -> (status, JSON-able reply or None, extra headers)."""
    try:
        why = admin_token.check(store, headers.get("Authorization"))
        if why:
            raise Refused(why, 401, {"WWW-Authenticate": 'Bearer realm="hatchway"'})
        route, args = _route(path)
        allowed = ROUTES[route]
        if method not in allowed:
            raise Refused(f"{method} is not allowed on {route}", 405,
                          {"Allow": ", ".join(sorted(allowed))})
        return allowed[method](store, *args, _decode(body, method))
    except Refused as e:
        return e.status, {"error": str(e)}, e.headers


def _route(path: str) -> tuple[str, list[str]]:
    """The documented path template `path` matches, and its parameters.  The
    path is split before percent-decoding, so a fingerprint's `/` travels as %2F."""
    try:
        parts = [unquote(p, errors="strict") for p in path.strip("/").split("/")]
    except UnicodeDecodeError:
        parts = []
    rest = parts[2:]
    if parts[:2] == ["v1", "users"] and all(rest):
        if len(rest) == 0:
            return "/v1/users", []
        if len(rest) == 1:
            return "/v1/users/{name}", rest
        if len(rest) == 2 and rest[1] in ("keys", "password"):
            return "/v1/users/{name}/" + rest[1], rest[:1]
        if len(rest) == 3 and rest[1] == "keys":
            return "/v1/users/{name}/keys/{fingerprint}", [rest[0], rest[2]]
    raise Refused(f"no such resource {path[:100]}", 404)


def _decode(body: bytes, method: str):
    if method not in ("POST", "PUT", "PATCH"):
        return None
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError, RecursionError):     # the last: a nesting bomb
        raise Refused("the request body is not JSON", 400) from None
    if not isinstance(data, dict):
        raise Refused("the request body must be a JSON object", 400)
    return data


def _fields(body: dict, required: set[str], optional: set[str]) -> dict:
    unknown = sorted(set(body) - required - optional)
    if unknown:
        raise Refused(f"unknown field {unknown[0][:40]!r}", 400)
    missing = sorted(required - set(body))
    if missing:
        raise Refused(f"missing field {missing[0]!r}", 400)
    return body


def _key(line) -> sshkeys.PublicKey:
    if not isinstance(line, str):
        raise Refused("a key must be a string: '<type> <base64> [comment]'", 400)
    try:
        return sshkeys.parse_text(line)
    except sshkeys.BadKey as e:
        raise Refused(f"bad key: {e}", 400) from None


# ------------------------------------------------------------------ operations

def list_users(store, _body):
    return 200, store.users(), {}


def create_user(store, body):
    _fields(body, {"name"}, {"image", "keys"})
    keys = body.get("keys") or []
    if not isinstance(keys, list):
        raise Refused("'keys' must be a list of public keys", 400)
    user = store.add_user(body["name"], body.get("image"), [_key(k) for k in keys])
    return 201, user, {"Location": f"/v1/users/{user['name']}"}


def get_user(store, name, _body):
    return 200, store.user(name), {}


def update_user(store, name, body):
    _fields(body, set(), {"image"})
    if "image" in body:
        return 200, store.set_image(name, body["image"]), {}
    return 200, store.user(name), {}


def delete_user(store, name, _body):
    if not store.remove_user(name):
        raise Refused(f"no such user {name}", 404)
    return 204, None, {}


def list_keys(store, name, _body):
    return 200, store.keys(name), {}


def add_key(store, name, body):
    _fields(body, {"key"}, {"from", "expiry"})
    key = store.add_key(name, _key(body["key"]), body.get("from"), body.get("expiry"))
    return 201, key, {"Location": f"/v1/users/{name}/keys/{quote(key['fingerprint'], safe=':')}"}


def get_key(store, name, fingerprint, _body):
    return 200, store.key(name, fingerprint), {}


def delete_key(store, name, fingerprint, _body):
    store.remove_key(name, fingerprint)
    return 204, None, {}


def set_password(store, name, body):
    _fields(body, {"password"}, set())
    store.set_password(name, body["password"])
    return 204, None, {}


def clear_password(store, name, _body):
    store.set_password(name, None)
    return 204, None, {}


ROUTES = {
    "/v1/users": {"GET": list_users, "POST": create_user},
    "/v1/users/{name}": {"GET": get_user, "PATCH": update_user, "DELETE": delete_user},
    "/v1/users/{name}/keys": {"GET": list_keys, "POST": add_key},
    "/v1/users/{name}/keys/{fingerprint}": {"GET": get_key, "DELETE": delete_key},
    "/v1/users/{name}/password": {"PUT": set_password, "DELETE": clear_password},
}
