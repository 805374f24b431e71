"""The few Docker Engine API calls Hatchway needs, over keyhelper.http11.

Why not docker-py: its attach socket hides bytes that arrive right behind the
`101` head (docker-py#3332), it cannot register `wait` before `start` and read
the answer later, and on bookworm it costs ~350 ms and ~45 MiB to import.  The
Engine API itself is small; API version 1.41 is Debian 12's dockerd.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import quote, urlencode

from hatchway.core import http11

from ..base import EngineError

API = "/v1.41"
# What a user reads when dockerd is down at login, and when it stops or
# restarts under a live session (dockerd stops every container as it goes).
ENGINE_DOWN = "the container engine is not available; try again later"
ENGINE_GONE = "the container engine stopped or restarted; this session has ended"


class DockerError(EngineError):
    """Docker Engine API's answer was an error."""


class Stream:
    """A hijacked connection: `buffered` holds bytes that came with the head."""

    def __init__(self, sock: socket.socket, buffered: bytes):
        self.sock = sock
        self.buffered = buffered

    def recv(self, n: int = 1 << 18) -> bytes:
        if self.buffered:
            data, self.buffered = self.buffered, b""
            return data
        return self.sock.recv(n)

    def recv_into(self, view: memoryview) -> int:
        if self.buffered:
            n = min(len(view), len(self.buffered))
            view[:n] = self.buffered[:n]
            self.buffered = self.buffered[n:]
            return n
        return self.sock.recv_into(view)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Docker:
    def __init__(self, host: str, tls: dict | None = None, timeout: float = 30.0):
        self.host = host
        self.tls = tls or {}
        self.timeout = timeout

    # -- plain request/response

    def call(self, method: str, path: str, body: object = None, query: dict | None = None,
             ok: tuple = (200, 201, 204), timeout: float | None = None,
             max_body: int = 16 << 20) -> object:
        url_path = API + path + ("?" + urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            r = http11.request(self.host, method, url_path, data, headers,
                               http11.Deadline(timeout or self.timeout), None, max_body, self.tls)
        except http11.HTTPError as e:
            raise DockerError(0, f"Docker Engine unreachable: {e}") from None
        payload = None
        if r.body:
            try:
                payload = json.loads(r.body)
            except ValueError:
                payload = r.body.decode("utf-8", "replace")
        if r.status not in ok:
            msg = payload.get("message") if isinstance(payload, dict) else payload
            raise DockerError(r.status, str(msg or f"HTTP {r.status}").strip())
        return payload

    # -- streams

    def _open(self, method: str, path: str, query: dict | None, body: object,
              upgrade: bool) -> tuple[socket.socket, int, dict, bytes]:
        deadline = http11.Deadline(self.timeout)
        s = http11.open_connection(self.host, deadline, None, self.tls)
        url_path = API + path + ("?" + urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json"}
        if upgrade:
            headers.update({"Connection": "Upgrade", "Upgrade": "tcp"})
        try:
            http11.send_request(s, method, "docker", url_path, headers, data, deadline)
            status, _, hdrs, rest = http11.read_head(s, deadline)
        except http11.HTTPError:
            s.close()
            raise
        s.settimeout(None)
        return s, status, hdrs, rest

    def hijack(self, method: str, path: str, query: dict | None = None,
               body: object = None) -> Stream:
        """attach / exec start: returns the raw duplex stream, nothing lost."""
        try:
            s, status, hdrs, rest = self._open(method, path, query, body, upgrade=True)
        except http11.HTTPError as e:
            raise DockerError(0, f"Docker Engine unreachable: {e}") from None
        if status not in (101, 200):
            try:
                body_bytes = http11.read_body(s, hdrs, rest, http11.Deadline(5), 65536)
                msg = json.loads(body_bytes).get("message", "")
            except (http11.HTTPError, ValueError, AttributeError):
                msg = ""
            s.close()
            raise DockerError(status, msg or f"HTTP {status}")
        return Stream(s, rest)

    def wait_handle(self, cid: str, condition: str) -> "WaitHandle":
        """Register a wait now (before start); read the status later."""
        try:
            s, status, hdrs, rest = self._open("POST", f"/containers/{quote(cid)}/wait",
                                               {"condition": condition}, None, upgrade=False)
        except http11.HTTPError as e:
            raise DockerError(0, f"Docker Engine unreachable: {e}") from None
        if status != 200:
            try:
                msg = json.loads(http11.read_body(s, hdrs, rest, http11.Deadline(5), 65536))
                msg = msg.get("message", "")
            except (http11.HTTPError, ValueError, AttributeError):
                msg = ""
            s.close()
            raise DockerError(status, msg or f"HTTP {status}")
        return WaitHandle(s, hdrs, rest)

    # -- conveniences

    def create(self, spec: dict, name: str | None = None) -> str:
        q = {"name": name} if name else None
        return self.call("POST", "/containers/create", spec, q)["Id"]

    def start(self, cid: str) -> None:
        self.call("POST", f"/containers/{quote(cid)}/start", ok=(204, 304))

    def resize(self, cid: str, rows: int, cols: int, exec_id: str | None = None) -> None:
        path = f"/exec/{quote(exec_id)}/resize" if exec_id else f"/containers/{quote(cid)}/resize"
        self.call("POST", path, query={"h": rows, "w": cols}, ok=(200, 201))

    def stop(self, cid: str, timeout: int = 5) -> None:
        """SIGTERM to the container's init, SIGKILL after `timeout` seconds."""
        self.call("POST", f"/containers/{quote(cid)}/stop", query={"t": timeout},
                  ok=(204, 304, 404), timeout=timeout + 30)

    def exec_create(self, cid: str, body: dict) -> str:
        return self.call("POST", f"/containers/{quote(cid)}/exec", body, ok=(201,))["Id"]

    def exec_inspect(self, exec_id: str) -> dict:
        return self.call("GET", f"/exec/{quote(exec_id)}/json")

    def kill(self, cid: str, signal: str) -> None:
        self.call("POST", f"/containers/{quote(cid)}/kill", query={"signal": signal},
                  ok=(204, 409, 404))

    def remove(self, cid: str) -> None:
        self.call("DELETE", f"/containers/{quote(cid)}", query={"force": 1, "v": 1},
                  ok=(204, 404, 409))

    def rename(self, cid: str, name: str) -> None:
        self.call("POST", f"/containers/{quote(cid)}/rename", query={"name": name}, ok=(204,))

    def inspect(self, cid: str) -> dict | None:
        try:
            return self.call("GET", f"/containers/{quote(cid)}/json")
        except DockerError as e:
            if e.status == 404:
                return None
            raise

    def list(self, labels: list[str], all_: bool = True) -> list[dict]:
        filters = json.dumps({"label": labels})
        return self.call("GET", "/containers/json", query={"all": int(all_), "filters": filters})

    def image_exists(self, image: str) -> bool:
        return self.image_id(image) is not None

    def image_id(self, image: str) -> str | None:
        """The image's id (sha256:...), None if the engine does not have it."""
        try:
            return self.call("GET", f"/images/{quote(image, safe='/:@')}/json").get("Id") or ""
        except DockerError as e:
            if e.status == 404:
                return None
            raise


class WaitHandle:
    def __init__(self, sock: socket.socket, headers: dict, rest: bytes):
        self.sock = sock
        self.headers = headers
        self.rest = rest

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def result(self, timeout: float | None = None) -> dict:
        """Block for the wait answer: {"StatusCode": n, "Error": ...}.
        A DockerError's `dropped` is true when dockerd closed the wait before
        its answer and before `timeout`: it answers a wait whenever the
        container exits, so it stopped or restarted."""
        deadline = http11.Deadline(timeout)
        try:
            body = http11.read_body(self.sock, self.headers, self.rest, deadline, 65536)
            return json.loads(body)
        except (http11.HTTPError, ValueError) as e:
            err = DockerError(0, f"lost the container's exit status: {e}")
            err.dropped = isinstance(e, http11.HTTPError) and \
                (deadline.end is None or time.monotonic() < deadline.end)
            raise err from None
        finally:
            self.sock.close()
