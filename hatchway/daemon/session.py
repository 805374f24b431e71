"""One SSH session, from the client's hello to its exit status.

Runs in its own process (forked by the daemon for each connection), so a crash
here ends this session only, and a restart of the daemon's main process ends
none.  The steps read top to bottom in `Session.run`.
"""

from __future__ import annotations

import base64
import fnmatch
import logging
import os
import socket
import time

from hatchway.backends import labels, registry
from hatchway.backends.base import BackendError, SessionSpec
from hatchway.core.errors import HatchwayError
from hatchway.shell import pack

from . import commands, peer, resolve, sftp_fallback, terminal
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


class Session:
    def __init__(self, conn: socket.socket, cfg):
        """`cfg`: the daemon's typed Config (before this user's groups,
        templates and config webhook)."""
        self.conn = conn
        self.cfg = cfg
        self.fds: list[int] = []
        self.session_id = os.urandom(16).hex()

    def reply(self, frame: dict) -> None:
        try:
            self.conn.sendall(pack(frame))
        except OSError:
            pass    # the client died; nothing to tell

    def run(self) -> None:
        started = time.monotonic()
        pid, uid, _ = peer.peercred(self.conn)
        try:
            spec, reader, pending = self._accept(pid, uid)
        except HatchwayError as r:          # who, what, or the configuration: refused
            log.warning("refused pid=%d uid=%d: %s", pid, uid, r.log_reason)
            self.reply({"type": "error", "message": r.message, "code": r.code})
            return

        log.info("session start user=%s session=%s connection=%s kind=%s pty=%s remote=%s",
                 spec.user, spec.session_id, spec.connection_id, spec.kind,
                 "yes" if spec.pty else "no", spec.remote_address)
        try:
            proc = registry.make(spec.config).start(spec)
        except BackendError as e:
            log.warning("session failed user=%s session=%s: %s", spec.user, spec.session_id,
                        e.log_reason)
            self.reply({"type": "error", "message": e.message, "code": e.code})
            return
        if spec.kind == "subsystem":
            proc = sftp_fallback.Watch(proc)    # an image without an sftp server

        relay = Relay(proc, self.fds, spec.pty, self.conn, reader, pending,
                      spec.config.session.stop_grace)
        outcome = None
        try:
            outcome = relay.run()
            if outcome.status.note and not outcome.hangup:
                # after the relay the terminal is cooked again, so \n is enough
                Relay._write_all(self.fds[2], f"hatchway: {outcome.status.note}\n".encode())
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
            log.info("session end user=%s session=%s container=%s mode=%s duration=%.1fs "
                     "exit=%s hangup=%s bytes_in=%d bytes_out=%d",
                     spec.user, spec.session_id, proc.id, spec.config.session.mode,
                     time.monotonic() - started,
                     outcome.status.code if outcome else "crash",
                     "yes" if outcome and outcome.hangup else "no",
                     relay.bytes_in, relay.bytes_out)

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
            env=filter_env(hello.get("env"), cfg.session.env_allow),
            remote_address=remote,
            config=cfg,
        )
        spec.labels = labels.for_session(spec.user, spec.session_id, conn_id,
                                         cfg.session.mode, os.getpid())
        return spec, reader, pending

    def _close_fds(self) -> None:
        for fd in self.fds[1:]:
            try:
                os.close(fd)
            except OSError:
                pass
