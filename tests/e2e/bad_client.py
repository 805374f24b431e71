"""A deliberately broken hatchwayd client (a test fake for protocol corner
cases sshd and hatchway-shell never produce).  Prints the daemon's answer:
`error: <message>` or `closed`.  Usage: bad_client.py CASE"""

import base64
import json
import os
import socket
import struct
import sys

SOCK = "/run/hatchway/hatchwayd.sock"


def frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def hello(**over):
    h = {"type": "hello", "v": 1, "command_b64": base64.b64encode(b"true").decode(),
         "pty": False, "term": None, "size": None, "env": {}, "ssh_connection": None}
    h.update(over)
    return frame(h)


def pipes():
    r0, w0 = os.pipe()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    return [r0, w1, w2]


def main(case: str) -> None:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(SOCK)
    except OSError as e:
        print(f"connect: {e}")
        return
    if case == "garbage":
        socket.send_fds(s, [struct.pack(">I", 5) + b"\xff\x00{]x"], pipes())
    elif case == "oversized":
        s.sendall(struct.pack(">I", 50 << 20) + b"{")
    elif case == "no-fds":
        s.sendall(hello())
    elif case == "four-fds":
        socket.send_fds(s, [hello()], pipes() + [os.open("/dev/null", os.O_RDONLY)])
    elif case == "many-fds":
        socket.send_fds(s, [hello()], pipes() + pipes() + pipes() + pipes())
    elif case == "files-not-pipes":
        fds = [os.open("/dev/null", os.O_RDWR) for _ in range(3)]
        socket.send_fds(s, [hello()], fds)
    elif case == "fake-pty":
        socket.send_fds(s, [hello(pty=True)], pipes())
    elif case == "wrong-version":
        socket.send_fds(s, [hello(v=99)], pipes())
    elif case == "bad-command":
        socket.send_fds(s, [hello(command_b64="***")], pipes())
    elif case == "half-open":
        s.sendall(struct.pack(">I", 100) + b'{"type"')   # and then nothing
    elif case == "nested":
        # valid JSON under the frame limit, nested deeper than the parser's stack
        h = hello()[4:].rstrip(b"}") + b', "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
        socket.send_fds(s, [struct.pack(">I", len(h)) + h], pipes())
    elif case == "eof":
        s.shutdown(socket.SHUT_WR)
    s.settimeout(30)
    buf = b""
    try:
        while chunk := s.recv(65536):
            buf += chunk
    except OSError:
        pass
    if len(buf) >= 4:
        (n,) = struct.unpack(">I", buf[:4])
        reply = json.loads(buf[4:4 + n])
        print(f"error: {reply.get('message')}" if reply.get("type") == "error" else reply)
    else:
        print("closed")


if __name__ == "__main__":
    main(sys.argv[1])
