"""FAKE (named as such): a protocol fake of a pod's `portforward` websocket
endpoint, as the kubelet serves it (pkg/kubelet/cri/streaming/portforward/
websocket.go, v4.channel.k8s.io): the subprotocol must be offered (else 403);
the first message on each of channel 0 (data) and 1 (error) is the port as a
little-endian uint16, each in its own message; then data flows on channel 0
to and from a real TCP connection to 127.0.0.1:PORT of this host (standing in
for the pod's loopback), and a failed connect is an error text on channel 1
followed by the websocket's close.  As containerd does, when the service
closes, the websocket closes.

Options let a test break the protocol (a wrong port prefix) or see what the
client sent (`received`: every client message, channel byte included).
"""

from __future__ import annotations

import socket
import struct
import threading
from urllib.parse import parse_qs, urlparse

from .k8s_fake_ws import TIMEOUT, FakeWebsocketEndpoint, frame, read_frame


class FakePortForwardServer(FakeWebsocketEndpoint):
    def __init__(self, protocols=("v4.channel.k8s.io",), wrong_port: bool = False,
                 status: int | None = None):
        self.wrong_port = wrong_port
        self.status = status                # answer this HTTP status instead of upgrading
        self.paths: list[str] = []
        self.received: list[bytes] = []
        self.client_closed = threading.Event()
        super().__init__(protocols)

    def _handle(self, conn) -> None:
        request = self.read_request(conn)
        if request is None:
            return
        target, headers = request
        self.paths.append(urlparse(target).path)
        if self.status:
            body = b'{"kind":"Status","message":"pods \\"x\\" not found"}'
            conn.sendall(f"HTTP/1.1 {self.status} Nope\r\nContent-Length: {len(body)}\r\n\r\n"
                         .encode() + body)
            return
        if self.upgrade(conn, headers) is None:
            return
        port = int(parse_qs(urlparse(target).query)["ports"][0])
        lock = threading.Lock()

        def send(data: bytes) -> None:
            with lock:
                conn.sendall(frame(data))
        prefix = struct.pack("<H", port + 1 if self.wrong_port else port)
        send(b"\x00" + prefix)
        send(b"\x01" + prefix)
        try:
            svc = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        except OSError as e:
            send(b"\x01" + f"error forwarding port {port} to pod fake, uid 0: failed to "
                 f"connect to localhost:{port} inside namespace fake: {e}".encode())
            conn.sendall(frame(b"", opcode=8))
            return
        svc.settimeout(None)

        def service_to_client():
            try:
                while True:
                    data = svc.recv(65536)
                    if not data:
                        break
                    send(b"\x00" + data)
            except OSError:
                pass
            # the kubelet closes the websocket once the forward ends
            try:
                send_close()
            except OSError:
                pass

        def send_close():
            with lock:
                conn.sendall(frame(b"", opcode=8))
        t = threading.Thread(target=service_to_client, daemon=True)
        t.start()
        conn.settimeout(None)
        try:
            while True:
                opcode, data = read_frame(conn)
                if opcode == 8:
                    break
                self.received.append(data)
                if data[:1] == b"\x00" and data[1:]:
                    svc.sendall(data[1:])
        except (EOFError, OSError):
            pass
        # v4: the client's websocket close is the only end it can say
        self.client_closed.set()
        try:
            svc.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        t.join(TIMEOUT)
        svc.close()
