"""The contract every backend keeps (hatchway/backends/base.py), run against
each real backend in turn (conftest.py): exit statuses, death by signal, a
missing command, stdin EOF, every byte value and 200 MB each way, stdout and
stderr, the terminal, signals, cleanup, the reaper and a missing image."""

import hashlib
import os
import time

import pytest

from hatchway.backends import labels
from hatchway.backends.base import BackendError

from .conftest import HOST

MB = 1 << 20


# -- exit status


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_status_passes_through(backend, code):
    st, out = backend.sh(f"exit {code}")
    assert (st.code, out) == (code, {1: b"", 2: b""})


@pytest.mark.parametrize("sig, code", [("HUP", 129), ("INT", 130), ("KILL", 137),
                                       ("TERM", 143)])
def test_death_by_signal_n_is_128_plus_n(backend, sig, code):
    assert backend.sh(f"kill -{sig} $$")[0].code == code


def test_a_missing_command_is_127(backend):
    # what a session's `ssh host cmd` runs: the shell looks the command up
    st, out = backend.sh("no-such-command")
    assert st.code == 127 and b"not found" in out[2], out
    # an argv whose program is not in the image at all
    s = backend.start(["/no/such/command"])
    s.proc.close_stdin()
    assert s.finish().code == 127, s.output()


# -- bytes


def test_stdout_and_stderr_stay_separate_without_a_pty(backend):
    script = ("[ -t 0 ] || [ -t 1 ] || [ -t 2 ] || echo no-tty; "
              "i=0; while [ $i -lt 200 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done; "
              "exit 7")
    st, out = backend.sh(script)
    assert st.code == 7
    assert out[1] == b"no-tty\n" + b"".join(b"out-%d\n" % i for i in range(200))
    assert out[2] == b"".join(b"err-%d\n" % i for i in range(200))


def test_the_sessions_environment_arrives(backend):
    s = backend.start(["/bin/sh", "-c", 'echo "$LANG|$FOO"'],
                      env={"LANG": "C.UTF-8", "FOO": "bar baz"})
    s.proc.close_stdin()
    assert (s.finish().code, s.output()[1]) == (0, b"C.UTF-8|bar baz\n")


def test_stdin_eof_arrives_after_every_byte_and_output_continues(backend):
    data = bytes(range(256)) * 4096         # 1 MiB
    st, out = backend.sh("cat; echo after-eof >&2; sleep 1; echo done; exit 3", data=data)
    assert (st.code, out[2]) == (3, b"after-eof\n")
    assert out[1] == data + b"done\n"
    # many small writes, then EOF: all of them are counted
    s = backend.start(["/bin/sh", "-c", "wc -c; echo done"])
    for _ in range(100):
        s.proc.send(b"x" * 1000)
    s.proc.close_stdin()
    assert (s.finish().code, s.output()[1].split()) == (0, [b"100000", b"done"])
    # EOF without a byte before it
    st, out = backend.sh("cat; echo nothing-came")
    assert (st.code, out[1]) == (0, b"nothing-came\n")


def test_every_byte_value_both_ways(backend):
    every = bytes(range(256))
    # in: the command sees each value (its own hash of what it read)
    st, out = backend.sh("sha256sum", data=every * 16)
    assert (st.code, out[1].split()[0].decode()) == (0, hashlib.sha256(every * 16).hexdigest())
    # out: the command writes each value itself
    st, out = backend.sh("printf '%s'" % "".join(f"\\{b:03o}" for b in every))
    assert (st.code, out[1]) == (0, every)
    # and through: what goes in comes out unchanged
    st, out = backend.sh("cat", data=every * 4096)
    assert (st.code, out[1]) == (0, every * 4096)


def test_200_mb_in_and_out_byte_identical(backend):
    # the hash and size of what the command read go to stderr; the same bytes
    # come back on stdout (hashed by the pump, not kept)
    s = backend.start(["/bin/sh", "-c", "tee /tmp/d | sha256sum >&2; wc -c < /tmp/d >&2; "
                                        "cat /tmp/d; rm /tmp/d"], digest_stdout=True)
    digest = hashlib.sha256()
    chunk = os.urandom(1 << 16)
    for i in range(3200):
        piece = chunk[i % 256:] + chunk[:i % 256]
        digest.update(piece)
        s.proc.send(piece)
    s.proc.close_stdin()
    st = s.finish(timeout=300)
    err = s.output()[2].split()
    assert st.code == 0, err
    assert err[0].decode() == digest.hexdigest() and err[-1] == str(200 * MB).encode()
    assert (s.stdout_size, s.digest.hexdigest()) == (200 * MB, digest.hexdigest())


