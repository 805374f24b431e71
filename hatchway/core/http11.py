"""A deliberately small HTTP/1.1 client on plain sockets, bounded by a deadline.

Used for the webhooks and for the Docker Engine API.  The standard library's
http.client costs ~30 ms to import (it pulls in the email package), cannot put
one deadline over DNS + connect + TLS + a trickling body, and hides bytes that
arrive right behind a `101 Upgrade` head (docker-py#3332).  This module does
exactly what those callers need and nothing else: one request per connection,
Content-Length / chunked / read-to-close bodies, a cap on everything read.
"""

from __future__ import annotations

import socket
import time

# No urllib.parse, and threading only for DNS: hatchway-keys imports this on
# every cache miss, and those two (with ipaddress) cost it ~2.5 ms.

MAX_HEAD = 16 * 1024


class HTTPError(Exception):
    """Transport or protocol failure.  `retryable` is true when nothing reached the server."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class Response:
    # a plain class: `dataclasses` costs the key helper ~8 ms of start-up
    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers     # lower-case names; repeated headers joined with ", "
        self.body = body

    def __repr__(self):
        return f"Response({self.status}, {self.reason!r}, {len(self.body)} bytes)"


class Deadline:
    """An absolute point in time (monotonic) shared by every step of one operation."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float | None:
        if self.end is None:
            return cap
        left = self.end - time.monotonic()
        if left <= 0:
            raise HTTPError("deadline exceeded")
        return left if cap is None else min(left, cap)


class URL:
    """The parts of `scheme://[user@]host[:port][/path]` this client uses, as
    urllib.parse's urlsplit gives them (lower-case scheme and host name, IPv6
    brackets stripped, the port an int or None)."""
    __slots__ = ("scheme", "netloc", "hostname", "port", "path")

    def __init__(self, url: str):
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise HTTPError(f"malformed URL {url!r}")
        netloc, slash, path = rest.partition("/")
        host = netloc.rpartition("@")[2]
        port = ""
        if host.startswith("["):
            name, bracket, after = host[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                raise HTTPError(f"malformed URL {url!r}")
            port = after[1:]
        else:
            name, _, port = host.partition(":")
        if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
            raise HTTPError(f"bad port in URL {url!r}")
        self.scheme = scheme.lower()
        self.netloc = netloc
        self.hostname = name.lower()
        self.port = int(port) if port else None
        self.path = slash + path


def _literal(host: str, port: int) -> list | None:
    """getaddrinfo's answer for an IP address, without asking it."""
    for family, addr in ((socket.AF_INET, (host, port)), (socket.AF_INET6, (host, port, 0, 0))):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, socket.SOCK_STREAM, 0, "", addr)]
    return None


def resolve(host: str, port: int, timeout: float | None) -> list:
    """getaddrinfo with a timeout: the libc call itself cannot be interrupted, so it
    runs in a helper thread that is simply abandoned if it takes too long."""
    literal = _literal(host, port)
    if literal is not None:
        return literal
    import threading
    result: list = []
    error: list = []
    try:
        name: str | bytes = host.encode("ascii")   # spares the idna codec's import
    except UnicodeEncodeError:
        name = host

    def run():
        try:
            result.extend(socket.getaddrinfo(name, port, type=socket.SOCK_STREAM))
        except OSError as e:
            error.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise HTTPError(f"DNS lookup of {host} timed out", retryable=True)
    if error:
        raise HTTPError(f"cannot resolve {host}: {error[0]}", retryable=True)
    return result


def open_connection(url: str, deadline: Deadline, connect_timeout: float | None = None,
                    tls: dict | None = None) -> socket.socket:
    """Connect to http://, https://, unix:// or tcp:// (TLS if `tls` has files)."""
    parts = URL(url)
    scheme = parts.scheme
    if scheme == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(deadline.left(connect_timeout))
        try:
            s.connect(parts.path)
        except OSError as e:
            s.close()
            raise HTTPError(f"cannot connect to {parts.path}: {e.strerror or e}", retryable=True)
        return s
    host = parts.hostname or ""
    secure = scheme == "https" or (scheme == "tcp" and tls and tls.get("cert_file"))
    port = parts.port or (443 if secure else 80)
    last: Exception | None = None
    s = None
    for family, stype, proto, _, addr in resolve(host, port, deadline.left(connect_timeout)):
        s = socket.socket(family, stype, proto)
        s.settimeout(deadline.left(connect_timeout))
        try:
            s.connect(addr)
            break
        except OSError as e:
            last = e
            s.close()
            s = None
    if s is None:
        why = getattr(last, "strerror", None) or last or "no address"
        raise HTTPError(f"cannot connect to {host}:{port}: {why}", retryable=True)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if secure:
        s = _wrap_tls(s, host, tls or {}, deadline, connect_timeout)
    return s


