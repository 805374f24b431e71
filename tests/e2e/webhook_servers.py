"""Real HTTP webhook servers on loopback for the tests (unit and end-to-end).

`ContainerSSHServer` behaves the way ContainerSSH's reference server does
(ContainerSSH `internal/auth/handler_impl.go`,
`http/handler_impl.go`, `metadata/connection.go`):
  - it routes on the last path segment only (`pubkey`, `password`, `authz`,
    `config`); anything else is a bare 404 with an empty body;
  - it ignores the HTTP method;
  - it decodes leniently (unknown request keys are fine), but a body that is
    not JSON, or a `remoteAddress` Go's `RemoteAddress.UnmarshalText` rejects
    (no `:port`, a port that is not 0..65535), is HTTP 500
    `{"error":"Internal Server Error"}`;
  - every reply echoes the request's connection metadata (`remoteAddress`
    re-marshalled as Go does, `connectionId`, `clientVersion` — always present,
    Go does not omit it —, `username`), with `authenticatedUsername` = username
    on a successful `/pubkey`, like the shipped test server;
  - replies carry `Content-Type: text/plain; charset=utf-8`: the Go handler sets
    its Content-Type after WriteHeader, which has no effect, so net/http sniffs.
Which users `/pubkey` accepts is set per test (`pubkey_users`; the shipped
`containerssh-testauthconfigserver` accepts `foo` and `busybox` with any key:
`ContainerSSHServer.reference()`).  Hatchway's own reply extensions for a user
go in `extensions` (ContainerSSH servers never send them).  Every request is
recorded with its headers.  `behaviour` turns it into a broken server: "slow"
(never answers in time), "garbage", "http500".

`RawServer` is a fake, not a ContainerSSH server: it reads one request and then
lets the test write whatever bytes it likes, when it likes (protocol corners a
real server does not produce: trickled, endless or oversized bodies, broken
framing, invalid UTF-8).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ECHOED = ("remoteAddress", "connectionId", "clientVersion", "username", "authenticatedUsername")
INTERNAL_ERROR = b'{"error":"Internal Server Error"}'


class BadRequest(Exception):
    pass


def go_remote_address(value) -> str:
    """What ContainerSSH's RemoteAddress.UnmarshalText then MarshalText make of
    `value`; raises BadRequest where Go's decoder fails."""
    if not isinstance(value, str):
        raise BadRequest("remoteAddress is not a string")
    parts = value.split(":")
    if len(parts) < 2:
        raise BadRequest(f"invalid IP:port combination: {value}")
    try:
        port = int(parts[-1])
    except ValueError:
        raise BadRequest("invalid port number") from None
    if not 0 <= port <= 65535:
        raise BadRequest("invalid port number")
    host = ":".join(parts[:-1])
    if host.startswith("["):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        shown = "<nil>"                    # net.ParseIP failed: a nil IP
    else:
        shown = str(ip)
        if ip.version == 6:
            shown = f"[{shown}]"
    return f"{shown}:{port}"


class ContainerSSHServer:
    def __init__(self, pubkey_users=(), tls_context=None):
        self.configs: dict[str, dict] = {}       # username -> ContainerSSH config object
        self.pubkey_users: set[str] = set(pubkey_users)
        self.extensions: dict[str, dict] = {}    # username -> Hatchway's `hatchway` reply object
        self.behaviour = "normal"
        # users whose /pubkey requests are held, unanswered, until the client
        # gives up; (user, request arrival, client gone) in `held`, monotonic
        self.hang: set[str] = set()
        self.held: list[tuple[str, float, float]] = []
        self.requests: list[tuple[str, dict]] = []
        self.headers: list[dict[str, str]] = []
        self.replies: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                route = self.path.split("?", 1)[0].split("/")[-1]
                if server.behaviour == "slow":
                    time.sleep(60)
                if server.behaviour == "garbage":
                    return self._reply(200, b"\x00\xff<html>not json")
                if server.behaviour == "http500":
                    return self._reply(500, INTERNAL_ERROR)
                if route not in ("config", "pubkey", "password", "authz"):
                    return self._reply(404, b"")
                try:
                    req = json.loads(raw)
                    if not isinstance(req, dict):
                        raise BadRequest("not an object")
                    remote = go_remote_address(req.get("remoteAddress", ""))
                except (ValueError, BadRequest):
                    return self._reply(500, INTERNAL_ERROR)
                server.requests.append((route, req))
                echo = {k: req[k] for k in ECHOED if k in req}
                echo.update(remoteAddress=remote, clientVersion=req.get("clientVersion", ""),
                            connectionId=req.get("connectionId", ""),
                            username=req.get("username", ""))
                user = req.get("username")
                if route == "pubkey" and user in server.hang:
                    return self._hold(user)
                if route == "config":
                    answer = dict(echo, config=server.configs.get(user, {}))
                elif route == "pubkey":
                    ok = user in server.pubkey_users
                    answer = dict(echo, success=ok)
                    if ok:
                        answer["authenticatedUsername"] = user
                        if user in server.extensions:
                            answer["hatchway"] = server.extensions[user]
                else:
                    answer = dict(echo, success=False)
                server.replies.append((route, answer))
                self._reply(200, json.dumps(answer).encode())

            def _hold(self, user: str):
                arrived = time.monotonic()
                self.connection.settimeout(120)
                try:
                    while self.connection.recv(4096):
                        pass
                except OSError:
                    pass
                server.held.append((user, arrived, time.monotonic()))
                self.close_connection = True

            do_POST = do_GET = do_PUT = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls_context is not None:
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        scheme = "https" if tls_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @classmethod
    def reference(cls, **kw) -> "ContainerSSHServer":
        """As `containerssh-testauthconfigserver` ships: foo and busybox, any key."""
        return cls(pubkey_users=("foo", "busybox"), **kw)

    def calls(self, route: str = "pubkey") -> int:
        return sum(1 for r, _ in self.requests if r == route)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class RawServer:
    """A fake HTTP server: reads one request (head and Content-Length body),
    then calls `respond(sock)` which writes whatever it wants."""

    def __init__(self, respond):
        self.respond = respond
        self.count = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer.count += 1
                s = self.request
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, body = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(body) < length:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                try:
                    outer.respond(s)
                except OSError:
                    pass        # the client gave up, as it should

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def http_response(status: int, body: bytes, extra: str = "") -> bytes:
    reason = {200: "OK", 301: "Moved Permanently", 404: "Not Found",
              500: "Internal Server Error"}.get(status, "X")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n{extra}"
            f"Connection: close\r\n\r\n").encode() + body


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
