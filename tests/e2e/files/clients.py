"""The command lines of real clients (OpenSSH's ssh/sftp/scp, rsync, git)
pointed at the test stack, and comparisons of what they moved."""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
from pathlib import Path

from .. import tools_image
from ..stack import SSHD_PORT

HOST = "127.0.0.1"
# Per-user host directories, bind-mounted at /data in every session.
DATA = Path("/srv/hatchway-test-files")
# The configuration the tests here run with (each module's pytestmark).
FILES_CONFIG = {"docker": {"image": tools_image.IMAGE, "mounts": [f"{DATA}/{{user}}:/data"]}}
# every client call gets one; a transfer that hangs fails the test instead
TIMEOUT = 180


def ssh_options(key: Path) -> list[str]:
    """What ssh, scp, sftp (and the ssh that rsync and git start) share."""
    return ["-F", "/dev/null", "-i", str(key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"]


def ssh_command(key: Path) -> str:
    """An `ssh` command line for rsync -e and GIT_SSH_COMMAND."""
    return shlex.join(["ssh", "-p", str(SSHD_PORT), *ssh_options(key)])


def run(argv, timeout=TIMEOUT, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    p = subprocess.run([str(a) for a in argv], timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{shlex.join(map(str, argv))} exited {p.returncode}:\n"
                             f"{_text(p.stdout)}{_text(p.stderr)}")
    return p


def sftp(key: Path, user: str, batch: str, tmp: Path, check=True, timeout=TIMEOUT):
    script = tmp / "batch"
    script.write_text(batch)
    return run(["sftp", "-P", SSHD_PORT, *ssh_options(key), "-b", script, f"{user}@{HOST}"],
               check=check, timeout=timeout)


def scp(key: Path, *args, legacy: bool = False, check=True, timeout=TIMEOUT):
    """scp in its default SFTP mode, or the legacy scp protocol (-O)."""
    return run(["scp", "-q", *(["-O"] if legacy else []), "-P", SSHD_PORT, *ssh_options(key),
                *args], check=check, timeout=timeout)


def git(*args, cwd=None, key=None, env=None, check=True, timeout=TIMEOUT):
    """git with its ssh pointed at the stack, and no host or user config."""
    environment = dict(os.environ, GIT_SSH_COMMAND=ssh_command(key), GIT_CONFIG_NOSYSTEM="1",
                       HOME=str(cwd or "/nonexistent"), GIT_AUTHOR_NAME="t",
                       GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
                       GIT_COMMITTER_EMAIL="t@example.org", **(env or {}))
    return run(["git", *args], cwd=cwd, env=environment, check=check, timeout=timeout)


def remote(user: str, path: str) -> str:
    return f"{user}@{HOST}:{path}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def random_file(path: Path, size: int) -> str:
    """A file of `size` incompressible bytes; returns its sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def tree_listing(root: Path) -> dict[str, tuple]:
    """Everything rsync -a promises to keep, per relative path: type, mode,
    content hash or link target, mtime (not of links or directories, whose
    times change as entries come and go)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, sha256(p),
                            st.st_mtime_ns // 10**9)
    return out


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
