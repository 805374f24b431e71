"""The metrics process: Prometheus text format over HTTP (`metrics.listen`,
loopback by default), fed by events (daemon/events.py).

Its own process, forked by the main process before anything else runs, and
restarted by it if it dies: every session is a process of its own, so none of
them could hold counters for the others, and the main process forks sessions,
which a process running an HTTP server thread must not do.  Counters start at
zero when it starts (Prometheus reads that as a reset); the number of live
sessions is read at every scrape from their records (daemon/live.py), so it
is right whatever restarted when.  Every metric is documented in hatchwayd(8).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct

from . import events, live

log = logging.getLogger("hatchwayd")

BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
MAX_EVENT = 4096


def parse_listen(listen: str) -> tuple[str, int]:
    """ADDR:PORT (checked by the config), [V6ADDR]:PORT or :PORT (loopback)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Metrics:
    def __init__(self, socket_path: str):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        self.socket_path = socket_path
        self.registry = r = CollectorRegistry()
        kind = ["backend", "mode", "command"]
        self.started = Counter("hatchway_sessions_started", "Sessions whose container or pod "
                               "started", kind, registry=r)
        self.ended = Counter("hatchway_sessions_ended", "Sessions that ended, by reason: "
                             "normal, signal, idle, max_duration, disconnect, killed, error",
                             kind + ["reason"], registry=r)
        self.refused = Counter("hatchway_sessions_refused", "Sessions refused before anything "
                               "ran, by reason: client, config, policy, limit, backend",
                               ["reason"], registry=r)
        self.latency = Histogram("hatchway_session_start_seconds", "From the client's hello to "
                                 "the command running", ["backend", "mode"], buckets=BUCKETS,
                                 registry=r)
        self.bytes = Counter("hatchway_session_bytes", "Bytes relayed, by direction (in: from "
                             "the client)", ["backend", "direction"], registry=r)
        self.create_failed = Counter("hatchway_container_create_failures", "Containers or pods "
                                     "that could not be created or started", ["backend"],
                                     registry=r)
        self.reaped = Counter("hatchway_reaper_removals", "Containers or pods the reaper removed",
                              ["backend"], registry=r)
        r.register(_Active(socket_path))

    def handle(self, ev: dict) -> None:
        """One event; anything malformed is dropped (the sender is our own user)."""
        kind = ev.get("e")
        lab = {k: str(ev.get(k, ""))[:40] for k in ("backend", "mode", "command")}
        if kind == "start":
            self.started.labels(**lab).inc()
            self.latency.labels(lab["backend"], lab["mode"]).observe(float(ev["latency"]))
        elif kind == "end":
            self.ended.labels(**lab, reason=str(ev.get("reason", "error"))[:20]).inc()
            self.bytes.labels(lab["backend"], "in").inc(max(0, int(ev.get("in", 0))))
            self.bytes.labels(lab["backend"], "out").inc(max(0, int(ev.get("out", 0))))
        elif kind == "refused":
            self.refused.labels(str(ev.get("reason", "client"))[:20]).inc()
        elif kind == "create_failed":
            self.create_failed.labels(lab["backend"]).inc()
        elif kind == "reaped":
            self.reaped.labels(lab["backend"]).inc(max(0, int(ev.get("n", 0))))


class _Active:
    """hatchway_sessions_active, counted at each scrape from the live records."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        g = GaugeMetricFamily("hatchway_sessions_active", "Sessions running now",
                              labels=["backend", "mode"])
        counts: dict = {}
        for rec in live.records(self.socket_path):
            if rec["live"]:
                key = (str(rec.get("backend", "")), str(rec.get("mode", "")))
                counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items()):
            g.add_metric(list(key), n)
        yield g


def bind_events(socket_path: str) -> socket.socket:
    path = events.path(socket_path)
    try:
        os.unlink(path)             # left by the previous metrics process
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old = os.umask(0o177)           # 0600: only our own user may send
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return s


def serve(socket_path: str, listen: str, parent: int) -> None:
    """The metrics process's whole life: it ends with the main process that
    started it, `parent` (however that one ends), so a new main process finds
    the port and the events socket free.  The parent's pid comes from before
    the fork: read here, after the imports, it was 1 when the main process
    had died in between, and the process then outlived it for good, holding
    the port (found as an orphan after a test killed a daemon at once)."""
    from prometheus_client import start_http_server
    m = Metrics(socket_path)
    host, port = parse_listen(listen)
    start_http_server(port, host, m.registry)       # first: a taken port takes nothing else
    sock = bind_events(socket_path)
    sock.settimeout(1.0)
    log.info("metrics on http://%s:%d/metrics", host, port)
    me = os.getuid()
    creds = struct.calcsize("3i")
    while os.getppid() == parent:
        try:
            data, anc, _, _ = sock.recvmsg(MAX_EVENT, socket.CMSG_SPACE(creds))
        except socket.timeout:
            continue
        sender = next((struct.unpack("3i", d[:creds]) for lvl, typ, d in anc
                       if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), None)
        if sender is None or sender[1] not in (me, 0):
            continue
        try:
            ev = json.loads(data)
            if isinstance(ev, dict):
                m.handle(ev)
        except (ValueError, TypeError, KeyError, RecursionError):
            continue
