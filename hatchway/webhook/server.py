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
reply (or a closed connection) and the server goes on.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import socket
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
MAX_CONNECTIONS = 256               # past this, new connections are closed at once


class Handler(BaseHTTPRequestHandler):
    server_version = "hatchway-webhook"
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT

    # a request line too garbled to say its version still gets a status line
    default_request_version = "HTTP/1.0"

    def version_string(self) -> str:
        return self.server_version

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
            self._send(e.status, {"error": str(e)})
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
            try:
                ok = self.server.store.check_password(user, base64.b64decode(pw, validate=True))
            except (binascii.Error, ValueError):
                ok = False
        log.info("password user=%r -> %s%s", str(user)[:40], "yes" if ok else "no",
                 "" if self.server.allow_passwords else " (password logins are off)")
        self._send(200, {"success": ok})

    def config(self, body: dict) -> None:
        user = body.get("authenticatedUsername") or body.get("username")
        image = self.server.store.image(user) if isinstance(user, str) else None
        cfg: dict = {}
        if image:
            cfg = {"docker": {"execution": {"container": {"image": image}}}}
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
        self._lock = threading.Lock()
        self.db_path = db_path
        self.allow_passwords = allow_passwords
        self.metrics = WebhookMetrics()

    @property
    def store(self) -> Store:
        # one SQLite connection per handler thread: sqlite3 objects are not
        # for sharing, and opening one costs well under a millisecond
        st = getattr(self._local, "store", None)
        if st is None:
            st = self._local.store = Store(self.db_path, setup=False)
        return st

    def process_request(self, request, client_address):
        with self._lock:
            full = self._active >= MAX_CONNECTIONS
            if not full:
                self._active += 1
        if full:
            log.warning("over %d connections; closing one from %s", MAX_CONNECTIONS,
                        client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._active -= 1
            st = getattr(self._local, "store", None)
            if st is not None:
                st.close()

    def handle_error(self, request, client_address):
        err = sys.exc_info()[1]
        if isinstance(err, OSError):    # reset, gone, timed out: the client's business
            log.info("connection from %s ended: %s", client_address[0],
                     err.strerror or type(err).__name__)
        else:
            log.exception("connection from %s failed", client_address[0])


def parse_listen(listen: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[V6ADDR]:PORT` or `:PORT` (loopback)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected ADDR:PORT, got {listen!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


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
    log.info("hatchway webhook listening on %s (store %s, password logins %s)", listen, db_path,
             "on" if allow_passwords else "off")
    server.serve_forever()