def _wrap_tls(s: socket.socket, host: str, tls: dict, deadline: Deadline,
              connect_timeout: float | None) -> socket.socket:
    import ssl  # only https pays for it
    try:
        ctx = ssl.create_default_context(cafile=tls.get("ca_file"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.get("cert_file"):
            ctx.load_cert_chain(tls["cert_file"], tls.get("key_file"))
    except (OSError, ssl.SSLError) as e:
        s.close()
        raise HTTPError(f"TLS setup failed: {e}")
    try:
        s.settimeout(deadline.left(connect_timeout))
        return ctx.wrap_socket(s, server_hostname=host)
    except ssl.SSLError as e:
        s.close()
        raise HTTPError(f"TLS handshake with {host} failed: {e.reason or e}", retryable=False)
    except OSError as e:
        s.close()
        raise HTTPError(f"TLS handshake with {host} failed: {e}", retryable=True)


def send_request(s: socket.socket, method: str, host: str, path: str,
                 headers: dict[str, str] | None = None, body: bytes | None = None,
                 deadline: Deadline | None = None) -> None:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        if "\r" in v or "\n" in v or "\r" in k or "\n" in k:
            raise HTTPError(f"refusing header {k!r} with a line break")
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
    try:
        if deadline is not None:
            s.settimeout(deadline.left())
        s.sendall(data)
    except OSError as e:
        raise HTTPError(f"sending request failed: {e}", retryable=True)


def read_head(s: socket.socket, deadline: Deadline,
              read_timeout: float | None = None) -> tuple[int, str, dict[str, str], bytes]:
    """Read the status line and headers.  Returns them plus any bytes already
    received after the blank line (the start of the body or of a hijacked stream)."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > MAX_HEAD:
            raise HTTPError("response head too large")
        chunk = _recv(s, deadline, read_timeout)
        if not chunk:
            raise HTTPError("connection closed before a complete response head")
        buf += chunk
    head, rest = buf[:end], buf[end + 4:]
    try:
        text = head.decode("latin-1")
        status_line, *header_lines = text.split("\r\n")
        version, code, *reason = status_line.split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError
        status = int(code)
    except ValueError:
        raise HTTPError("malformed response status line") from None
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise HTTPError("malformed response header")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return status, (reason[0] if reason else ""), headers, rest


def read_body(s: socket.socket, headers: dict[str, str], rest: bytes, deadline: Deadline,
              max_body: int, read_timeout: float | None = None) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _read_chunked(s, rest, deadline, max_body, read_timeout)
    if "content-length" in headers:
        try:
            n = int(headers["content-length"])
            if n < 0:
                raise ValueError
        except ValueError:
            raise HTTPError("malformed Content-Length") from None
        if n > max_body:
            raise HTTPError(f"response body of {n} bytes exceeds the {max_body}-byte cap")
        body = rest
        while len(body) < n:
            chunk = _recv(s, deadline, read_timeout)
            if not chunk:
                raise HTTPError("connection closed in the middle of the body")
            body += chunk
        return body[:n]
    body = rest
    while True:
        if len(body) > max_body:
            raise HTTPError(f"response body exceeds the {max_body}-byte cap")
        chunk = _recv(s, deadline, read_timeout)
        if not chunk:
            return body
        body += chunk


def _read_chunked(s, buf: bytes, deadline: Deadline, max_body: int, read_timeout) -> bytes:
    body = b""
    while True:
        while b"\r\n" not in buf:
            if len(buf) > 1024:
                raise HTTPError("malformed chunk header")
            chunk = _recv(s, deadline, read_timeout)
            if not chunk:
                raise HTTPError("connection closed in a chunked body")
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise HTTPError("malformed chunk size") from None
        if size == 0:
            return body
        if len(body) + size > max_body:
            raise HTTPError(f"response body exceeds the {max_body}-byte cap")
        while len(buf) < size + 2:
            chunk = _recv(s, deadline, read_timeout)
            if not chunk:
                raise HTTPError("connection closed in a chunked body")
            buf += chunk
        body += buf[:size]
        buf = buf[size + 2:]


def next_chunk(s: socket.socket, buf: bytes, deadline: Deadline,
               read_timeout: float | None = None) -> tuple[bytes | None, bytes]:
    """Read one chunk of a chunked stream that stays open (Docker's wait).
    Returns (data or None at the end, the unconsumed rest)."""
    while b"\r\n" not in buf:
        chunk = _recv(s, deadline, read_timeout)
        if not chunk:
            raise HTTPError("connection closed in a chunked body")
        buf += chunk
    line, buf = buf.split(b"\r\n", 1)
    size = int(line.split(b";")[0].strip() or b"0", 16)
    if size == 0:
        return None, buf
    while len(buf) < size + 2:
        chunk = _recv(s, deadline, read_timeout)
        if not chunk:
            raise HTTPError("connection closed in a chunked body")
        buf += chunk
    return buf[:size], buf[size + 2:]


def _recv(s: socket.socket, deadline: Deadline, read_timeout: float | None) -> bytes:
    try:
        s.settimeout(deadline.left(read_timeout))
        return s.recv(65536)
    except socket.timeout:
        raise HTTPError("timed out waiting for the server") from None
    except OSError as e:
        raise HTTPError(f"reading the response failed: {e}") from None


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, deadline: Deadline | None = None,
            request_timeout: float | None = None, max_body: int = 1 << 20,
            tls: dict | None = None) -> Response:
    """One complete request on a fresh connection."""
    deadline = deadline or Deadline(None)
    s = open_connection(url, deadline, request_timeout, tls)
    try:
        host = URL(url).netloc if not url.startswith("unix:") else "docker"
        send_request(s, method, host, path, headers, body, deadline)
        status, reason, hdrs, rest = read_head(s, deadline, request_timeout)
        data = b"" if method == "HEAD" or status in (204, 304) else \
            read_body(s, hdrs, rest, deadline, max_body, request_timeout)
        return Response(status, reason, hdrs, data)
    finally:
        s.close()
