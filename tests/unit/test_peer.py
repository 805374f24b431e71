"""peer.receive_hello over a real socketpair: framing and descriptor rules."""

import os
import socket
import threading
import time


from hatchway.daemon import peer
from hatchway.shell import pack


def _pipes():
    a, b = os.pipe()
    c, d = os.pipe()
    e, f = os.pipe()
    return [a, d, f], [b, c, e]


def test_a_big_hello_split_over_many_reads_keeps_its_fds():
    client, server = socket.socketpair()
    mine, others = _pipes()
    hello = {"type": "hello", "v": 1, "command_b64": "x" * 300_000}
    data = pack(hello)

    def send():
        socket.send_fds(client, [data[:1000]], mine)
        client.sendall(data[1000:])
    t = threading.Thread(target=send)
    t.start()
    got, fds, _, pending = peer.receive_hello(server, 5)
    t.join()
    assert got["command_b64"] == hello["command_b64"] and len(fds) == 3 and pending == []
    for fd in fds + mine + others:
        os.close(fd)


def test_fds_after_the_first_read_are_refused():
    client, server = socket.socketpair()
    mine, others = _pipes()
    data = pack({"type": "hello", "v": 1})
    client.sendall(data[:3])
    result = []

    def receive():
        try:
            peer.receive_hello(server, 5)
        except peer.Refused as e:
            result.append(e)
    t = threading.Thread(target=receive)
    t.start()
    time.sleep(0.3)         # the daemon has read the first 3 bytes by now
    socket.send_fds(client, [data[3:]], mine)
    t.join()
    assert result and "after the hello" in result[0].message
    for fd in mine + others:
        os.close(fd)
