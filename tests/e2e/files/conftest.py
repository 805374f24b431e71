"""Fixtures for the file-transfer tests: the tools image (Debian with an sftp
server, rsync and git; built on first use, see tools_image.py) and a host
directory per user bind-mounted at /data, so what one session wrote the next
one finds (as `git push` then `git clone` needs)."""

import base64
import os
import shutil
from pathlib import Path

import paramiko
import pytest

from .. import tools_image
from ..stack import SSHD_PORT
from .clients import DATA, HOST, run


@pytest.fixture(scope="session", autouse=True)
def tools(stack):
    """Built once per session, before any test here configures the daemon to use it."""
    return tools_image.ensure()


@pytest.fixture(scope="session")
def data_root(stack):
    """The users' directories live on a nosuid mount, as writable mounts must
    (hatchway.yaml(5)): a bind of the directory onto itself, remounted
    nosuid, as an admin's fstab line would make it."""
    DATA.mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", str(DATA), str(DATA)])
    run(["mount", "-o", "remount,bind,nosuid,nodev", str(DATA)])
    yield DATA
    run(["umount", "-l", str(DATA)])
    shutil.rmtree(DATA, ignore_errors=True)


@pytest.fixture(autouse=True)
def data(hw, data_root):
    """alice's /data, empty, as the host sees it (the mount source must exist
    before a session starts)."""
    for user in ("alice", "bob"):
        shutil.rmtree(data_root / user, ignore_errors=True)
        (data_root / user).mkdir(parents=True)
    yield data_root / "alice"
    for user in ("alice", "bob"):
        shutil.rmtree(data_root / user, ignore_errors=True)


@pytest.fixture
def key(hw):
    return hw.keys["alice"]


def host_key(hw) -> Path:
    return hw.tmp / "ssh_host_ed25519_key.pub"


@pytest.fixture
def client(hw, key):
    c = paramiko.SSHClient()
    # strict: only the stack's own host key is accepted
    kind, blob = host_key(hw).read_text().split()[:2]
    c.get_host_keys().add(f"[{HOST}]:{SSHD_PORT}", kind,
                          paramiko.Ed25519Key(data=base64.b64decode(blob)))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(HOST, SSHD_PORT, username="alice", key_filename=str(key), look_for_keys=False,
              allow_agent=False, timeout=20, banner_timeout=20, auth_timeout=20)
    yield c
    c.close()


@pytest.fixture
def putty(hw, key, tmp_path):
    """plink/pscp arguments: a .ppk of alice's key, the host key pinned by its
    fingerprint (no prompt, no cache), batch mode, and a HOME of their own
    (PuTTY writes its random seed there)."""
    ppk = tmp_path / "alice.ppk"
    run(["puttygen", key, "-O", "private", "-o", ppk])
    fingerprint = run(["ssh-keygen", "-l", "-E", "sha256", "-f", host_key(hw)]).stdout.split()[1]
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home))
    args = ["-batch", "-P", str(SSHD_PORT), "-i", str(ppk), "-hostkey", fingerprint.decode()]
    return args, env
