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
import time

from hatchway.backends import labels, registry
from hatchway.backends.base import BackendError, SessionSpec
from hatchway.core.errors import HatchwayError
from hatchway.shell import pack

from . import commands, events, live, peer, recording, resolve, sftp_fallback, terminal
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

    def end(self, reason: str) -> None:
        """End the session as a hangup would, from outside (`hatchway sessions
        kill` sends the session process SIGTERM).  Safe from a signal handler."""
        self.ending = reason
        if self.relay is not None:
            self.relay.end(reason)

    def reply(self, frame: dict) -> None:
        try:
            self.conn.sendall(pack(frame))
        except OSError:
            pass    # the client died; nothing to tell

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
        try:
            proc = registry.make(spec.config).start(spec)
        except BackendError as e:
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
        if self.ending:
            relay.end(self.ending)
        outcome = None
        try:
            outcome = relay.run()
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
            proc.destroy()
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
