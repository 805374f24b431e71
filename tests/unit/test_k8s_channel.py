"""The channel.k8s.io frames and status parsing the Kubernetes backend drives
itself (hatchway/backends/kubernetes/channel.py).  Status payloads are the shapes the
1.20 apiserver/kubelet send (client-go errorDecoderV4)."""

import json

import pytest
from websocket import ABNF

from hatchway.backends.kubernetes import channel as ch
@pytest.mark.parametrize("payload, code", [
    ({"metadata": {}, "status": "Success"}, 0),
    ({"metadata": {}, "status": "Failure", "message": "command terminated with non-zero exit "
      "code: error executing command [sh -c exit 3], exit code 3", "reason": "NonZeroExitCode",
      "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}, 3),
    # killed by SIGKILL: the runtime reports 128+9
    ({"status": "Failure", "reason": "NonZeroExitCode",
      "details": {"causes": [{"reason": "ExitCode", "message": "137"}]}}, 137),
])
def test_exit_codes(payload, code):
    st = ch.parse_status(json.dumps(payload).encode())
    assert st.code == code and st.message is None


def test_failure_without_exit_code_keeps_the_servers_message():
    # what the client library's returncode turns into a KeyError
    msg = 'OCI runtime exec failed: exec failed: container_linux.go:370: starting container ' \
          'process caused: exec: "nope": executable file not found in $PATH: unknown'
    st = ch.parse_status(json.dumps({"status": "Failure", "message": msg}).encode())
    assert st.code == 127 and "nope" in st.message
    st = ch.parse_status(json.dumps({"status": "Failure", "message": "container not running"})
                         .encode())
    assert st.code == 255 and st.message == "container not running"


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b"\xff\xfe", b'"Success"'])
def test_garbled_status_is_255_never_an_exception(garbage):
    assert ch.parse_status(garbage).code == 255


def test_frames_encoding():
    assert ch.stdin_frame(b"\x00\xff") == b"\x00\x00\xff"
    assert ch.close_frame() == b"\xff\x00"
    head, body = ch.resize_frame(30, 100)[:1], ch.resize_frame(30, 100)[1:]
    assert head == b"\x04" and json.loads(body) == {"Width": 100, "Height": 30}


class Frame:
    def __init__(self, data):
        self.data = data


class RecordedSocket:
    """websocket-client's recv_data_frame over a list of frames (what the real
    1.20 cluster sent for `printf` of all 256 bytes then `exit 3`)."""

    def __init__(self, frames):
        self.frames = list(frames)

    def recv_data_frame(self, control_frame=True):
        if not self.frames:
            raise OSError("closed")
        return self.frames.pop(0)


def test_reader_demuxes_keeps_every_byte_and_stops_at_the_status():
    every = bytes(range(256))
    status = json.dumps({"status": "Failure", "reason": "NonZeroExitCode",
                         "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}})
    sock = RecordedSocket([
        (ABNF.OPCODE_BINARY, Frame(b"\x01")), (ABNF.OPCODE_BINARY, Frame(b"\x02")),  # opening
        (ABNF.OPCODE_PING, Frame(b"")),
        (ABNF.OPCODE_BINARY, Frame(b"\x01" + every)),
        (ABNF.OPCODE_BINARY, Frame(b"\x02err")),
        (ABNF.OPCODE_BINARY, Frame(b"\x03" + status.encode())),
        (ABNF.OPCODE_BINARY, Frame(b"\x01after")),
    ])
    r = ch.Frames(sock)
    assert r.next() == (1, every)
    assert r.next() == (2, b"err")
    assert r.next() is None and r.status.code == 3


def test_reader_ends_without_status_when_the_connection_drops():
    r = ch.Frames(RecordedSocket([(ABNF.OPCODE_BINARY, Frame(b"\x01hi"))]))
    assert r.next() == (1, b"hi")
    assert r.next() is None and r.status is None
    r = ch.Frames(RecordedSocket([(ABNF.OPCODE_CLOSE, Frame(b""))]))
    assert r.next() is None


def _process_reading(frames):
    from hatchway.backends.kubernetes.backend import KubernetesProcess
    proc = KubernetesProcess.__new__(KubernetesProcess)
    proc.tty, proc.pid, proc.pending, proc._gone = True, None, [], False

    class Ws(RecordedSocket):
        def settimeout(self, t):
            pass
    proc.ws = Ws([(ABNF.OPCODE_BINARY, Frame(f)) for f in frames])
    proc.frames = ch.Frames(proc.ws)
    proc._read_pid()
    return proc


@pytest.mark.parametrize("frames", [
    [b"\x01hatchway-pid:42\r\nhello"],                       # pty: \r\n
    [b"\x01hatch", b"\x01way-pid:4", b"\x012\nhello"],        # split across frames
])
def test_the_wrappers_pid_line_is_consumed_and_the_rest_is_output(frames):
    proc = _process_reading(frames)
    assert proc.pid == 42
    assert proc.recv() == (1, b"hello")


def test_output_that_is_not_the_pid_line_is_kept_whole():
    proc = _process_reading([b"\x01sh: can't open\n"])
    assert proc.pid is None and proc.recv() == (1, b"sh: can't open\n")
