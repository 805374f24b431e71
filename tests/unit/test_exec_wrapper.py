"""backends/exec_wrapper.py run by real shells (dash, Debian's /bin/sh, and
busybox, the demo image's), in process sessions of their own as every exec
is: the pid line, the environment, the FIFO, and the signal sweep."""

import os
import shutil
import subprocess
import time

import pytest

from hatchway.backends import exec_wrapper as w

SHELLS = [["dash"]] + ([["busybox", "sh"]] if shutil.which("busybox") else [])


def with_shell(argv, shell):
    assert argv[0] == "/bin/sh"
    return shell + argv[1:]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_the_pid_line_comes_first_and_the_command_keeps_that_pid(shell):
    argv = w.wrap(["sh", "-c", 'echo "$FOO|$BAR"; cut -d" " -f1 /proc/self/stat >/dev/null; '
                   'echo $$'], env={"FOO": "a b", "BAR": "x", "1BAD": "y"})
    out = subprocess.run(with_shell(argv, shell), capture_output=True, check=True).stdout
    items = iter([(1, out[:5]), (1, out[5:])])         # split mid-line
    pid, start, pending = w.read_pid(lambda: next(items, None))
    rest = b"".join(d for _, d in pending)
    assert rest.split(b"\n")[:2] == [b"a b|x", str(pid).encode()]
    assert start > 0


def test_output_that_is_not_the_pid_line_stays_output():
    items = iter([(2, b"warn\n"), (1, b"sh: not found\n")])
    pid, start, pending = w.read_pid(lambda: next(items, None))
    assert pid is None and pending == [(2, b"warn\n"), (1, b"sh: not found\n")]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_stdin_from_a_fifo(shell, tmp_path):
    fifo = str(tmp_path / "in")
    p = subprocess.Popen(with_shell(w.wrap(["cat"], fifo=fifo), shell), stdout=subprocess.PIPE)
    line = p.stdout.readline()
    assert line.startswith(b"hatchway-pid:")
    with open(fifo, "wb") as f:
        f.write(b"through the fifo\n")
    assert p.communicate(timeout=10)[0] == b"through the fifo\n"


def session(shell):
    """A process session like an exec's: a leader (trapping HUP: it survives
    a hangup), a background job and a job that started a session of its own."""
    p = subprocess.Popen(shell + ["-c", 'sleep 300 & a=$!; setsid sleep 301 & b=$!; '
                                  'trap "" HUP; echo "$a $b"; wait'],
                         start_new_session=True, stdout=subprocess.PIPE)
    job, own = map(int, p.stdout.readline().split())
    with open(f"/proc/{p.pid}/stat") as f:
        start = int(f.read().rsplit(") ", 1)[1].split()[19])
    wait_until(lambda: members(own) == [own])     # setsid has run
    return p, start, job, own


def members(sid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d))
    return sorted(out)


def wait_until(pred, timeout=10):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end
        time.sleep(0.02)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_hup_reaches_the_group_kill_sweeps_the_session_and_nothing_else(shell):
    p, start, job, own = session(shell)
    try:
        assert len(members(p.pid)) == 2            # the leader and `sleep 300`
        subprocess.run(with_shell(w.signal_argv("KILL", p.pid, start + 1), shell), check=True)
        assert len(members(p.pid)) == 2            # another process's start time: untouched
        subprocess.run(with_shell(w.signal_argv("HUP", p.pid, start), shell), check=True)
        wait_until(lambda: members(p.pid) == [p.pid])   # the job died, the leader ignores HUP
        subprocess.run(with_shell(w.signal_argv("KILL", p.pid, start), shell), check=True)
        wait_until(lambda: members(p.pid) == [])
        assert p.wait(10) == -9
        # `setsid sleep 301` left the session, as a daemon or tmux would: it stays
        assert members(own) == [own]
    finally:
        for pid in (job, own):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        p.kill()
        p.wait()
