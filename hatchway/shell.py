#!/usr/bin/python3 -IS
"""hatchway-shell: sshd's ForceCommand.  Runs as the SSH user, on the host.

It does as little as possible, because everything it does runs with the user's
own privileges next to sshd: connect to hatchwayd's socket, hand over this
session's stdin/stdout/stderr (SCM_RIGHTS) with one JSON hello saying what the
client asked for, then relay only what the kernel tells this process — window
size changes (SIGWINCH) and HUP/TERM/INT/QUIT — and exit with the status the
daemon reports.  Bytes never pass through here; the daemon reads and writes the
passed descriptors directly.

Deliberately one stdlib-only file started as `python3 -IS`: `-I` ignores the
user's environment (PYTHONPATH & co.) and drops the script's directory from
sys.path, so there is nothing to import from next to it.

Wire protocol (version 1), both directions: frames of a 4-byte big-endian
length followed by that many bytes of UTF-8 JSON, at most MAX_FRAME bytes.
hatchwayd imports the framing helpers from this file, so there is one copy.

Agent forwarding (`ssh -A`) is an addition to version 1 that both sides opt
into, so an older daemon or client simply goes without it:
  - the hello says `"agent": true` when sshd gave this process SSH_AUTH_SOCK;
  - only then may the daemon send `{"type": "agent", "id": N}`, once for each
    connection a process in the container opens to its agent socket;
  - this process answers each with `{"type": "agent", "id": N, "ok": true}`
    carrying one descriptor (SCM_RIGHTS): a fresh connection to
    $SSH_AUTH_SOCK, made here, as the user — or `"ok": false` and no descriptor.
The daemon never learns or opens the host path: a connect by hatchwayd to a
path the user names could reach another user's agent.
"""

import base64
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
import time

SOCKET = "/run/hatchway/hatchwayd.sock"
VERSION = 1
MAX_FRAME = 1 << 20          # a 64 KiB command plus a full environment fits easily
CONNECT_RETRY = 3.0          # seconds to ride over a daemon restart
FORWARDED = ("HUP", "TERM", "INT", "QUIT")
AGENT_CONNECT_TIMEOUT = 5.0  # sshd's agent socket answers at once, or not at all


def pack(obj):
    data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_FRAME:
        raise ValueError("frame too large")
    return struct.pack(">I", len(data)) + data


class FrameReader:
    """Incremental decoder: feed() bytes, get whole frames back (dicts)."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        frames = []
        while len(self.buf) >= 4:
            (n,) = struct.unpack(">I", self.buf[:4])
            if n > MAX_FRAME:
                raise ValueError("frame of %d bytes exceeds the limit" % n)
            if len(self.buf) < 4 + n:
                break
            raw, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
            try:
                obj = json.loads(raw.decode("utf-8"))
            except RecursionError:      # [[[[...: nesting deeper than the parser's stack
                raise ValueError("frame nested too deeply") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
                raise ValueError("frame is not an object with a type")
            frames.append(obj)
        return frames


def window_size(fd):
    try:
        rows, cols, xp, yp = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        return [rows, cols, xp, yp]
    except OSError:
        return None


def hello():
    """What the client asked for.  SSH_ORIGINAL_COMMAND unset means a shell;
    set-but-empty is a real (empty) exec request, so the two stay distinct."""
    cmd = os.environb.get(b"SSH_ORIGINAL_COMMAND")
    pty = os.isatty(0)
    env = dict(os.environ)
    env.pop("SSH_ORIGINAL_COMMAND", None)   # already sent, byte-exact, as command_b64
    env.pop("SSH_AUTH_SOCK", None)          # a host path: means nothing in the container
    return {
        "type": "hello",
        "v": VERSION,
        "command_b64": None if cmd is None else base64.b64encode(cmd).decode("ascii"),
        "pty": pty,
        "term": os.environ.get("TERM") if pty else None,
        "size": window_size(0) if pty else None,
        "env": env,
        "ssh_connection": os.environ.get("SSH_CONNECTION"),
        "agent": agent_socket() is not None,
    }


def agent_socket():
    """sshd's agent socket for this connection (ssh -A, when allowed), or None."""
    path = os.environ.get("SSH_AUTH_SOCK")
    return path if path and path.startswith("/") else None


