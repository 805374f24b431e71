"""FAKE (named as such): what the two protocol fakes of the kubelet's
websockets share (k8s_fake_exec.py, k8s_fake_portforward.py): frames, a
listening socket with a thread per connection, and the HTTP upgrade with
subprotocol negotiation (the server picks the first it supports in the
client's order, or refuses with 403).  Every blocking call has a timeout, so
a broken test fails instead of hanging.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = 10


def _recv_exact(conn, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def read_frame(conn) -> tuple[int, bytes]:
    b0, b1 = _recv_exact(conn, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", _recv_exact(conn, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", _recv_exact(conn, 8))[0]
    mask = _recv_exact(conn, 4) if b1 & 0x80 else b"\0\0\0\0"
    data = bytes(c ^ mask[i % 4] for i, c in enumerate(_recv_exact(conn, n)))
    return b0 & 0x0F, data


def frame(payload: bytes, opcode: int = 2) -> bytes:
    n = len(payload)
    head = bytes((0x80 | opcode,))
    if n < 126:
        head += bytes((n,))
    elif n < 1 << 16:
        head += bytes((126,)) + struct.pack(">H", n)
    else:
        head += bytes((127,)) + struct.pack(">Q", n)
    return head + payload


class FakeWebsocketEndpoint:
    """Accepts connections until close(); `_handle(conn)` is the endpoint's
    own part.  An exception other than a lost connection ends up in `errors`
    for the test to surface."""

    def __init__(self, protocols, accept_timeout: float | None = None):
        self.protocols = protocols
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(accept_timeout)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self._stop = False
        t = threading.Thread(target=self._serve, daemon=True)
        t.start()
        self.threads.append(t)

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)    # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        for t in self.threads:
            t.join(TIMEOUT)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._handle_safely, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _handle_safely(self, conn) -> None:
        conn.settimeout(TIMEOUT)
        try:
            self._handle(conn)
        except (EOFError, OSError):
            pass
        except BaseException as e:      # surfaced by the test
            self.errors.append(e)
        finally:
            conn.close()

    def _handle(self, conn) -> None:
        raise NotImplementedError

    @staticmethod
    def read_request(conn) -> tuple[str, dict[str, str]] | None:
        """The request target and headers (lower-case names); None if the
        client went away first."""
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return None
            head += chunk
        lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in
                   (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        return lines[0].split()[1], headers

    def upgrade(self, conn, headers: dict[str, str]) -> str | None:
        """Switch to the websocket with the subprotocol chosen; None (after a
        403) if the client offered none of ours."""
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        chosen = next((p for p in offered if p in self.protocols), None)
        if chosen is None:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return None
        accept = base64.b64encode(hashlib.sha1(
            (headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n"
                      f"Sec-WebSocket-Protocol: {chosen}\r\n\r\n").encode())
        return chosen
