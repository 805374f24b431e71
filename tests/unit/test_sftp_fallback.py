"""An image without an sftp server: the fallback's line reaches the user inside
SFTP (sshd drops a subsystem's stderr).  Driven by OpenSSH's real sftp client
(`sftp -D` runs a local server command instead of ssh) against the planned
command line run locally behind sftp_fallback.Watch (tests/unit/sftp_harness.py)."""

import struct
import subprocess
import sys
from pathlib import Path

from hatchway.daemon import sftp_fallback
HARNESS = [sys.executable, str(Path(__file__).with_name("sftp_harness.py"))]
LINE = "hatchway: this environment has no sftp server (tried /nope/sftp, /nope/other)"


def sftp(tmp_path, servers, batch):
    (tmp_path / "batch").write_text(batch)
    server = " ".join(HARNESS + servers)
    return subprocess.run(["sftp", "-D", server, "-b", str(tmp_path / "batch")],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)


def test_sftp_prints_the_line_and_fails(tmp_path):
    p = sftp(tmp_path, ["/nope/sftp", "/nope/other"], "ls /\n")
    assert p.returncode != 0
    assert f"realpath .: {LINE}\n" in p.stderr, p.stderr


def test_a_real_server_passes_through_untouched(tmp_path):
    (tmp_path / "src").write_bytes(bytes(range(256)) * 4096)
    p = sftp(tmp_path, ["/nope/sftp", "/usr/lib/openssh/sftp-server"],
             f"put {tmp_path}/src {tmp_path}/copy\nget {tmp_path}/copy {tmp_path}/back\n")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "back").read_bytes() == (tmp_path / "src").read_bytes()


def packet(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_responder_answers_init_then_every_request_by_its_id():
    r = sftp_fallback.Responder(LINE.encode())
    init = packet(b"\x01" + struct.pack(">I", 3))
    opendir = packet(b"\x0b" + struct.pack(">I", 7) + struct.pack(">I", 1) + b"/")
    # split anywhere: answers only for whole packets
    out = r.feed(init + opendir[:6]) + r.feed(opendir[6:])
    version = packet(b"\x02" + struct.pack(">I", 3))
    assert out.startswith(version)
    status = out[len(version):]
    (n, kind, rid, code, mlen) = struct.unpack_from(">IBIII", status)
    assert (kind, rid, code) == (101, 7, 8)          # SSH_FX_OP_UNSUPPORTED
    assert status[17:17 + mlen].decode() == LINE
    assert len(status) == 4 + n


def test_responder_stops_at_what_is_not_sftp():
    r = sftp_fallback.Responder(b"x")
    assert r.feed(b"GET / HTTP/1.1\r\n") == b""
    assert r.broken
