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

import json
import subprocess
import threading
from urllib.parse import parse_qs, urlparse

from .k8s_fake_ws import TIMEOUT, FakeWebsocketEndpoint, frame, read_frame

class FakeExecServer(FakeWebsocketEndpoint):
    def __init__(self, protocols=("v5.channel.k8s.io", "v4.channel.k8s.io")):
        self.received_frames: list[bytes] = []
        super().__init__(protocols, accept_timeout=TIMEOUT)

    def _handle(self, conn) -> None:
        request = self.read_request(conn)
        if request is None:
            return
        target, headers = request
        chosen = self.upgrade(conn, headers)
        if chosen is None:
            return
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
