"""Hostile or broken clients on hatchwayd's socket: the connection is refused
with a logged reason and the daemon keeps serving everyone else.

The clients are real processes running as a real member of hatchway-users
(the only users the socket's directory admits); tests/e2e/bad_client.py speaks
the broken protocol."""

import subprocess
import sys
from pathlib import Path

import pytest

from .stack import wait_for

CLIENT = Path(__file__).with_name("bad_client.py")


def _as_alice(case: str, timeout=60) -> str:
    p = subprocess.run(["setpriv", "--reuid=alice", "--regid=alice", "--init-groups",
                        sys.executable, "-I", str(CLIENT), case],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.mark.config({"daemon": {"hello_timeout": "2s"}})
@pytest.mark.parametrize("case,answer,logged", [
    ("garbage", "error: malformed hello", "garbage on the socket"),
    ("oversized", "error: malformed hello", "exceeds the limit"),
    ("nested", "error: malformed hello", "nested too deeply"),
    ("no-fds", "error: expected exactly three descriptors", "got 0 fds"),
    ("four-fds", "error: expected exactly three descriptors", "got 4 fds"),
    ("many-fds", "error: too many descriptors", "too many fds"),
    ("files-not-pipes", "error: a non-terminal session must pass pipes", "fd is not a pipe"),
    ("fake-pty", "error: a terminal session must pass its pty", "not a pty slave"),
    ("wrong-version", "error: unsupported protocol", "bad hello type/version"),
    ("bad-command", "error: malformed command", "command_b64 not base64"),
    ("half-open", "error: timed out waiting for the session hello", "hello timeout"),
    ("eof", "error: connection closed before the hello", "EOF before hello"),
])
def test_bad_clients_are_refused_and_the_daemon_keeps_serving(hw, case, answer, logged):
    before = hw.daemon_log().count("refused")
    assert _as_alice(case).startswith(answer)
    wait_for(lambda: hw.daemon_log().count("refused") > before, 10, what="the refusal log line")
    last = [ln for ln in hw.daemon_log().splitlines() if "refused" in ln][-1]
    assert logged in last and "uid=" in last, last
    assert hw.ssh("alice", "echo fine").stdout == b"fine\n"


def test_outsiders_cannot_even_reach_the_socket(hw):
    p = subprocess.run(["setpriv", "--reuid=carol", "--regid=carol", "--init-groups",
                        sys.executable, "-I", str(CLIENT), "eof"],
                       capture_output=True, text=True, timeout=60)
    assert "Permission denied" in p.stdout + p.stderr
