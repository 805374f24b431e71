"""How the port relay (portfwd.py) reaches 127.0.0.1:PORT in a user's pod on
the Kubernetes backend: the pod's `portforward` subresource, one websocket
per forwarded connection (backends/kubernetes/portforward.py has the wire
protocol), opened with the daemon's own connection settings (the relay runs
as `hatchway`, as hatchwayd does; nothing of it reaches the user).

Which pod: the user's running pods on this host (the label selector the
backend lists sessions with, checked again on what comes back), the
workspace first, else the newest (core/portfwd.pick_rank, as for containers).

Half-close: `v4.channel.k8s.io` has none.  Closing the websocket is the only
way to tell the pod "no more input", and it ends both directions (the
runtime gives the reply at most about a second, and not reliably).  So the
client's EOF is *held*: the pod's server does not see it, the forward keeps
carrying the pod's bytes to the client until the pod's side ends (the server
closes: the websocket closes, the client gets EOF), or until the client's
connection is closed entirely (sshd closes the socket when the SSH channel
closes; checked once a second with sock_diag, since a shut-down write side
and a close look the same from this end).  A protocol that waits for the
client's EOF before it answers therefore waits (Docker's forwards pass it);
HTTP, SOCKS and editors' servers do not.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from hatchway.backends import labels as L
from hatchway.backends.base import BackendError
from hatchway.backends.kubernetes import portforward as PF
from hatchway.core import portfwd as P

log = logging.getLogger("hatchway-portrelay")

CONNECT_TIMEOUT = 10.0      # the websocket handshake (API server, then kubelet)
LIST_TIMEOUT = 10.0
HELD_CHECK = 1.0            # after the client's EOF: is the client still there?


def mine(found, user: str, host: str) -> bool:
    """A listed pod really is this user's, on this host, and can be reached
    (the selector is the API server's; its answer is checked here)."""
    labels = found.labels or {}
    return (labels.get(L.MANAGED) == "true" and labels.get(L.USER) == user
            and labels.get(L.HOST) == host and found.running)


class KubernetesWay:
    """Forwards into pods.  `backend`: a KubernetesBackend (its API client
    and namespace); `fresh`, when set, makes a new one for each forward (a
    `token_file` is read again each time: service-account tokens rotate)."""

    def __init__(self, backend, fresh=None):
        self.backend = backend
        self.fresh = fresh

    @staticmethod
    def client_held(conn: socket.socket) -> bool:
        """Is the client's socket (sshd's) still open, only its write side
        shut down?  The kernel knows (sock_diag; when it cannot answer, yes:
        keep the forward).  No, once even the relay's own end is unusable."""
        try:
            return P.peer_held(conn.family, conn.getpeername()[:2], P.original_dst(conn))
        except OSError:
            return False

    def pick(self, user: str, backend=None):
        found = [f for f in (backend or self.backend).list(user) if mine(f, user, L.host_id())]
        if not found:
            return None
        return min(found, key=lambda f: P.pick_rank(f.labels.get(L.MODE, ""), f.created))

    def forward(self, conn: socket.socket, user: str, port: int) -> None:
        from hatchway.backends.kubernetes.api import KubernetesError
        started = time.monotonic()
        try:
            backend = self.fresh() if self.fresh else self.backend
            pod = self.pick(user, backend)
        except BackendError as e:
            log.warning("refused user=%s port=%d: %s", user, port, e)
            return
        if pod is None:
            log.warning("refused user=%s port=%d: no running pod", user, port)
            return
        try:
            ws = backend.api.portforward_socket(backend.ns, pod.name, port,
                                                timeout=CONNECT_TIMEOUT)
        except KubernetesError as e:
            log.warning("refused user=%s port=%d pod=%s: portforward: %s", user, port,
                        pod.name, e)
            return
        # the setup cost: listing the pods, then the websocket's handshake
        log.info("forward user=%s port=%d pod=%s (up in %d ms)", user, port,
                 pod.name, (time.monotonic() - started) * 1000)
        reader = PF.PortReader(port)
        out = threading.Thread(target=from_pod, args=(ws, reader, conn, user, pod.name),
                               daemon=True, name="fwd-k8s-out")
        out.start()
        try:
            to_pod(conn, ws)
            # the client's EOF is held (module docstring): wait for the pod's
            # side to end, or for the client to close for good
            while out.is_alive():
                out.join(HELD_CHECK)
                if out.is_alive() and not self.client_held(conn):
                    break
        finally:
            _drop(ws)
            out.join(5)


def to_pod(conn: socket.socket, ws) -> None:
    """Client -> pod, until the client's EOF (or the websocket fails)."""
    from websocket import ABNF, WebSocketException
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            ws.send(PF.data_frame(data), opcode=ABNF.OPCODE_BINARY)
    except (OSError, WebSocketException):
        return


def from_pod(ws, reader: PF.PortReader, conn: socket.socket, user: str, pod: str) -> None:
    """Pod -> client, until the websocket ends; then the client's EOF.  The
    kubelet's error text (nothing listens on the port, ...) is one log line."""
    from websocket import ABNF, WebSocketException
    try:
        while True:
            try:
                opcode, frame = ws.recv_data_frame(True)
            except (WebSocketException, OSError, AttributeError, ValueError):
                break           # AttributeError: the socket was closed under us
            if opcode == ABNF.OPCODE_CLOSE:
                break
            if opcode not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT):
                continue        # ping/pong: websocket-client has answered a ping
            data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
            body = reader.feed(data)
            if body:
                conn.sendall(body)
    except PF.ProtocolError as e:
        log.warning("forward user=%s port=%d pod=%s: %s", user, reader.port, pod, e)
    except OSError:
        pass                    # the client went away
    if reader.error:
        log.warning("forward user=%s port=%d pod=%s ended: %s", user, reader.port, pod,
                    reader.error_text())
    # the client's EOF; and its reading side too: with the websocket gone
    # nothing it still sends can go anywhere (this wakes to_pod's recv)
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _drop(ws) -> None:
    """End the websocket now, waking a reader blocked on it (a close() alone
    would not, and websocket-client's close handshake would race that reader)."""
    try:
        ws.sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass
    try:
        ws.shutdown()
    except Exception:       # websocket-client: already gone
        pass
