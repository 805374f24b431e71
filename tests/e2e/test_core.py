"""The core path: `ssh alice@host CMD` and `ssh alice@host` run in a fresh
container, through Debian's sshd, the shipped drop-in and the installed .deb."""

import http.server
import threading
import time

import pexpect
import pytest

from .stack import wait_for

PROMPT = r"[#$] "


def test_it_really_is_a_container(hw):
    # the marker file exists only in the image, never on the host
    host = hw.ssh("carol", "cat /etc/hatchway-demo")
    assert host.returncode != 0
    inside = hw.ssh("alice", "cat /proc/1/cmdline | tr '\\0' ' '; hostname")
    assert inside.returncode == 0
    # PID 1 is Docker's init, and the hostname is the container id
    assert inside.stdout.split(b"\n")[0].startswith(b"/sbin/docker-init")


def test_empty_command_is_not_a_shell(hw):
    # `ssh host ''` is a shell request by OpenSSH's client; an exec of "" is
    # something else, and what the server does with it is the shell's `-c ''`.
    p = hw.ssh("alice", "")
    assert p.returncode == 0


def test_ctrl_c_reaches_the_container_not_the_host(hw):
    c = hw.spawn("alice")
    c.expect(PROMPT)
    # the terminal echoes the typed line: only the command's output can say
    # "slept" whole
    c.sendline('sleep 30; echo sl""ept')
    time.sleep(0.5)
    c.send("\x03")
    c.expect(PROMPT, timeout=20)
    assert b"slept" not in c.before
    c.sendline("exit 0")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0


def test_unknown_key_is_refused(hw):
    stranger = hw.keygen("stranger")
    p = hw.ssh("alice", "true", key=stranger)
    assert p.returncode == 255
    assert b"Permission denied" in p.stderr


class _Answer(http.server.BaseHTTPRequestHandler):
    reply = b'{"success": false}'

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.reply)))
        self.end_headers()
        self.wfile.write(self.reply)

    def log_message(self, *a):
        pass


@pytest.fixture
def saying_no():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


def test_webhook_saying_no_refuses(hw, saying_no):
    hw.reconfigure({"auth": {"webhook": {"url": f"http://127.0.0.1:{saying_no}"},
                             "cache": {"ttl": "0s"}}})
    p = hw.ssh("bob", "true")
    assert p.returncode == 255
    assert b"Permission denied" in p.stderr
    wait_for(lambda: 'user=bob' in hw.auth_log() and 'reason="webhook said no"' in hw.auth_log(),
             5, what="the key helper's log line")


def test_webhook_down_refuses(hw):
    hw.reconfigure({"auth": {"webhook": {"url": "http://127.0.0.1:9", "timeout": "1s"},
                             "cache": {"ttl": "0s"}}})
    p = hw.ssh("bob", "true")
    assert p.returncode == 255
    assert b"Permission denied" in p.stderr


def test_outsider_is_untouched_by_the_drop_in(hw):
    # carol is not in hatchway-users: her own authorized_keys, a host shell
    p = hw.ssh("carol", "id -un; test -e /etc/hatchway-demo || echo host")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"carol\nhost\n"
    assert hw.containers(user="carol") == []


def test_session_container_is_labelled_and_removed(hw):
    c = hw.spawn("alice")
    c.expect(PROMPT)
    found = hw.containers(user="alice")
    assert len(found) == 1
    labels = dict(kv.split("=", 1) for kv in found[0]["Labels"].split(","))
    assert labels["io.hatchway.mode"] == "session"
    assert len(labels["io.hatchway.session"]) == 32
    assert len(labels["io.hatchway.connection"]) == 32
    c.sendline("exit")
    c.expect(pexpect.EOF)
    c.close()
    hw.wait_no_containers(timeout=10, user="alice")
