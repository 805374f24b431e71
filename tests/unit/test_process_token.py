"""The owner token on every container: whether the session process that wrote
it still lives, judged the same way inside a sandboxed unit and outside it
(no boot id: see core/connection.py)."""

import os
import subprocess

from hatchway.backends import labels
from hatchway.core import connection


def test_a_live_process_is_alive_and_a_reaped_one_is_not():
    p = subprocess.Popen(["sleep", "30"])
    token = labels.process_token(p.pid)
    assert labels.process_alive(token)
    p.kill()
    p.wait()
    assert not labels.process_alive(token)


def test_a_reused_pid_with_another_start_time_is_not_the_owner():
    pid, start = labels.process_token(os.getpid()).split(":")
    assert not labels.process_alive(f"{pid}:{int(start) + 1}")


def test_tokens_of_earlier_daemons_still_name_their_process():
    # boot:pid:start, as containers labelled before an upgrade carry them
    assert labels.process_alive("0b1c2d3e-boot:" + labels.process_token(os.getpid()))


def test_garbage_is_not_alive():
    for token in ("", "x", "1:x", "-1:-1", "::", "a:b:c:d:e"):
        assert not labels.process_alive(token), token


def test_the_connection_id_is_the_same_from_any_process():
    cid = connection.connection_id_for(os.getppid())
    out = subprocess.run(["/usr/bin/python3", "-c",
                          "import os, sys; sys.path.insert(0, os.getcwd());"
                          "from hatchway.core import connection;"
                          f"print(connection.connection_id_for({os.getppid()}))"],
                         capture_output=True, text=True, check=True, cwd=os.getcwd()).stdout.strip()
    assert out == cid and len(cid) == 32
