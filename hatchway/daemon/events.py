"""What happened, told to the metrics process: one JSON datagram per event on
a unix socket next to the daemon's (events.sock, mode 0600: only the daemon's
own user may tell it anything).

Fire and forget: a session never waits for, or fails because of, metrics.
"""

from __future__ import annotations

import json
import os
import socket

NAME = "events.sock"


def path(socket_path: str) -> str:
    return os.path.join(os.path.dirname(socket_path), NAME)


def emit(socket_path: str, event: dict) -> None:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    except OSError:
        return
    try:
        s.sendto(json.dumps(event, separators=(",", ":")).encode(), path(socket_path))
    except OSError:
        pass            # no metrics process (off, restarting) or its queue is full
    finally:
        s.close()
