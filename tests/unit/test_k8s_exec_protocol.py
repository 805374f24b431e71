"""The backend's own websocket handshake and frames (shim/backends/k8s_api.py,
k8s_channel.py) against a FAKE spec-faithful exec endpoint
(k8s_fake_exec.py): subprotocol negotiation and the v5 close frame, which the
1.20 test cluster cannot show.  The real cluster covers v4 end to end
(tests/e2e/test_kubernetes.py)."""

import pytest
from websocket import ABNF

from shim.backends import k8s_channel as ch
from shim.backends.k8s_api import Api, ApiError

from .k8s_fake_exec import FakeExecServer


@pytest.fixture
def server(request):
    s = FakeExecServer(*getattr(request, "param", ()))
    yield s
    s.close()
    assert s.errors == []


def exec_(server, argv, stdin=True):
    api = Api({"server": server.url})
    ws = api.exec_socket("ns", "pod", "c", argv, stdin=stdin, stdout=True, stderr=True,
                         tty=False, timeout=10)
    ws.settimeout(10)           # a broken exchange fails the test instead of hanging it
    return ws


def drain(ws):
    frames = ch.Frames(ws)
    out = {1: b"", 2: b""}
    while (item := frames.next()) is not None:
        out[item[0]] += item[1]
    ws.close()
    return out, frames.status


def test_v5_is_preferred_and_its_close_frame_ends_stdin(server):
    ws = exec_(server, ["sh", "-c", "cat; echo after-eof >&2"])
    assert ws.subprotocol == ch.V5
    data = bytes(range(256)) * 64
    ws.send(ch.stdin_frame(data), opcode=ABNF.OPCODE_BINARY)
    ws.send(ch.close_frame(), opcode=ABNF.OPCODE_BINARY)
    out, status = drain(ws)
    assert (out[1], out[2], status.code) == (data, b"after-eof\n", 0)
    assert b"\xff\x00" in server.received_frames


@pytest.mark.parametrize("server", [(("v4.channel.k8s.io",),)], indirect=True)
def test_a_v4_server_is_spoken_to_in_v4(server):
    ws = exec_(server, ["sh", "-c", "exit 3"], stdin=False)
    assert ws.subprotocol == ch.V4
    assert drain(ws)[1].code == 3


@pytest.mark.parametrize("server", [(("channel.k8s.io",),)], indirect=True)
def test_a_server_without_v4_or_v5_is_refused_with_its_status(server):
    with pytest.raises(ApiError) as e:
        exec_(server, ["true"])
    assert e.value.status == 403


def test_death_by_signal_arrives_as_128_plus_n(server):
    ws = exec_(server, ["sh", "-c", "kill -TERM $$"], stdin=False)
    assert drain(ws)[1].code == 143
