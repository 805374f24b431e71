"""The metrics process ends with the main process that forked it, even when
that one died before the metrics process got going (daemon/metrics.py serve:
the parent's pid is taken before the fork)."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_returns_at_once_when_its_parent_is_gone(tmp_path):
    """A main process killed while its metrics child was still importing: the
    child is the init's by then, so getppid() is no longer the pid it was
    given.  It must return within its first check, not serve for good."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from hatchway.daemon import metrics
        # a parent pid that is not ours: what the orphan sees
        metrics.serve({str(tmp_path / "hatchwayd.sock")!r}, "127.0.0.1:0", parent=1)
        print("returned")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (p.returncode, p.stdout) == (0, "returned\n"), p.stderr


def test_serve_keeps_serving_while_its_parent_lives(tmp_path):
    """The same call with its real parent's pid stays (the check can fail)."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from hatchway.daemon import metrics
        metrics.serve({str(tmp_path / "hatchwayd.sock")!r}, "127.0.0.1:0", parent=os.getppid())
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        assert p.poll() is None, p.stderr.read()
    finally:
        p.kill()
        p.wait()
