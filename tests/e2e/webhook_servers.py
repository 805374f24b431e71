"""Real HTTP webhook servers on loopback for the tests.

`ContainerSSHServer` behaves the way ContainerSSH's reference server does
(notes/containerssh.md §2.1, §7): it routes on the last path segment only
(`pubkey`, `password`, `config`), ignores the HTTP method, decodes leniently,
echoes the request's connection metadata in every reply, and answers an
undecodable body with HTTP 500 `{"error": "Internal Server Error"}`.  What it
answers is set per test; every request is recorded.  `behaviour` turns it into
a broken server: "slow" (never answers in time), "garbage", "http500".
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ECHOED = ("remoteAddress", "connectionId", "clientVersion", "username", "authenticatedUsername")


class ContainerSSHServer:
    def __init__(self):
        self.configs: dict[str, dict] = {}       # username -> ContainerSSH config object
        self.pubkey_users: set[str] = set()
        self.behaviour = "normal"
        self.requests: list[tuple[str, dict]] = []
        self.replies: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                route = self.path.rstrip("/").rsplit("/", 1)[-1]
                if server.behaviour == "slow":
                    time.sleep(60)
                if server.behaviour == "garbage":
                    return self._reply(200, b"\x00\xff<html>not json")
                if server.behaviour == "http500":
                    return self._reply(500, b'{"error":"Internal Server Error"}')
                try:
                    req = json.loads(raw)
                    if not isinstance(req, dict):
                        raise ValueError
                except ValueError:
                    return self._reply(500, b'{"error":"Internal Server Error"}')
                server.requests.append((route, req))
                echo = {k: req[k] for k in ECHOED if k in req}
                if route == "config":
                    answer = dict(echo, config=server.configs.get(req.get("username"), {}))
                elif route == "pubkey":
                    answer = dict(echo, success=req.get("username") in server.pubkey_users)
                elif route == "password":
                    answer = dict(echo, success=False)
                else:
                    return self._reply(404, b'{"error":"Not Found"}')
                server.replies.append((route, answer))
                self._reply(200, json.dumps(answer).encode())

            do_POST = do_GET = do_PUT = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