def agent_reply(frame, path):
    """Answer one agent request: (the reply frame, a connected socket or None).
    The caller sends the socket's descriptor with the reply, then closes it."""
    rid = frame.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        return None, None                       # not a request we can answer
    if path is None:
        return {"type": "agent", "id": rid, "ok": False, "error": "no agent"}, None
    a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(AGENT_CONNECT_TIMEOUT)
    try:
        a.connect(path)
    except OSError as e:
        a.close()
        return {"type": "agent", "id": rid, "ok": False,
                "error": str(e.strerror or e)}, None
    # A timeout makes the descriptor non-blocking, and the daemon gets this
    # very open file description: hand it over blocking.
    a.settimeout(None)
    return {"type": "agent", "id": rid, "ok": True}, a


def fail(message, code=255):
    try:
        os.write(2, ("hatchway: %s\n" % message).encode("utf-8", "replace"))
    except OSError:
        pass
    return code


def connect(path):
    deadline = time.monotonic() + CONNECT_RETRY
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as e:
            s.close()
            if e.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN) \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def answer_agent(s, frame):
    reply, conn = agent_reply(frame, agent_socket())
    if reply is None:
        return
    try:
        if conn is not None:
            socket.send_fds(s, [pack(reply)], [conn.fileno()])
        else:
            s.sendall(pack(reply))
    except OSError:
        pass    # the daemon side is gone; its EOF is handled in the loop
    finally:
        if conn is not None:
            conn.close()
def refusal(s):
    """The exit status of an error frame already waiting on `s`, or None."""
    reader = FrameReader()
    try:
        s.settimeout(1.0)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return None
            for frame in reader.feed(chunk):
                if frame["type"] == "error":
                    return fail(str(frame.get("message", "session refused")))
    except (OSError, ValueError):
        return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[1] if len(argv) == 2 and argv[0] == "--socket" else SOCKET

    # Signals only wake the loop below; what to do with them is decided there.
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for name in FORWARDED + ("WINCH",):
        signal.signal(getattr(signal, "SIG" + name), lambda *_: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    try:
        s = connect(path)
    except OSError as e:
        return fail("cannot reach the session daemon at %s: %s" % (path, e.strerror or e))
    try:
        socket.send_fds(s, [pack(hello())], [0, 1, 2])
    except (OSError, ValueError) as e:
        # A daemon at its session limit answers at once and hangs up, maybe
        # before the hello went out: its one line is still there to read.
        return refusal(s) or fail("cannot hand the session to the daemon: %s" % e)

    reader = FrameReader()
    names = {getattr(signal, "SIG" + n): n for n in FORWARDED}
    while True:
        try:
            ready, _, _ = select.select([s, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                signums = os.read(wake_r, 256)
            except BlockingIOError:
                signums = b""
            for signum in signums:
                try:
                    if signum == signal.SIGWINCH:
                        s.sendall(pack({"type": "resize", "size": window_size(0)}))
                    elif signum in names:
                        s.sendall(pack({"type": "signal", "signal": names[signum]}))
                except OSError:
                    pass  # the daemon side is gone; its EOF is handled below
        if s in ready:
            try:
                data = s.recv(65536)
            except OSError as e:
                return fail("lost the session daemon: %s" % (e.strerror or e))
            if not data:
                return fail("the session ended without an exit status")
            try:
                frames = reader.feed(data)
            except ValueError as e:
                return fail("garbled reply from the session daemon: %s" % e)
            for frame in frames:
                if frame["type"] == "agent":
                    answer_agent(s, frame)
                    continue
                if frame["type"] == "exit":
                    code = frame.get("code")
                    return code & 0xFF if isinstance(code, int) else 255
                if frame["type"] == "error":
                    code = frame.get("code")
                    return fail(str(frame.get("message", "session refused")),
                                code if isinstance(code, int) and 0 < code < 256 else 255)


if __name__ == "__main__":
    sys.exit(main())
