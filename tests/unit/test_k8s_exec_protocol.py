"""The backend's own websocket handshake and frames (hatchway/backends/kubernetes/api.py,
k8s_channel.py) against a FAKE spec-faithful exec endpoint
(k8s_fake_exec.py): subprotocol negotiation and the v5 close frame, which the
1.20 test cluster cannot show.  The real cluster covers v4 end to end
(tests/e2e/test_kubernetes.py)."""

import json
from pathlib import Path

import pytest
from websocket import ABNF

from hatchway.backends.kubernetes import channel as ch
from hatchway.backends.kubernetes.api import Api, KubernetesError

from .k8s_fake_exec import FakeExecServer
from .typed import section


@pytest.fixture
def server(request):
    s = FakeExecServer(*getattr(request, "param", ()))
    yield s
    s.close()
    assert s.errors == []


def exec_(server, argv, stdin=True):
    api = Api(section("kubernetes", server=server.url))
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
    with pytest.raises(KubernetesError) as e:
        exec_(server, ["true"])
    assert e.value.status == 403


def test_death_by_signal_arrives_as_128_plus_n(server):
    ws = exec_(server, ["sh", "-c", "kill -TERM $$"], stdin=False)
    assert drain(ws)[1].code == 143


TRANSCRIPT = json.loads((Path(__file__).parents[1] / "data/k8s-exec-v1.20.json").read_text())


@pytest.mark.parametrize("case, code", [("exit3", 3), ("success", 0), ("signal", 137),
                                        ("notfound", 127)])
def test_the_real_clusters_status_frames_parse(case, code):
    status = [f for f in TRANSCRIPT["exec"][case]["frames"] if f.get("channel") == 3]
    assert ch.parse_status(status[0]["payload"].encode()).code == code


@pytest.mark.parametrize("server", [(("v4.channel.k8s.io",),)], indirect=True)
@pytest.mark.parametrize("case", ["exit3", "success", "signal"])
def test_the_fake_sends_what_the_real_cluster_sends(server, case):
    """Same subprotocol, same channel sequence, same status, same close."""
    real = TRANSCRIPT["exec"][case]
    ws = exec_(server, real["argv"], stdin=False)
    got = []
    while True:
        op, f = ws.recv_data_frame(True)
        if op == ABNF.OPCODE_CLOSE:
            got.append({"close": True})
            break
        got.append({"channel": f.data[0], "payload": f.data[1:].decode()})
    ws.close()
    assert ws.subprotocol == real["subprotocol"]

    def shape(frames):
        items = [("close",) if f.get("close") else
                 (f["channel"], ch.parse_status(f["payload"].encode()).code if f["channel"] == 3
                  else f["payload"]) for f in frames]
        # stdout and stderr are separate pipes: their relative order is not defined
        return items[0], sorted(items[1:-2]), items[-2:]
    assert shape(got) == shape(real["frames"])
