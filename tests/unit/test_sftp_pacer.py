"""sftp_fallback.Pacer: never more than `limit` unanswered requests reach the
server, whatever way the client's bytes and the answers are split."""

import struct
import threading
import time

import pytest

from hatchway.daemon.sftp_fallback import Pacer


def packet(i: int, size: int) -> bytes:
    body = bytes([6]) + struct.pack(">I", i) + b"x" * size
    return struct.pack(">I", len(body)) + body


def status(i: int) -> bytes:
    body = bytes([101]) + struct.pack(">II", i, 0) + b"\0\0\0\0\0\0\0\0"
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 4096, 65536])
def test_requests_are_held_back_beyond_the_limit_and_all_arrive(chunk):
    requests = [packet(i, 100 + i % 7) for i in range(500)]
    stream = b"".join(requests)
    forwarded = bytearray()
    seen_max = [0]
    pacer = None

    def send(data):
        forwarded.extend(data)
        # whole requests the "server" holds: forwarded but not answered
        count = pos = 0
        while pos + 4 <= len(forwarded):
            (n,) = struct.unpack_from(">I", forwarded, pos)
            if pos + 4 + n > len(forwarded):
                break
            pos += 4 + n
            count += 1
        seen_max[0] = max(seen_max[0], count - pacer.answered)

    pacer = Pacer(send, limit=8)
    done = threading.Event()

    ends = []
    for r in requests:
        ends.append((ends[-1] if ends else 0) + len(r))

    def server():
        answered = 0
        while answered < len(requests):
            if len(forwarded) >= ends[answered]:
                for piece in (status(answered)[:2], status(answered)[2:]):  # answers split too
                    pacer.answered_by(piece)
                answered += 1
            else:
                time.sleep(0)
        done.set()

    t = threading.Thread(target=server, daemon=True)
    t.start()
    for i in range(0, len(stream), chunk):
        pacer.send(stream[i:i + chunk])
    assert done.wait(10)
    assert bytes(forwarded) == stream
    assert seen_max[0] <= 8


def test_not_sftp_turns_pacing_off():
    sent = []
    pacer = Pacer(sent.append, limit=1)
    pacer.send(b"\xff\xff\xff\xffgarbage")      # a 4 GB "packet": not SFTP
    pacer.send(b"more")
    assert pacer.off and b"".join(sent) == b"\xff\xff\xff\xffgarbagemore"


def test_stop_releases_a_blocked_sender():
    sent = []
    pacer = Pacer(sent.append, limit=1)
    pacer.send(packet(1, 10))
    t = threading.Thread(target=pacer.send, args=(packet(2, 10),), daemon=True)
    t.start()
    t.join(0.2)
    assert t.is_alive()                 # held back: one request is unanswered
    pacer.stop()
    t.join(2)
    assert not t.is_alive() and b"".join(sent) == packet(1, 10) + packet(2, 10)
