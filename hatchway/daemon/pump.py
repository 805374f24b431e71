"""One direction of a socket-to-socket copy, for the agent and port
forwarding relays: bytes until the source's EOF, then a half-close of the
destination, so the other side sees the end of this direction while the other
direction keeps flowing (a request-reply protocol needs exactly that)."""

from __future__ import annotations

import socket


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
