"""One SSH session, from the client's hello to its exit status.

Runs in its own process (forked by the daemon for each connection), so a crash
here ends this session only, and a restart of the daemon's main process ends
none.  The steps read top to bottom in `Session.run`.
"""

from __future__ import annotations

import base64
import json
import fnmatch
import logging
import os
import socket
import threading
import time

from hatchway.backends import labels, registry
from hatchway.backends import workspaces as W
from hatchway.backends.base import BackendError, SessionSpec
from hatchway.core.errors import HatchwayError
from hatchway.shell import pack

from . import agent, commands, events, live, peer, recording, resolve, sftp_fallback, terminal
from .limits import Limits
from .relay import Relay

log = logging.getLogger("hatchwayd")


def filter_env(env: dict, allow: list[str]) -> dict[str, str]:
    """Only allowlisted names, only printable values that survive JSON to Docker."""
    out = {}
    if not isinstance(env, dict):
        return out
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            continue
        if not any(fnmatch.fnmatchcase(k, pat) for pat in allow):
            continue
        if not k.replace("_", "").isalnum() or len(v) > 4096:
            continue
        if k == "SSH_AUTH_SOCK":
            continue        # a host path; the session's own is set by daemon/agent.py
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:      # a non-UTF-8 value from the client
            continue
        if "\0" in v:
            continue
        out[k] = v
    return out


def remote_address(ssh_connection) -> str:
    if isinstance(ssh_connection, str):
        parts = ssh_connection.split()
        if len(parts) == 4 and parts[1].isdigit():
            ip = parts[0]
            return f"[{ip}]:{parts[1]}" if ":" in ip else f"{ip}:{parts[1]}"
    return "0.0.0.0:0"


def logfmt(**fields) -> str:
    """key=value pairs for log pipelines: a value with a space, a quote or
    nothing in it is double-quoted, JSON-style."""
    out = []
    for k, v in fields.items():
        v = str(v)
        if not v or any(c in v for c in ' "=\\') or not v.isprintable():
            v = json.dumps(v)
        out.append(f"{k}={v}")
    return " ".join(out)


def refusal(e: HatchwayError) -> str:
    """The reason label of a refused session (hatchway_sessions_refused)."""
    if isinstance(e, resolve.ConfigRefused):
        return "policy" if "policy refuses" in e.message else "config"
    if isinstance(e, BackendError):
        return "backend"
    return getattr(e, "reason", "client")


def end_reason(outcome) -> str:
    """Why a session ended, as hatchway_sessions_ended and the log say it."""
    if outcome is None:
        return "error"
    if outcome.hangup:
        return outcome.reason if outcome.reason in ("killed", "idle", "max_duration") \
            else "disconnect"
    code = outcome.status.code
    return "error" if code == 255 and outcome.status.note else \
        "signal" if code > 128 else "normal"


def agent_plan(policy: bool, backend_can: bool, backend: str,
               wanted: bool) -> tuple[bool, str | None]:
    """Whether this session gets the agent directory (and, if the client
    forwards, its socket), and the one line the user is told when they
    forwarded an agent that will not reach the container."""
    if not policy:
        return False, None
    if not backend_can:
        return False, (f"agent forwarding is not supported on the {backend} backend yet; "
                       "this session has no agent" if wanted else None)
    return True, None


