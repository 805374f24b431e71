"""Kubernetes' `channel.k8s.io` websocket protocol, driven frame by frame.

Exec/attach streams are websocket messages whose first byte names a channel:
0 stdin, 1 stdout, 2 stderr, 3 error/status (a JSON metav1.Status, v4+),
4 resize (JSON {"Width","Height"}), and in v5 255 = close a channel
([255, channel]).  Reference: apimachinery pkg/util/wsstream/doc.go,
client-go tools/remotecommand (errorDecoderV4), KEP-4006 for v5.

Why not the client library's WSClient: Debian's python3-kubernetes 22.6
decodes every frame as UTF-8 with errors="replace" (bytes >= 0x80 are
destroyed) and the newest client copies its buffers quadratically on bulk
output (kubernetes-client/python, its stream module ws_client).  So the
library does only the API calls;
these frames are read and written here, straight on websocket-client's socket.

Nothing here imports the Kubernetes client: it is cheap and unit-testable.
"""

from __future__ import annotations

import json

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
# Best first; the server picks.  v4 is what every supported server (>= 1.4)
# speaks; v5 (close frames) arrived with 1.29/1.30.
PROTOCOLS = (V5, V4)


def stdin_frame(data: bytes) -> bytes:
    return bytes((STDIN,)) + data


def resize_frame(rows: int, cols: int) -> bytes:
    return bytes((RESIZE,)) + json.dumps({"Width": int(cols), "Height": int(rows)}).encode()


def close_frame(channel: int = STDIN) -> bytes:
    """v5 only: half-close one channel (stdin EOF) and keep reading output."""
    return bytes((CLOSE, channel))


class Status:
    """How an exec ended, from its channel-3 metav1.Status."""

    def __init__(self, code: int, message: str | None = None):
        self.code = code
        self.message = message      # for the user when it is not a plain exit code

    def __repr__(self):
        return f"Status({self.code}, {self.message!r})"


def parse_status(payload: bytes) -> Status:
    """The exit status in a channel-3 payload.

    `{"status":"Success"}` -> 0.  A non-zero exit is `Failure` with reason
    `NonZeroExitCode` and a cause `{"reason":"ExitCode","message":"<n>"}`; a
    command killed by signal N shows as n = 128+N (the runtime reports it so),
    kept as is.  Any other Failure (the command cannot be started, the
    container is gone, ...) has no exit code: 126 for "cannot execute" and 127
    for "not found" as a shell would say, 255 otherwise, with the server's
    message for the user.  Never raises: a garbled status is 255."""
    try:
        st = json.loads(payload.decode("utf-8", "replace"))
    except ValueError:
        return Status(255, "unreadable exit status from Kubernetes")
    if not isinstance(st, dict):
        return Status(255, "unreadable exit status from Kubernetes")
    if st.get("status") == "Success":
        return Status(0)
    details = st.get("details") if isinstance(st.get("details"), dict) else {}
    causes = details.get("causes") if isinstance(details.get("causes"), list) else []
    for cause in causes:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return Status(int(str(cause.get("message", "")).strip()) & 0xFF)
            except ValueError:
                break
    message = str(st.get("message") or st.get("reason") or "the command failed")
    low = message.lower()
    if "not found" in low or "no such file" in low:
        return Status(127, message)
    if "permission denied" in low:
        return Status(126, message)
    return Status(255, message)


class Frames:
    """Reads one exec stream's output: `next()` gives (channel, bytes) for
    stdout/stderr, and ends (None) at the status frame or the socket's end.

    `ws` is a connected websocket-client WebSocket (only its recv_data_frame is
    used, from a single thread)."""

    def __init__(self, ws):
        self.ws = ws
        self.status: Status | None = None

    def next(self) -> tuple[int, bytes] | None:
        from websocket import ABNF, WebSocketException
        while True:
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except (WebSocketException, OSError, AttributeError, ValueError):
                return None         # connection gone (AttributeError: socket closed under us)
            if opcode == ABNF.OPCODE_CLOSE:
                return None
            if opcode not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT):
                continue            # ping/pong: websocket-client has answered a ping
            data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
            if not data:
                continue
            channel, body = data[0], data[1:]
            if channel in (STDOUT, STDERR):
                if body:            # the server opens with an empty frame per channel
                    return channel, body
            elif channel == ERROR:
                if body:
                    self.status = parse_status(body)
                    return None
            # anything else (resize echoes, v5 close of an output channel) is not output
