"""Terminal sessions: raw bytes, sizes, resizes and full-screen programs."""

import time

import pexpect
import pyte

PROMPT = r"[#$] "


def _shell(hw, rows=24, cols=80):
    c = hw.spawn("alice", dimensions=(rows, cols))
    c.delaybeforesend = None
    c.expect(PROMPT)
    return c


def _end(c, code=0):
    c.sendline(f"exit {code}")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == code


def test_control_keys_reach_the_container_as_bytes(hw):
    # ^C ^\ ^Z ^D would be signals or EOF on a cooked host pty; ^P is half of
    # dockerd's default detach sequence.  All must arrive as plain bytes.
    c = _shell(hw)
    c.sendline("stty raw -echo; dd bs=1 count=5 2>/dev/null | od -An -tx1; stty sane")
    time.sleep(0.5)
    c.send("\x03\x1c\x1a\x04\x10")
    c.expect(r"03 1c 1a 04 10")
    c.expect(PROMPT)
    _end(c)


def test_ctrl_p_alone_is_delivered_at_once(hw):
    # dockerd holds back a byte that could start its detach sequence until the
    # next one arrives; with Hatchway's sequence a lone ^P must not wait.
    c = _shell(hw)
    c.sendline("stty raw -echo; dd bs=1 count=1 2>/dev/null | od -An -tx1; stty sane")
    time.sleep(0.5)
    c.send("\x10")
    c.expect(r"10\s", timeout=10)
    c.expect(PROMPT)
    _end(c)


def test_every_resize_reaches_the_container(hw):
    c = _shell(hw, 24, 80)
    for rows, cols in ((30, 100), (50, 200), (20, 60)):
        c.setwinsize(rows, cols)
        time.sleep(0.3)
        c.sendline("stty size")
        c.expect(rf"{rows} {cols}\r\n")
    _end(c, 0)


def _screen_after(c, screen, stream, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            stream.feed(c.read_nonblocking(65536, timeout=0.2).decode("utf-8", "replace"))
        except pexpect.TIMEOUT:
            pass
    return [line.rstrip() for line in screen.display]


def _screen_until(c, screen, stream, done, timeout=15):
    """Feed the screen until `done(lines)` holds: a loaded 2-core machine may
    take more than one refresh period to redraw, so wait for the outcome with
    a generous bound instead of sampling after a fixed time."""
    end = time.monotonic() + timeout
    while True:
        lines = _screen_after(c, screen, stream, 0.5)
        if done(lines) or time.monotonic() > end:
            return lines


def test_vi_redraws_after_a_resize(hw):
    c = _shell(hw, 24, 80)
    screen = pyte.Screen(80, 24)
    stream = pyte.Stream(screen)
    c.sendline("vi /tmp/new-file")
    lines = _screen_after(c, screen, stream, 2)
    assert sum(1 for ln in lines if ln == "~") == 22, lines     # 24 rows: text + 22 ~ + status
    c.setwinsize(30, 100)
    screen.resize(30, 100)
    lines = _screen_after(c, screen, stream, 2)
    assert sum(1 for ln in lines if ln == "~") == 28, lines     # redrawn for 30 rows
    c.send("\x1b")
    time.sleep(0.3)             # a lone ESC, not the start of an escape sequence
    c.send(":q!\r")
    c.expect(PROMPT)
    _end(c)


def test_top_fills_the_new_height_after_a_resize(hw):
    c = _shell(hw, 24, 80)
    try:
        c.sendline("for i in $(seq 40); do sleep 1000 & done; top -d 1")
        screen = pyte.Screen(80, 24)
        stream = pyte.Stream(screen)

        def sleeps(lines):
            return sum(1 for ln in lines if "sleep 1000" in ln)

        lines = _screen_until(c, screen, stream, lambda lines: sleeps(lines) > 0)
        assert 0 < sleeps(lines) < 24, lines      # 24 rows cannot show all 40
        c.setwinsize(60, 120)
        screen.resize(60, 120)
        lines = _screen_until(c, screen, stream, lambda lines: sleeps(lines) == 40)
        assert sleeps(lines) == 40, lines         # all of them fit in 60 rows
        c.send("q")
        c.expect(PROMPT)
        _end(c)
    finally:
        c.close(force=True)       # a failed check must not also leave its container behind
