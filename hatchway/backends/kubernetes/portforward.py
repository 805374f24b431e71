"""A pod's `portforward` subresource over a websocket, for one port, read
and written frame by frame (the port relay, daemon/portfwd_k8s.py, uses it).

The wire protocol (kubelet pkg/kubelet/cri/streaming/portforward/websocket.go,
subprotocol `v4.channel.k8s.io`, or "" which the kubelet also takes as
binary): `GET /api/v1/namespaces/NS/pods/POD/portforward?ports=PORT` with a
websocket upgrade; every message starts with one channel byte.  For the i-th
port listed, channel 2i carries data both ways and channel 2i+1 errors
(server to client only).  The first message the server sends on *each* of
the two channels is just the port, a little-endian uint16; then the
connection in the pod's network namespace is made (the runtime dials
localhost:PORT there).  If that fails, or the copy ends with an error, the
error channel gets a text ("error forwarding port 8080 to pod ..., uid ...:
failed to connect to localhost:8080 ...") and the websocket closes.

One websocket is one TCP connection in the pod: there is no multiplexing and
no half-close in v4 (closing the websocket ends both directions; the
runtime, when one direction ends, gives the other at most about a second).
`v2.portforward.k8s.io` (servers >= 1.30/1.31) would carry half-close, but
it is SPDY framing tunnelled in the websocket, and the test cluster (1.20)
cannot speak it.

Nothing here imports the Kubernetes client: cheap, unit-testable.
"""

from __future__ import annotations

import struct

DATA, ERROR = 0, 1          # channels of the first (only) port we ask for
PROTOCOLS = ("v4.channel.k8s.io",)


class ProtocolError(Exception):
    """The server said something the protocol does not allow."""


def data_frame(data: bytes) -> bytes:
    """Client -> pod bytes, on the data channel of port index 0."""
    return bytes((DATA,)) + data


class PortReader:
    """The server's messages for one forwarded port: `feed(message)` returns
    the bytes for the client (b"" for the port prefixes and error text,
    which collects in `.error`)."""

    def __init__(self, port: int):
        self.port = port
        self.prefixed = {DATA: False, ERROR: False}
        self.error = b""

    def feed(self, message: bytes) -> bytes:
        if not message:
            return b""          # an empty message carries nothing (not even a channel)
        channel, body = message[0], message[1:]
        if channel not in (DATA, ERROR):
            raise ProtocolError(f"message on channel {channel}; asked for one port only")
        if not self.prefixed[channel]:
            # the port prefix comes alone, first, on each channel
            if len(body) != 2:
                raise ProtocolError(f"first message on channel {channel} is {len(body)} bytes, "
                                    "not the 2-byte port")
            got = struct.unpack("<H", body)[0]
            if got != self.port:
                raise ProtocolError(f"channel {channel} is for port {got}, asked for {self.port}")
            self.prefixed[channel] = True
            return b""
        if channel == ERROR:
            self.error += body
            return b""
        return body

    @property
    def ready(self) -> bool:
        """Both prefixes seen: the server has set up the forward."""
        return all(self.prefixed.values())

    def error_text(self) -> str:
        return self.error.decode("utf-8", "replace").strip()[:300]
