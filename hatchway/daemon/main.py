"""hatchwayd: the session daemon (runs as user `hatchway`, a member of `docker`).

The main process only accepts connections and forks: each client gets its own
process, in its own process session, which owns everything about that SSH
session.  So a crash in one session ends that session only, and stopping or
restarting the main process (systemd: KillMode=process) ends none of them.

The main process also starts the reaper: at start-up, every `reap_interval`,
and at once when a session process dies abnormally.  The reaper removes every
container whose owning session process no longer exists (see labels.py), and
looks after workspaces (backends/workspaces.py: what sessions killed with
-9 left in them, idle and expired workspaces, ended connections).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import stat
import struct
import sys
import time

from hatchway.backends import labels, registry
from hatchway.backends import workspaces as W
from hatchway.core import config as config_mod, fsutil

from . import agent, events, live, recording
from .admission import Children, refuse


log = logging.getLogger("hatchwayd")


def setup_logging(level: str) -> None:
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(message)s" if under_journal else \
        "%(asctime)s hatchwayd[%(process)d] %(levelname)s %(message)s"
    logging.basicConfig(stream=sys.stderr, format=fmt, level=level.upper())


def listen(path: str) -> socket.socket:
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode):
            os.unlink(path)      # left by a previous instance
        else:
            raise SystemExit(f"hatchwayd: {path} exists and is not a socket; refusing to touch it")
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o111)        # access is gated by the directory (hatchway-users, 0750)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(256)
    return s


def name_process(comm: str) -> None:
    """Name a forked child in `ps -o comm`, top and pgrep: every process here
    runs the same program with the same command line, and an admin (or a
    test) must tell the session processes from the daemon's own."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(comm)
    except OSError:
        pass        # a nicety: a process without its name still works


