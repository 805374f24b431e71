"""The bundled auth/config webhook (`hatchway webhook serve`).

It speaks ContainerSSH's protocol, so it is just the default: any
ContainerSSH-compatible server can take its place in `auth.webhook.url`.

  POST /pubkey    yes only for a key registered to that user; per-key source
                  addresses and expiry go out as the `hatchway` extension
  POST /password  always no (Hatchway logins are key-only)
  POST /config    per-user overrides in ContainerSSH's shape (e.g. the image)
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import sshkeys
from .store import Store

log = logging.getLogger("hatchway-webhook")

MAX_REQUEST = 64 * 1024


class Handler(BaseHTTPRequestHandler):
    server_version = "hatchway-webhook"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # route through logging, not stderr prints
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict | None:
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return None
        if n < 0 or n > MAX_REQUEST:
            return None
        try:
            data = json.loads(self.rfile.read(n) or b"null")
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def do_POST(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0].rstrip("/")
        body = self._body()
        if body is None:
            self._send(400, {"error": "expected a JSON object"})
            return
        route = {"/pubkey": self.pubkey, "/password": self.password,
                 "/config": self.config}.get(path)
        if route is None:
            self._send(404, {"error": "not found"})
            return
        try:
            route(body)
        except Exception as e:  # one bad request must not take the server down
            log.exception("error handling %s", path)
            self._send(500, {"error": f"internal error: {type(e).__name__}"})

    def pubkey(self, body: dict) -> None:
        user, key_line = body.get("username"), body.get("publicKey")
        answer = {"success": False}
        if isinstance(user, str) and isinstance(key_line, str):
            try:
                key = sshkeys.parse_line(key_line)
            except sshkeys.BadKey:
                key = None
            row = key and self.server.store.find_key(user, key.type, key.b64)
            if row:
                answer = {"success": True, "authenticatedUsername": user}
                ext = {}
                if row["source"]:
                    ext["from"] = row["source"].split(",")
                if row["expiry"]:
                    ext["expiry"] = row["expiry"]
                if ext:
                    answer["hatchway"] = ext
        log.info("pubkey user=%r connection=%r -> %s", user, body.get("connectionId"),
                 "yes" if answer["success"] else "no")
        self._send(200, answer)

    def password(self, body: dict) -> None:
        self._send(200, {"success": False})

    def config(self, body: dict) -> None:
        user = body.get("authenticatedUsername") or body.get("username")
        row = self.server.store.user(user) if isinstance(user, str) else None
        cfg: dict = {}
        if row and row.get("image"):
            cfg = {"docker": {"execution": {"container": {"image": row["image"]}}}}
        self._send(200, {"config": cfg})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], db_path: str):
        super().__init__(addr, Handler)
        self._local = threading.local()
        self.db_path = db_path

    @property
    def store(self) -> Store:
        # sqlite3 connections are cheap; one per handler thread avoids sharing one
        st = getattr(self._local, "store", None)
        if st is None:
            st = self._local.store = Store(self.db_path)
        return st


def serve(listen: str, db_path: str) -> None:
    host, _, port = listen.rpartition(":")
    server = Server((host.strip("[]") or "127.0.0.1", int(port)), db_path)
    Store(db_path)  # create the schema before the first request
    log.info("hatchway webhook listening on %s", listen)
    server.serve_forever()
