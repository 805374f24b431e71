import os
import termios

from hatchway.daemon import terminal
def test_raw_mode_is_set_without_flushing_and_restored():
    master, slave = os.openpty()
    try:
        os.write(master, b"typed ahead")          # waiting input must survive raw mode
        before = termios.tcgetattr(slave)
        saved = terminal.make_raw(slave)
        attrs = termios.tcgetattr(slave)
        assert not attrs[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
        assert os.read(slave, 100) == b"typed ahead"
        terminal.restore(slave, saved)
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_restore_after_hangup_is_silent():
    master, slave = os.openpty()
    saved = terminal.make_raw(slave)
    os.close(master)
    terminal.restore(slave, saved)                # EIO is swallowed
    os.close(slave)


def test_size_of_a_pipe_is_none():
    r, w = os.pipe()
    assert terminal.size(r) is None
    os.close(r)
    os.close(w)