def run_reaper(cfg) -> int:
    """Fork a short-lived process that removes orphaned containers; its pid."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        name_process("hwd-reaper")
        backend = registry.make(cfg)
        removed = backend.reap(labels.owner_alive)
        for name in removed:
            log.info("reaper removed %s (its session process is gone)", name)
        if removed:
            events.emit(cfg.daemon.socket, {"e": "reaped", "backend": cfg.backend,
                                            "n": len(removed)})
        for line in backend.tend_workspaces():
            log.info("reaper: workspace %s", line)
        live.sweep(cfg.daemon.socket)
        for key in agent.sweep(os.path.dirname(cfg.daemon.socket),
                               lambda name: workspace_on_record(cfg, name)):
            log.info("reaper removed the agent directory of %s (its session or workspace "
                     "is gone)", key)
        recording.prune(cfg.recordings.dir, cfg.recordings.retention)
    except Exception as e:  # never let a reaper failure escape into a traceback loop
        log.error("reaper failed: %s", e)
    finally:
        os._exit(0)


def workspace_on_record(cfg, name: str) -> bool:
    try:
        return W.Record(name, W.root_for(cfg)).exists()
    except ValueError:
        return False        # not a workspace's name


class Companion:
    """A long-lived child of the main process: the metrics process
    (daemon/metrics.py) and the warm pool's keeper (Backend.keep_spares).
    Started with the daemon, again whenever it dies (backing off up to a
    minute while it keeps failing at once, e.g. on a port someone else
    holds), stopped with the daemon.  `body(parent)` is its whole life."""

    def __init__(self, comm: str, what: str, body):
        self.comm, self.what, self.body = comm, what, body
        self.pid: int | None = None
        self.started = self.next_start = 0.0
        self.delay = 1.0

    def ensure(self) -> None:
        if self.pid is not None or time.monotonic() < self.next_start:
            return
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.pid, self.started = pid, time.monotonic()
            return
        code = 1
        try:
            os.setsid()
            name_process(self.comm)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.body(parent)
        except Exception as e:
            log.error("%s failed: %s", self.what, e)
        finally:
            os._exit(code)

    def exited(self, pid: int) -> bool:
        if pid != self.pid:
            return False
        quick = time.monotonic() - self.started < 10
        self.delay = min(self.delay * 2, 60.0) if quick else 1.0
        self.next_start = time.monotonic() + self.delay
        self.pid = None
        return True

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass


def companions(cfg, backend) -> list[Companion]:
    out = []
    if cfg.metrics.listen:
        def serve_metrics(parent):
            from . import metrics
            metrics.serve(cfg.daemon.socket, cfg.metrics.listen, parent)
        out.append(Companion("hwd-metrics", "metrics process", serve_metrics))
    if backend.keeps_spares():
        out.append(Companion("hwd-pool", "warm pool keeper", backend.keep_spares))
    return out


def serve_session(conn: socket.socket, cfg) -> None:
    """Body of a forked session process."""
    os.setsid()
    name_process("hwd-session")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    from .session import Session
    session = Session(conn, cfg)
    # `hatchway sessions kill`: end it like a hangup, and tell the user
    signal.signal(signal.SIGTERM, lambda *_: session.end("killed"))
    try:
        session.run()
    except Exception:
        log.exception("session crashed")
    finally:
        logging.shutdown()
        os._exit(0)


def start_session(conn: socket.socket, server: socket.socket, cfg, children: Children) -> None:
    """Fork the session process for `conn`, unless its user (SO_PEERCRED) or
    the host is at the limit."""
    _, uid, _ = struct.unpack("3i", conn.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    why = children.refusal(uid)
    if why is not None:
        log.warning("refused uid=%d: %s (limits)", uid, why)
        refuse(conn, why)
        return
    try:
        pid = os.fork()
    except OSError as e:
        log.error("cannot fork a session process: %s", e)
        conn.close()
        return
    if pid == 0:
        server.close()
        serve_session(conn, cfg)
    children.add(pid, uid)
    conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hatchwayd", description="Hatchway session daemon")
    ap.add_argument("--config", default=config_mod.DEFAULT_PATH)
    args = ap.parse_args(argv)
    try:
        cfg = config_mod.typed(config_mod.load(args.config))
    except config_mod.ConfigError as e:
        print(f"hatchwayd: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log.level)

    # Imported now, before any fork, so every session process shares them and
    # a package upgrade that swaps .py files cannot bite a session mid-way.
    for module in ("hatchway.daemon.session", "hatchway.daemon.relay"):
        importlib.import_module(module)
    for name in registry.BACKENDS:
        registry.policy(name), registry.containerssh(name)
    from hatchway.backends.base import BackendError
    try:
        backend = registry.make(cfg)    # also loads the Kubernetes connection once, for every fork
    except BackendError as e:
        print(f"hatchwayd: {e}", file=sys.stderr)
        return 2

    sock_path = cfg.daemon.socket
    server = listen(sock_path)
    pid_path = os.path.join(os.path.dirname(sock_path), "hatchwayd.pid")
    _write_pid(pid_path)
    log.info("listening on %s (backend %s)", sock_path, cfg.backend)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    os.makedirs(live.directory(sock_path), mode=0o750, exist_ok=True)
    kids = companions(cfg, backend)
    for kid in kids:
        kid.ensure()
    interval = cfg.daemon.reap_interval
    reaper, wanted = run_reaper(cfg), False
    next_reap = time.monotonic() + interval
    children = Children(cfg.limits, sock_path)
    server.settimeout(1.0)
    while not stopping:
        abnormal, gone = False, set()
        try:
            conn, _ = server.accept()
        except socket.timeout:
            conn = None
        except InterruptedError:
            continue
        except OSError as e:
            log.error("accept failed: %s", e)
            time.sleep(0.1)
            conn = None
        if conn is not None:
            abnormal, gone = _collect_children(children, kids)   # count only the living
            start_session(conn, server, cfg, children)
        for kid in kids:
            kid.ensure()
        more_abnormal, more_gone = _collect_children(children, kids)
        if reaper in gone | more_gone:
            reaper = None
        wanted = wanted or abnormal or more_abnormal or time.monotonic() >= next_reap
        if wanted and reaper is None:       # one reaper at a time: a slow engine
            reaper, wanted = run_reaper(cfg), False     # must not pile them up
            next_reap = time.monotonic() + interval

    log.info("stopping; live sessions keep running")
    for kid in kids:
        kid.stop()
    server.close()
    for path in (sock_path, pid_path):
        try:
            os.unlink(path)
        except OSError:
            pass
    return 0


def _write_pid(path: str) -> None:
    """The main process's pid, for tools that must stop it and not the sessions
    (which run the same program)."""
    try:
        fsutil.atomic_write(path, f"{os.getpid()}\n".encode(), 0o644)
    except OSError as e:
        log.warning("cannot write %s: %s", path, e)


def _collect_children(children: Children, kids: list[Companion]) -> tuple[bool, set[int]]:
    """Reap exited children: whether a session process died abnormally, and
    the pids of all that ended."""
    abnormal, gone = False, set()
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return abnormal, gone
        if pid == 0:
            return abnormal, gone
        gone.add(pid)
        children.gone(pid)
        kid = next((k for k in kids if k.exited(pid)), None)
        if kid is not None:
            log.warning("%s %d ended (status %d); starting it again in %gs",
                        kid.what, pid, status, kid.delay)
        elif os.WIFSIGNALED(status) or (os.WIFEXITED(status) and os.WEXITSTATUS(status)):
            log.warning("session process %d died abnormally (status %d)", pid, status)
            abnormal = True


if __name__ == "__main__":
    sys.exit(main())
