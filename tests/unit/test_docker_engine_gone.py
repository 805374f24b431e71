"""What a Docker session's process says when dockerd goes away under it, and
that it keeps trying to remove its container (real sockets for the wait,
a stand-in for the rest of the Engine API)."""

import socket
import threading

import pytest

from hatchway.backends.docker import process as docker_process
from hatchway.backends.docker.api import ENGINE_GONE, DockerError, WaitHandle
from hatchway.backends.docker.process import DockerProcess

HEAD = {"transfer-encoding": "chunked"}


def wait_over(send: bytes | None) -> tuple[WaitHandle, socket.socket]:
    """A registered wait whose dockerd end sends `send` then closes (None: stays silent)."""
    ours, theirs = socket.socketpair()
    if send is not None:
        theirs.sendall(send)
        theirs.close()
    return WaitHandle(ours, dict(HEAD), b""), theirs


def test_a_wait_dockerd_closes_without_an_answer_is_dropped():
    w, _ = wait_over(b"")
    with pytest.raises(DockerError) as e:
        w.result(5)
    assert e.value.dropped


def test_a_wait_that_times_out_is_not_dropped():
    w, theirs = wait_over(None)
    with pytest.raises(DockerError) as e:
        w.result(0.2)
    assert not e.value.dropped
    theirs.close()


def test_a_wait_answer_is_read():
    body = b'{"StatusCode": 3}'
    w, _ = wait_over(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert w.result(5) == {"StatusCode": 3}


class Engine:
    """The Engine API calls DockerProcess makes after the relay."""

    def __init__(self, inspect=None, removals_failing=0):
        self._inspect = inspect
        self.removals_failing = removals_failing
        self.removed = 0

    def inspect(self, cid):
        if isinstance(self._inspect, Exception):
            raise self._inspect
        return self._inspect

    def remove(self, cid):
        if self.removals_failing:
            self.removals_failing -= 1
            raise DockerError(0, "Docker Engine unreachable: connection refused")
        self.removed += 1


class Waiter:
    def __init__(self, answer):
        self.answer = answer

    def result(self, timeout=None):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def process(api, answer) -> DockerProcess:
    stream = type("S", (), {"close": lambda self: None})()
    return DockerProcess(api, "c" * 64, stream, Waiter(answer), tty=False)


def dropped() -> DockerError:
    e = DockerError(0, "lost the container's exit status: connection closed")
    e.dropped = True
    return e


UNREACHABLE = DockerError(0, "Docker Engine unreachable: cannot connect")
STOPPED = {"State": {"Running": False, "ExitCode": 143, "OOMKilled": False}}


@pytest.mark.parametrize("answer, inspect", [
    (dropped(), STOPPED),                       # dockerd closed the wait
    (DockerError(0, "timed out"), UNREACHABLE),  # no wait answer, nobody to ask
    ({"StatusCode": 143}, UNREACHABLE),         # stopped on dockerd's way down
    ({"StatusCode": 137}, UNREACHABLE),
])
def test_the_engine_going_away_ends_the_session_with_one_line(answer, inspect):
    status = process(Engine(inspect), answer).exit_status(1)
    assert (status.code, status.note) == (255, ENGINE_GONE)
    assert "\n" not in status.note


@pytest.mark.parametrize("answer, code", [({"StatusCode": 143}, 143), ({"StatusCode": 0}, 0),
                                          ({"StatusCode": 2}, 2)])
def test_a_command_killed_with_the_engine_up_keeps_its_status(answer, code):
    status = process(Engine(STOPPED), answer).exit_status(1)
    assert (status.code, status.note) == (code, None)


def test_removal_is_retried_until_the_engine_is_back(monkeypatch):
    slept = []
    monkeypatch.setattr(docker_process.time, "sleep", slept.append)
    api = Engine(removals_failing=5)
    process(api, {"StatusCode": 0}).destroy()
    assert api.removed == 1 and len(slept) == 5


def test_removal_gives_up_after_its_bound(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(docker_process.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(docker_process.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    api = Engine(removals_failing=10 ** 6)
    done = threading.Event()
    threading.Thread(target=lambda: (process(api, {}).destroy(), done.set()), daemon=True).start()
    assert done.wait(10)
    assert api.removed == 0 and docker_process.REMOVE_FOR <= clock[0] + 2.0


# -- an exec into a workspace (connection and persistent modes)

class ExecEngine:
    """exec_inspect and inspect, as dockerd answers them (or raises)."""

    def __init__(self, exec_error: DockerError, container):
        self.exec_error = exec_error
        self.container = container

    def exec_inspect(self, exec_id):
        raise self.exec_error

    def inspect(self, cid):
        if isinstance(self.container, Exception):
            raise self.container
        return self.container


def exec_status(exec_error, container):
    from types import SimpleNamespace
    from hatchway.backends.docker.workspace import DockerExecProcess
    proc = DockerExecProcess.__new__(DockerExecProcess)
    proc.api, proc.cid, proc.exec_id = ExecEngine(exec_error, container), "c" * 64, "e" * 64
    proc.rec = SimpleNamespace(name="hatchway-ws-alice-0123456789")
    return proc.exit_status(timeout=1)


@pytest.mark.parametrize("exec_error,container,note", [
    # dockerd down: nothing answers
    (DockerError(0, "connection refused"), DockerError(0, "connection refused"), ENGINE_GONE),
    # dockerd back: it forgot its execs, the workspace is still there
    (DockerError(404, "no such exec instance"), {"Id": "c" * 64}, ENGINE_GONE),
    # the workspace itself was removed under the session
    (DockerError(404, "no such exec instance"), None,
     "your workspace was removed; this session has ended"),
    (DockerError(500, "server error"), {"Id": "c" * 64}, "lost the exit status of the command"),
])
def test_what_a_workspace_session_says_when_its_exec_is_lost(exec_error, container, note):
    st = exec_status(exec_error, container)
    assert (st.code, st.note) == (255, note)
