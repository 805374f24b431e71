"""Fixtures for the packaging tests: the .deb under test, an older build of it
to upgrade from, and the host facts the roots need.

These tests install the package only into throwaway roots (chroot or a
systemd-nspawn container), never into the host, so they need no e2e lock.
Needs root, debootstrap and systemd-container (tests/setup/deps installs them)
and the Debian mirror.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def version() -> str:
    first = (ROOT / "debian/changelog").read_text().splitlines()[0]
    return re.search(r"\((.*?)\)", first).group(1)


def pytest_configure(config):
    if os.geteuid() != 0:
        pytest.exit("the packaging tests need root (run `make package-test`)", returncode=2)
    for tool in ("debootstrap", "systemd-nspawn", "dpkg-buildpackage", "lintian"):
        if not shutil.which(tool):
            pytest.exit(f"{tool} is missing: run tests/setup/deps", returncode=2)


@pytest.fixture(scope="session")
def deb() -> Path:
    """dist/hatchway_<version>_all.deb, as `make deb` built it from this tree."""
    path = ROOT / "dist" / f"hatchway_{version()}_all.deb"
    if not path.exists():
        subprocess.run([str(ROOT / "tests/setup/build-deb")], check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def old_deb(tmp_path_factory) -> Path:
    """The previous build: this tree with a lower version and a different
    shipped config file, so that upgrading from it meets dpkg's conffile logic
    (a conffile both the admin and the package changed)."""
    return build_variant(tmp_path_factory.mktemp("old-deb"), f"{version()}~prev1",
                         conffile_note="# (the previous release's wording of this file)\n")


def build_variant(out: Path, new_version: str, conffile_note: str) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="hatchway-variant-"))
    try:
        src = scratch / f"hatchway-{new_version}"
        src.mkdir()
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], cwd=ROOT, check=True,
                               capture_output=True).stdout.split(b"\0")
        for name in filter(None, files):
            f = ROOT / name.decode()
            if f.is_file():
                (src / name.decode()).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, src / name.decode())
        changelog = src / "debian/changelog"
        lines = changelog.read_text().splitlines(keepends=True)
        lines[0] = re.sub(r"\(.*?\)", f"({new_version})", lines[0], count=1)
        changelog.write_text("".join(lines))
        conf = src / "packaging/hatchway.yaml"
        conf.write_text(conffile_note + conf.read_text())
        env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck",
                   PATH="/usr/sbin:/usr/bin:/sbin:/bin")
        p = subprocess.run(["nice", "dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        built = scratch / f"hatchway_{new_version}_all.deb"
        shutil.copy(built, out / built.name)
        return out / built.name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_gid() -> int:
    """The group of the host's Docker socket, which test roots reuse so that a
    daemon inside them reaches the host's engine.  dockerd and the demo image
    come from tests/setup/services, as for the end-to-end tests."""
    subprocess.run([str(ROOT / "tests/setup/services")], check=True)
    return os.stat("/var/run/docker.sock").st_gid