# -- terminal


def test_pty_size_is_set_before_the_first_byte(backend):
    # the very first thing the command does is ask; a size that arrives later is too late
    for rows, cols in ((30, 100), (41, 132), (24, 80)):
        st, out = backend.sh("stty size", pty=True, size=(rows, cols))
        assert (st.code, out[1]) == (0, b"%d %d\r\n" % (rows, cols))


def test_pty_resize_reaches_the_command(backend):
    # SIGWINCH, and the new size with it (the first size is the case above)
    s = backend.start(["/bin/sh", "-c",
                       "trap 'echo \"winch $(stty size)\"; [ \"$(stty size)\" = \"50 200\" ] "
                       "&& exit 5' WINCH; echo ready; "
                       "while :; do sleep 0.1; done"], pty=True, size=(30, 100))
    s.wait_output(b"ready\r\n")
    s.proc.resize(50, 200)
    assert s.finish().code == 5, s.output()
    assert b"winch 50 200\r\n" in s.output()[1]


def test_pty_the_terminal_is_a_tty(backend):
    st, out = backend.sh("[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys; tty; "
                         "echo TERM=$TERM; echo to-stderr >&2; exit 3", pty=True)
    assert st.code == 3
    lines = out[1].split(b"\r\n")
    assert lines[0] == b"all-ttys" and lines[1].startswith(b"/dev/pts/"), out
    assert lines[2:4] == [b"TERM=xterm", b"to-stderr"], out
    assert out[2] == b""                    # one stream: the terminal


@pytest.mark.parametrize("pty", [False, True], ids=["pipes", "pty"])
@pytest.mark.parametrize("sig", ["HUP", "TERM", "INT"])
def test_signals_reach_the_command(backend, sig, pty):
    s = backend.start(["/bin/sh", "-c", f"trap 'echo got-{sig}; exit 1' {sig}; echo ready; "
                                        "while :; do sleep 0.1; done"], pty=pty)
    s.wait_output(b"ready")
    s.proc.signal(sig)
    assert s.finish().code == 1, s.output()
    assert f"got-{sig}".encode() in s.output()[1]


# -- cleanup


@pytest.mark.parametrize("pty", [False, True], ids=["pipes", "pty"])
def test_destroy_leaves_nothing_behind(backend, pty):
    s = backend.start(["sleep", "1000"], pty=pty)
    sid = s.spec.session_id
    assert len(backend.leftovers(sid)) == 1
    s.proc.destroy()
    assert backend.leftovers(sid) == []
    s.proc.destroy()                        # idempotent, never raises
    s.thread.join(30)
    assert not s.thread.is_alive()          # the output ends too


def test_the_reaper_removes_what_a_dead_owner_left_and_keeps_the_rest(backend, monkeypatch):
    # this suite's sessions are a host of their own (conftest.py): reap that one
    monkeypatch.setattr(labels, "host_id", lambda: HOST)
    live = backend.start(["sleep", "1000"])
    dead = backend.start(["sleep", "1000"], owner="gone:1:1")
    other_host = backend.start(["sleep", "1000"], owner="gone:1:1", host=HOST + "-other")
    names = {s: backend.leftovers(s.spec.session_id) for s in (live, dead, other_host)}
    assert all(len(n) == 1 for n in names.values()), names
    removed = backend.reap(lambda lab: labels.process_alive(lab.get(labels.PROCESS, "")))
    assert names[dead][0] in removed
    assert names[live][0] not in removed and names[other_host][0] not in removed
    end = time.monotonic() + 30
    while backend.leftovers(dead.spec.session_id):
        assert time.monotonic() < end, "the dead owner's session is still there"
        time.sleep(0.2)
    assert backend.leftovers(live.spec.session_id) == names[live]
    assert backend.leftovers(other_host.spec.session_id) == names[other_host]
    for s in (live, dead, other_host):
        s.proc.destroy()


WHY_NO_IMAGE = {"docker": "is not available on this host", "kubernetes": "ErrImageNeverPull"}


def test_a_missing_image_fails_fast_with_a_clear_backend_error(backend):
    image = "local/no-such-image:1"
    t = backend.variant(image=image)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as e:
        t.backend.start(t.spec(["true"]))
    took = time.monotonic() - t0
    assert image in str(e.value) and WHY_NO_IMAGE[backend.name] in str(e.value), e.value
    assert took < 30, took                  # start_timeout is 60 s: no waiting it out
    print(f"{backend.name}: {e.value} ({took:.1f}s)")
