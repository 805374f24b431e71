"""The Docker stream demultiplexer, fed by a fake socket (it only needs recv)."""

import struct

import pytest

from hatchway.backends.docker.process import DockerProcess
from hatchway.backends.docker.workspace import DockerExecProcess
from hatchway.backends.exec_wrapper import read_pid

FRAMES = [(1, b"ab"), (1, b"cd"), (2, b"E"), (1, b""), (1, b"x" * 100_000), (2, b"F")]


class Chunks:
    buffered = b""

    def __init__(self, data: bytes, size: int):
        self.chunks = [data[i:i + size] for i in range(0, len(data), size)]

    def recv(self, n):
        return self.chunks.pop(0) if self.chunks else b""

    def recv_into(self, view):
        if not self.chunks:
            return 0
        chunk = self.chunks.pop(0)
        if len(chunk) > len(view):
            chunk, rest = chunk[:len(view)], chunk[len(view):]
            self.chunks.insert(0, rest)
        view[:len(chunk)] = chunk
        return len(chunk)


def demux(data: bytes, size: int) -> list:
    p = DockerProcess.__new__(DockerProcess)
    p.tty, p.stream = False, Chunks(data, size)
    p._buf = bytearray(1 << 16)      # smaller than the largest frame: it must grow
    p._view, p._pos, p._end = memoryview(p._buf), 0, 0
    out = []
    while (item := p.recv()) is not None:
        out.append((item[0], bytes(item[1])))   # a view is valid until the next recv
    return out


@pytest.mark.parametrize("size", [1, 3, 7, 8, 9, 50, 1000, 1 << 20])
def test_frames_split_anywhere_come_out_whole_and_in_order(size):
    data = b"".join(struct.pack(">BxxxL", k, len(p)) + p for k, p in FRAMES)
    out = demux(data, size)
    assert b"".join(d for k, d in out if k == 1) == b"abcd" + b"x" * 100_000
    assert b"".join(d for k, d in out if k == 2) == b"EF"
    assert all(d for _, d in out), "no empty pieces"
    # stdout and stderr never merged into one piece
    kinds = [k for k, _ in out]
    assert kinds.count(2) == 2


def test_truncated_stream_ends_without_inventing_bytes():
    data = struct.pack(">BxxxL", 1, 10) + b"12345"
    assert demux(data, 4) == []


@pytest.mark.parametrize("size", [1, 5, 64, 1 << 20])
def test_an_exec_keeps_what_came_before_and_with_its_pid_line_intact(size):
    # a workspace session's first output: stderr, then the wrapper's pid line
    # with output behind it.  What read_pid holds back must survive the
    # receive buffer being reused by the reads after it.
    frames = [(2, b"warning\n"), (1, b"hatchway-pid:42:777\nfirst"), (1, b""), (2, b"E" * 300),
              (1, b"second")]
    data = b"".join(struct.pack(">BxxxL", k, len(p)) + p for k, p in frames)
    p = DockerExecProcess.__new__(DockerExecProcess)
    p.tty, p.stream, p.pending = False, Chunks(data, size), []
    p._buf = bytearray(64)          # small: every later read reuses it
    p._view, p._pos, p._end = memoryview(p._buf), 0, 0
    pid, start, p.pending = read_pid(p._first_output)
    assert (pid, start) == (42, 777)
    out = []
    while (item := p.recv()) is not None:
        out.append((item[0], bytes(item[1])))
    merged = []
    for k, d in out:
        if merged and merged[-1][0] == k:
            merged[-1] = (k, merged[-1][1] + d)
        else:
            merged.append((k, d))
    assert merged == [(2, b"warning\n"), (1, b"first"), (2, b"E" * 300), (1, b"second")]
