import struct

import pytest

from hatchway.shell import MAX_FRAME, FrameReader, pack


def test_frames_roundtrip_split_anywhere():
    data = pack({"type": "hello", "v": 1}) + pack({"type": "resize"})
    for cut in range(len(data) + 1):
        r = FrameReader()
        frames = r.feed(data[:cut]) + r.feed(data[cut:])
        assert [f["type"] for f in frames] == ["hello", "resize"]


def test_oversized_frame_is_refused_before_reading_it():
    with pytest.raises(ValueError, match="exceeds"):
        FrameReader().feed(struct.pack(">I", MAX_FRAME + 1))


@pytest.mark.parametrize("payload", [b"[1,2]", b"\xff\xfe", b"{}", b'{"type": 3}', b"nope"])
def test_garbage_is_an_error(payload):
    with pytest.raises(ValueError):
        FrameReader().feed(struct.pack(">I", len(payload)) + payload)


def test_a_nesting_bomb_is_an_error_not_a_crash():
    # under MAX_FRAME, but deeper than the JSON parser's stack
    payload = b'{"type": "hello", "env": ' + b"[" * 200000 + b"]" * 200000 + b"}"
    with pytest.raises(ValueError, match="nested too deeply"):
        FrameReader().feed(struct.pack(">I", len(payload)) + payload)


def test_lone_surrogates_survive_json():
    env = {"X": b"\xff".decode("utf-8", "surrogateescape")}
    frame = FrameReader().feed(pack({"type": "hello", "env": env}))[0]
    assert frame["env"]["X"].encode("utf-8", "surrogateescape") == b"\xff"