class Session:
    def __init__(self, conn: socket.socket, cfg):
        """`cfg`: the daemon's typed Config (before this user's groups,
        templates and config webhook)."""
        self.conn = conn
        self.cfg = cfg
        self.fds: list[int] = []
        self.session_id = os.urandom(16).hex()
        self.relay: Relay | None = None
        self.ending: str | None = None
        self.agent_wanted = False       # the client forwards its agent (hello "agent")
        self.send_lock = threading.Lock()

    def end(self, reason: str) -> None:
        """End the session as a hangup would, from outside (`hatchway sessions
        kill` sends the session process SIGTERM).  Safe from a signal handler."""
        self.ending = reason
        if self.relay is not None:
            self.relay.end(reason)

    def reply(self, frame: dict) -> None:
        try:
            with self.send_lock:
                self.conn.sendall(pack(frame))
        except OSError:
            pass    # the client died; nothing to tell

    def _agent_request(self, rid: int) -> None:
        """Ask hatchway-shell for one connection to the client's agent (from
        an agent thread; raises OSError once the client is gone)."""
        with self.send_lock:
            self.conn.sendall(pack({"type": "agent", "id": rid}))

    def _agent_setup(self, spec, backend):
        """The per-container directory (mounted when the policy allows agent
        forwarding, whether or not this client forwards: a container may
        outlive this session) and this session's socket, if the client forwards
        its agent.  Returns (directory to remove when the session ends, or
        None; AgentServer or None).

        Session mode keys the directory by the session, whose container goes
        with it.  A connection or persistent workspace is made once, with its
        mounts, and outlives each session: its directory is keyed by the
        workspace, stays while the workspace does (agent.sweep), and each
        session's socket appears in it and goes with the session."""
        s = spec.config.session
        on, note = agent_plan(s.agent_forwarding, backend.agent_forwarding,
                              spec.config.backend, self.agent_wanted)
        if note:
            Relay._write_all(self.fds[2], f"hatchway: {note}\n".encode())
        if not on:
            return None, None
        run_dir = os.path.dirname(self.cfg.daemon.socket)
        if s.mode in W.SHARED:
            name = W.name_for(s.mode, spec.user, spec.connection_id)
            spec.agent_dir = agent.container_dir(run_dir, name, owner=agent.WORKSPACE)
            remove = None
        else:
            spec.agent_dir = remove = agent.container_dir(run_dir, spec.session_id)
        if not self.agent_wanted:
            return remove, None
        server = agent.AgentServer(spec.agent_dir, spec.session_id, self._agent_request,
                                   lambda pid, uid: False)      # until the container exists
        spec.env["SSH_AUTH_SOCK"] = server.container_path
        return remove, server

    def run(self) -> None:
        started = time.monotonic()
        socket_path = self.cfg.daemon.socket
        pid, uid, _ = peer.peercred(self.conn)
        try:
            spec, reader, pending = self._accept(pid, uid)
        except HatchwayError as r:          # who, what, or the configuration: refused
            log.warning("refused pid=%d uid=%d: %s", pid, uid, r.log_reason)
            events.emit(socket_path, {"e": "refused", "reason": refusal(r)})
            self.reply({"type": "error", "message": r.message, "code": r.code})
            return

        what = {"backend": spec.config.backend, "mode": spec.config.session.mode,
                "command": spec.command}
        log.info("session start %s", logfmt(
            user=spec.user, session=spec.session_id, connection=spec.connection_id,
            remote=spec.remote_address, kind=spec.kind, pty="yes" if spec.pty else "no",
            **what))
        agent_dir = agent_server = None
        try:
            backend = registry.make(spec.config)
            agent_dir, agent_server = self._agent_setup(spec, backend)
            proc = backend.start(spec)
        except (BackendError, OSError, ValueError) as e:
            if agent_server:
                agent_server.close()
            if agent_dir:
                agent.remove_dir(agent_dir)
            if not isinstance(e, BackendError):
                log.error("agent socket for session=%s: %s", spec.session_id, e)
                e = BackendError("cannot set up agent forwarding for this session")
            log.warning("session failed user=%s session=%s: %s", spec.user, spec.session_id,
                        e.log_reason)
            events.emit(socket_path, {"e": "create_failed", **what})
            events.emit(socket_path, {"e": "refused", "reason": "backend"})
            self.reply({"type": "error", "message": e.message, "code": e.code})
            return
        if spec.kind == "subsystem":
            proc = sftp_fallback.Watch(proc)    # an image without an sftp server
        try:
            recorder = self._recorder(spec)
        except OSError as e:
            # the policy asks for a recording: no recording, no session
            log.error("cannot record session=%s user=%s: %s", spec.session_id, spec.user, e)
            proc.destroy()
            if agent_server:
                agent_server.close()
            if agent_dir:
                agent.remove_dir(agent_dir)
            events.emit(socket_path, {"e": "refused", "reason": "recording"})
            self.reply({"type": "error", "code": 255,
                        "message": "this session must be recorded, and it cannot be now"})
            return
        record = live.Record(socket_path, {
            "session": spec.session_id, "user": spec.user, "uid": spec.uid,
            "remote": spec.remote_address, "connection": spec.connection_id,
            "container": proc.id, "pid": os.getpid(), "owner": spec.labels[labels.PROCESS],
            "pty": spec.pty, "recording": recorder.path if recorder else None, **what})
        events.emit(socket_path, {"e": "start", "latency": time.monotonic() - started, **what})

        s = spec.config.session
        relay = self.relay = Relay(proc, self.fds, spec.pty, self.conn, reader, pending,
                                   s.stop_grace, on_activity=record.touch, recorder=recorder,
                                   limits=Limits(s.idle_timeout, s.max_duration))
        if agent_server:
            agent_server.peer_ok = proc.agent_peer_ok
            relay.agent = agent_server
            agent_server.start()
            log.info("agent forwarding session=%s socket=%s", spec.session_id,
                     agent_server.path)
        if self.ending:
            relay.end(self.ending)
        outcome = None
        try:
            outcome = relay.run()
            if agent_server:
                # before the exit status: once the client has it, its agent
                # (sshd's socket) is gone anyway
                agent_server.close()
            note = outcome.status.note
            if outcome.reason == "killed":
                note = "this session was ended by an administrator"
            if note and (not outcome.hangup or outcome.reason == "killed"):
                # after the relay the terminal is cooked again, so \n is enough
                Relay._write_all(self.fds[2], f"hatchway: {note}\n".encode())
            # Close our copies first: sshd ends the channel only when every
            # holder of the stdout/stderr pipes has closed them.
            self._close_fds()
            self.reply({"type": "exit", "code": outcome.status.code})
        except Exception:
            log.exception("session crashed user=%s session=%s", spec.user, spec.session_id)
            self._close_fds()
            self.reply({"type": "error", "message": "internal error in the session daemon",
                        "code": 255})
        finally:
            # The client has its answer; removing the container is not its wait.
            if agent_server:
                agent_server.close()
            proc.destroy()
            if agent_dir:
                agent.remove_dir(agent_dir)     # session mode: the container is gone too
            relay.close()
            record.remove()
            if recorder:
                recorder.close()
            reason = end_reason(outcome)
            log.info("session end %s", logfmt(
                user=spec.user, session=spec.session_id, container=proc.id, **what,
                duration=f"{time.monotonic() - started:.3f}",
                exit=outcome.status.code if outcome else "none", reason=reason,
                bytes_in=relay.bytes_in, bytes_out=relay.bytes_out))
            events.emit(socket_path, {"e": "end", "reason": reason, "in": relay.bytes_in,
                                      "out": relay.bytes_out, **what})
            proc.release()      # a connection's workspace, once its last session is over

    def _recorder(self, spec):
        """The session's recorder, when the policy names its user (pty
        sessions only); the user is told once, before anything runs."""
        mode = spec.config.session.record
        if mode == "off" or not spec.pty:
            return None
        rec = spec.config.recordings
        rows, cols = spec.size or (24, 80)
        r = recording.start(rec.dir, spec.user, spec.session_id, rows, cols, spec.term,
                            f"{spec.user}: {spec.command} session {spec.session_id[:12]}",
                            rec.max_size, record_input=mode == "all")
        if rec.banner:
            Relay._write_all(self.fds[2], f"hatchway: {rec.banner}\r\n".encode())
        return r

    def _accept(self, pid: int, uid: int):
        """Identify, validate, and turn the hello into a SessionSpec."""
        pw = peer.account(uid)
        hello, self.fds, reader, pending = peer.receive_hello(
            self.conn, self.cfg.daemon.hello_timeout)
        self.conn.settimeout(None)
        pty = hello.get("pty") is True
        peer.check_fds(self.fds, uid, pty)
        self.agent_wanted = hello.get("agent") is True

        raw = hello.get("command_b64")
        if raw is not None and not isinstance(raw, str):
            raise peer.Refused("malformed command", "command_b64 not a string")
        try:
            command = None if raw is None else base64.b64decode(raw, validate=True)
        except ValueError:
            raise peer.Refused("malformed command", "command_b64 not base64") from None

        conn_id = peer.connection_id(pid)
        remote = remote_address(hello.get("ssh_connection"))
        cfg = resolve.effective_config(self.cfg, user=pw.pw_name, uid=uid,
                                       remote_address=remote, connection_id=conn_id)
        kind, argv = commands.plan(command, cfg.session)
        term = hello.get("term") if pty and isinstance(hello.get("term"), str) else None
        size = terminal.size(self.fds[0]) if pty else None
        spec = SessionSpec(
            user=pw.pw_name, uid=uid, session_id=self.session_id, connection_id=conn_id,
            kind=kind, argv=argv, pty=pty, term=term, size=size,
            command=commands.command_class(kind, command),
            env=filter_env(hello.get("env"), cfg.session.env_allow),
            remote_address=remote,
            config=cfg,
        )
        spec.labels = labels.for_session(spec.user, spec.session_id, conn_id,
                                         cfg.session.mode, os.getpid())
        monitor = peer.sshd_monitor(pid)
        if monitor is not None:
            try:
                spec.sshd = labels.process_token(monitor)
            except (OSError, ValueError, IndexError):
                pass
        return spec, reader, pending

    def _close_fds(self) -> None:
        for fd in self.fds[1:]:
            try:
                os.close(fd)
            except OSError:
                pass
