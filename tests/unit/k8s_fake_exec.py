"""FAKE (named as such): a spec-faithful `channel.k8s.io` exec endpoint, for
the protocol corners the 1.20 test cluster cannot produce (v5 close frames,
subprotocol negotiation).

Follows apimachinery wsstream and KEP-4006: the client offers subprotocols,
the server picks the first it supports in the client's order or refuses the
upgrade (403, what a 1.20 apiserver answers a v5-only client); every server
frame is binary with a one-byte channel; the server opens with an empty frame
on stdout; 0 stdin, 1 stdout, 2 stderr, 3 a metav1.Status at the end,
v5: [255, 0] closes stdin.  The command runs as a real subprocess; exit by
signal N is reported as 128+N, as container runtimes do.  Every blocking call
has a timeout, so a broken test fails instead of hanging.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import subprocess
import threading
from urllib.parse import parse_qs, urlparse

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


class FakeExecServer:
    def __init__(self, protocols=("v5.channel.k8s.io", "v4.channel.k8s.io")):
        self.protocols = protocols
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(TIMEOUT)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received_frames: list[bytes] = []
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
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
        target = lines[0].split()[1]
        headers = {k.strip().lower(): v.strip() for k, v in
                   (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        chosen = next((p for p in offered if p in self.protocols), None)
        if chosen is None:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1(
            (headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n"
                      f"Sec-WebSocket-Protocol: {chosen}\r\n\r\n").encode())
        q = parse_qs(urlparse(target).query)
        proc = subprocess.Popen(q["command"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        send_lock = threading.Lock()

        def send(data: bytes) -> None:
            with send_lock:
                conn.sendall(frame(data))

        send(b"\x01")      # the 1.20 kubelet opens with one empty stdout frame (transcript)

        def pump(src, ch):
            while chunk := src.read1(65536):
                send(bytes((ch,)) + chunk)

        outs = [threading.Thread(target=pump, args=(proc.stdout, 1), daemon=True),
                threading.Thread(target=pump, args=(proc.stderr, 2), daemon=True)]
        for t in outs:
            t.start()

        def stdin_reader():
            try:
                while True:
                    op, data = read_frame(conn)
                    if op == 8:
                        break
                    self.received_frames.append(data)
                    if data[:1] == b"\x00":
                        proc.stdin.write(data[1:])
                        proc.stdin.flush()
                    elif data == b"\xff\x00" and chosen.startswith("v5"):
                        proc.stdin.close()
            except (EOFError, OSError, ValueError):
                pass
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        threading.Thread(target=stdin_reader, daemon=True).start()
        code = proc.wait(TIMEOUT)
        for t in outs:
            t.join(TIMEOUT)
        if code < 0:
            code = 128 - code
        status = {"metadata": {}, "status": "Success"} if code == 0 else {
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        send(b"\x03" + json.dumps(status).encode())
        with send_lock:
            conn.sendall(frame(b"\x03\xe8", opcode=8))
