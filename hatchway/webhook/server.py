"""The bundled webhook (`hatchway webhook serve`, hatchway-webhook.service).

It speaks ContainerSSH's protocol, so it is just the default: any
ContainerSSH-compatible server can take its place in `auth.webhook.url`.

  POST /pubkey    yes only for a key registered to that user and not expired;
                  per-key source addresses and expiry go out as the `hatchway`
                  extension (hatchway/core/webhook_client.py turns them into sshd's
                  from= and expiry-time=)
  POST /password  no, unless started with --allow-passwords and the user has a
                  password (`hatchway users passwd`); sshd never asks this, a
                  ContainerSSH server using this webhook may
  POST /config    per-user overrides in ContainerSSH's shape (the image)
  /v1/...         the admin REST API (admin_api.py), bearer token only

It must outlive every client: a body too large, not JSON or never finished,
a request line that is garbage, a client that stalls — each gets one error
reply (or a closed connection) and the server goes on.  And no client may
hold the server's connections: a request must be whole within
REQUEST_DEADLINE (however slowly its bytes trickle in), and one peer may hold
only MAX_PER_PEER connections.  A peer is a local user (the uid owning the
client's socket, from /proc/net/tcp) or a remote address; sshd's key helper,
hatchwayd and root are not limited but by MAX_CONNECTIONS, so a local user
filling the server cannot fail everyone's logins.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
import logging
import pwd
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from hatchway.core import sshkeys

from . import admin_api
from .metrics import WebhookMetrics
from .store import Refused, Store

log = logging.getLogger("hatchway-webhook")

DEFAULT_LISTEN = "127.0.0.1:8642"   # = the default auth.webhook.url (hatchway/core/config.py)
MAX_REQUEST = 64 * 1024             # a /pubkey request is < 2 KiB, an RSA-16384 key < 3 KiB
CLIENT_TIMEOUT = 10.0               # seconds a client may stall mid-request or idle between
REQUEST_DEADLINE = 10.0             # seconds from a request's first byte to its last
MAX_CONNECTIONS = 256               # past this, new connections are closed at once
MAX_PER_PEER = 16                   # connections at once of one limited peer
# the users whose connections only MAX_CONNECTIONS limits
TRUSTED_USERS = ("root", "hatchway-keys", "hatchway")
PASSWORD_CHECKS = 2                 # scrypt runs at once (16 MiB and ~50 ms each)
PASSWORD_RATE = 5.0                 # checks per second and peer, in bursts of
PASSWORD_BURST = 10


class _DeadlineReader(io.RawIOBase):
    """The socket as http.server reads it, every read bounded by what is left
    of the request's deadline (a per-read timeout alone lets a client that
    sends a byte every few seconds hold the connection for ever)."""

    def __init__(self, sock: socket.socket, handler: "Handler"):
        self.sock = sock
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("request deadline passed")
        self.sock.settimeout(min(left, self.handler.timeout))
        return self.sock.recv_into(buf)


class Handler(BaseHTTPRequestHandler):
    server_version = "hatchway-webhook"
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT

    # a request line too garbled to say its version still gets a status line
    default_request_version = "HTTP/1.0"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        # who this is, for the password rate (trusted local users share one)
        self.peer = self.server._peer_of.get(id(self.request)) or \
            f"addr:{self.client_address[0]}"
        self.deadline = time.monotonic() + self.server.request_deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        # the wait for a kept-alive connection's next request counts too
        self.deadline = time.monotonic() + self.server.request_deadline
        super().handle_one_request()

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (bad request line, headers too long or
        too many) in the same JSON shape as ours, and always the last word."""
        self.close_connection = True
        try:
            short = message or self.responses.get(code, ("error",))[0]
            self._send(code, {"error": str(short).splitlines()[0][:200]})
        except OSError:
            pass

    def log_message(self, fmt, *args):  # route through logging, not stderr prints
        log.debug("%s %s", self.address_string(), fmt % args)

    def log_error(self, fmt, *args):    # malformed requests: worth a line, not a traceback
        log.info("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, obj: object, headers: dict | None = None) -> None:
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        """The request body, bounded.  A body we do not read to its end makes
        the connection unusable, so every refusal here also closes it."""
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise Refused("send a Content-Length, not a chunked body", 411)
        raw = self.headers.get("Content-Length", "0")
        if not raw.strip().isdigit():
            self.close_connection = True
            raise Refused("bad Content-Length", 400)
        n = int(raw)
        if n > MAX_REQUEST:
            self.close_connection = True
            raise Refused(f"request body over {MAX_REQUEST} bytes", 413)
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            self.close_connection = True
            raise Refused("request body ended early", 400)
        return data

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        started = time.monotonic()
        route_name = "other"
        try:
            body = self._body()
            if path == "/metrics" and method == "GET":
                data, ctype = self.server.metrics.text()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if path == "/v1" or path.startswith("/v1/"):
                route_name = "admin"
                status, reply, headers = admin_api.handle(self.server.store, method, path,
                                                          self.headers, body)
                log.info("admin %s %s %s -> %d", self.address_string(), method, path[:200],
                         status)
                self._send(status, reply, headers)
                return
            route = {"/pubkey": self.pubkey, "/password": self.password,
                     "/config": self.config}.get(path.rstrip("/"))
            if route is None:
                raise Refused("not found", 404)
            route_name = path.strip("/")
            if method != "POST":
                self._send(405, {"error": f"{path} takes POST"}, {"Allow": "POST"})
                return
            try:
                data = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):    # the last: a bomb
                data = None
            if not isinstance(data, dict):
                raise Refused("expected a JSON object", 400)
            route(data)
        except Refused as e:
            self._send(e.status, {"error": str(e)}, e.headers)
        except (ConnectionError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # one bad request must not take the server down
            log.exception("error handling %s %s", method, path[:200])
            self.close_connection = True
            self._send(500, {"error": f"internal error: {type(e).__name__}"})
        finally:
            took = time.monotonic() - started
            if route_name != "other":
                self.server.metrics.took(route_name, took)
            log.debug("%s %s took %.3fs", method, path[:200], took)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self._dispatch("POST")

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_PUT(self):  # noqa: N802
        self._dispatch("PUT")

    def do_PATCH(self):  # noqa: N802
        self._dispatch("PATCH")

    def do_DELETE(self):  # noqa: N802
        self._dispatch("DELETE")

    # ------------------------------------------------------------ webhook

    def pubkey(self, body: dict) -> None:
        user, key_line = body.get("username"), body.get("publicKey")
        answer: dict = {"success": False}
        why, why_kind = "no such key", "unknown"
        if isinstance(user, str) and isinstance(key_line, str):
            try:
                key = sshkeys.parse_line(key_line)
            except sshkeys.BadKey as e:
                key, why, why_kind = None, f"bad key: {e}", "bad_key"
            row = key and self.server.store.find_key(user, key.type, key.b64)
            if row and row["expiry"] and row["expiry"] <= _now_iso():
                # sshd would refuse it too; ContainerSSH would not
                why, why_kind = "key expired", "expired"
            elif row:
                answer = {"success": True, "authenticatedUsername": user}
                ext = {}
                if row["from"]:
                    ext["from"] = row["from"]
                if row["expiry"]:
                    ext["expiry"] = row["expiry"]
                if ext:
                    answer["hatchway"] = ext
                why, why_kind = row["fingerprint"], "key"
        else:
            why, why_kind = "no username or publicKey", "malformed"
        self.server.metrics.decided(answer["success"], why_kind)
        log.info("pubkey user=%r remote=%r connection=%r -> %s (%s)", str(user)[:40],
                 str(body.get("remoteAddress"))[:60], str(body.get("connectionId"))[:40],
                 "yes" if answer["success"] else "no", why)
        self._send(200, answer)

    def password(self, body: dict) -> None:
        ok = False
        user, pw = body.get("username"), body.get("passwordBase64")
        if self.server.allow_passwords and isinstance(user, str) and isinstance(pw, str):
            if not self.server.password_bucket(self.peer):
                raise Refused("too many password checks; try again later", 429,
                              {"Retry-After": "1"})
            # scrypt costs 16 MiB and ~50 ms: a few at a time, whoever asks
            if not self.server.scrypt_slots.acquire(timeout=2.0):
                raise Refused("too many password checks at once; try again", 429,
                              {"Retry-After": "1"})
            try:
                ok = self.server.store.check_password(user, base64.b64decode(pw, validate=True))
            except (binascii.Error, ValueError):
                ok = False
            finally:
                self.server.scrypt_slots.release()
        log.info("password user=%r -> %s%s", str(user)[:40], "yes" if ok else "no",
                 "" if self.server.allow_passwords else " (password logins are off)")
        self._send(200, {"success": ok})

    def config(self, body: dict) -> None:
        user = body.get("authenticatedUsername") or body.get("username")
        image = self.server.store.image(user) if isinstance(user, str) else None
        cfg: dict = {}
        if image:
            cfg = {"docker": {"execution": {"container": {"image": image}}}}
        log.info("config user=%r connection=%r -> %s", str(user)[:40],
                 str(body.get("connectionId"))[:40], "image" if image else "nothing")
        self._send(200, {"config": cfg})


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], db_path: str, allow_passwords: bool = False):
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        super().__init__(addr, Handler)
        self._local = threading.local()
        self._active = 0
        self._per_peer: dict[str, int] = {}
        self._peer_of: dict[int, str | None] = {}
        self._lock = threading.Lock()
        self.db_path = db_path
        self.allow_passwords = allow_passwords
        self.metrics = WebhookMetrics()
        self.request_deadline = REQUEST_DEADLINE
        self.max_per_peer = MAX_PER_PEER
        self.trusted_uids = _uids(TRUSTED_USERS)
        self.scrypt_slots = threading.BoundedSemaphore(PASSWORD_CHECKS)
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def store(self) -> Store:
        # one SQLite connection per handler thread: sqlite3 objects are not
        # for sharing, and opening one costs well under a millisecond
        st = getattr(self._local, "store", None)
        if st is None:
            st = self._local.store = Store(self.db_path, setup=False)
        return st

    def peer(self, request, client_address) -> str | None:
        """Who is connecting, as the limits count: `uid:N` for a local user,
        the address for a remote one, None for a trusted local user."""
        uid = peer_uid(request) if _loopback(client_address[0]) else None
        if uid is None:
            return f"addr:{client_address[0]}"
        return None if uid in self.trusted_uids else f"uid:{uid}"

    def process_request(self, request, client_address):
        key = self.peer(request, client_address)
        with self._lock:
            why = None
            if self._active >= MAX_CONNECTIONS:
                why = f"over {MAX_CONNECTIONS} connections"
            elif key is not None and self._per_peer.get(key, 0) >= self.max_per_peer:
                why = f"{key} holds {self.max_per_peer} connections already"
            if why is None:
                self._active += 1
                if key is not None:
                    self._per_peer[key] = self._per_peer.get(key, 0) + 1
                self._peer_of[id(request)] = key
        if why is not None:
            log.warning("%s; closing one from %s", why, client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._active -= 1
                key = self._peer_of.pop(id(request), None)
                if key is not None:
                    self._per_peer[key] -= 1
                    if not self._per_peer[key]:
                        del self._per_peer[key]
            st = getattr(self._local, "store", None)
            if st is not None:
                st.close()

    def password_bucket(self, peer: str) -> bool:
        """A token for one password check of `peer`, if its bucket has one."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(peer, (PASSWORD_BURST, now))
            tokens = min(PASSWORD_BURST, tokens + (now - then) * PASSWORD_RATE)
            ok = tokens >= 1
            self._buckets[peer] = (tokens - 1 if ok else tokens, now)
            if len(self._buckets) > 4096:       # forget the full ones
                self._buckets = {k: v for k, v in self._buckets.items()
                                 if v[0] < PASSWORD_BURST}
        return ok

    def handle_error(self, request, client_address):
        err = sys.exc_info()[1]
        if isinstance(err, OSError):    # reset, gone, timed out: the client's business
            log.info("connection from %s ended: %s", client_address[0],
                     err.strerror or type(err).__name__)
        else:
            log.exception("connection from %s failed", client_address[0])


def _uids(names) -> set[int]:
    out = set()
    for name in names:
        try:
            out.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    return out


def _loopback(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _proc_net_addr(text: str) -> tuple[str, int]:
    """`0100007F:1F90` (/proc/net/tcp's host-order words) -> ("127.0.0.1", 8080)."""
    hexip, hexport = text.split(":")
    raw = bytes.fromhex(hexip)
    words = b"".join(struct.pack(">I", struct.unpack("<I", raw[i:i + 4])[0])
                     for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip), int(hexport, 16)


def peer_uid(conn: socket.socket) -> int | None:
    """The uid owning the other end of a loopback TCP connection: the kernel
    lists it with the client's socket in /proc/net/tcp (or tcp6)."""
    try:
        me = conn.getsockname()[:2]
        them = conn.getpeername()[:2]
    except OSError:
        return None
    want = (_norm(them[0]), them[1], _norm(me[0]), me[1])
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 8:
                        continue
                    local, remote = _proc_net_addr(parts[1]), _proc_net_addr(parts[2])
                    if (local[0], local[1], remote[0], remote[1]) == want:
                        return int(parts[7])
        except (OSError, ValueError):
            continue
    return None


def _norm(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def parse_listen(listen: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[V6ADDR]:PORT` or `:PORT` (loopback)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected ADDR:PORT, got {listen!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _can_see_uids() -> bool:
    try:
        with open("/proc/self/net/tcp", encoding="ascii") as f:
            return "uid" in f.readline().split()
    except (OSError, IndexError):
        return False


def serve(listen: str, db_path: str, allow_passwords: bool = False) -> None:
    addr = parse_listen(listen)
    # Create or upgrade the schema, then keep this connection, having read,
    # open for good.  SQLite deletes the -wal/-shm files when the last
    # connection closes and whoever opens next creates them again; if that
    # were a root admin command, the files would be root's for the moment
    # before SQLite hands them to the database's owner, and a request
    # arriving in that moment fails with "unable to open database file".
    # While this connection lives they are created once, by this user.
    keeper = Store(db_path)
    keeper.users()
    server = Server(addr, db_path, allow_passwords)
    log.info("hatchway webhook listening on %s (store %s, password logins %s, local peers "
             "by uid: %s)", listen, db_path, "on" if allow_passwords else "off",
             "yes" if _can_see_uids() else "NO (cannot read /proc/net/tcp)")
    server.serve_forever()
