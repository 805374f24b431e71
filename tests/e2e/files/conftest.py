"""Fixtures for the file-transfer tests: the tools image (Debian with an sftp
server, rsync and git; built on first use, see tools_image.py) and a host
directory per user bind-mounted at /data, so what one session wrote the next
one finds (as `git push` then `git clone` needs)."""

import shutil

import pytest

from .. import tools_image
from .clients import DATA


@pytest.fixture(scope="session", autouse=True)
def tools(stack):
    """Built once per session, before any test here configures the daemon to use it."""
    return tools_image.ensure()


@pytest.fixture(autouse=True)
def data(hw):
    """alice's /data, empty, as the host sees it (the mount source must exist
    before a session starts)."""
    for user in ("alice", "bob"):
        shutil.rmtree(DATA / user, ignore_errors=True)
        (DATA / user).mkdir(parents=True)
    yield DATA / "alice"
    shutil.rmtree(DATA, ignore_errors=True)


@pytest.fixture
def key(hw):
    return hw.keys["alice"]
