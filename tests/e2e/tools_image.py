"""The tools image: a Debian bookworm root with an sftp server, rsync and git,
built here without any registry and `docker import`ed.

    debootstrap --variant=minbase --include=<PACKAGES> bookworm → tar → cache
    cached tar → docker import → hatchway/tools:<key>

The root file system tarball is cached under CACHE (/var/cache/hatchway-test,
like the packaging tests' roots), so debootstrap runs once per machine and
recipe; a missing image is imported again from it.  Builds are serialised
with a lock file, so two work trees testing at once build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("HATCHWAY_TEST_CACHE", "/var/cache/hatchway-test")) / "tools"
MIRROR = os.environ.get("HATCHWAY_TEST_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
PACKAGES = ("openssh-sftp-server", "rsync", "git")
# The forwarding tests also need an ssh client and ssh-add in the container
# (a git push over ssh through the forwarded agent): a second recipe, so the
# image every other test uses stays as it is.
SSH_PACKAGES = PACKAGES + ("openssh-client",)
# bump to rebuild the cached root everywhere
REVISION = 1


def key(packages: tuple = PACKAGES) -> str:
    text = f"{SUITE} {' '.join(sorted(packages))} {REVISION} {MIRROR}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def image(packages: tuple = PACKAGES) -> str:
    return f"hatchway/tools:{key(packages)}"


IMAGE = image()
SSH_IMAGE = image(SSH_PACKAGES)


def _run(argv, timeout=1800) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(map(str, argv))} failed ({p.returncode}):\n"
                           f"{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return p


def _image_exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                          timeout=60).returncode == 0


def ensure(packages: tuple = PACKAGES) -> str:
    """The tools image's name (of the recipe `packages`), built (or imported
    from the cache) if missing."""
    name = image(packages)
    if _image_exists(name):
        return name
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _image_exists(name):
            _import(rootfs(packages), name, packages)
    return name


def rootfs(packages: tuple = PACKAGES) -> Path:
    """The cached root file system tarball; built with the lock held."""
    tarball = CACHE / f"{SUITE}-tools-{key(packages)}.tar"
    if tarball.exists():
        os.utime(tarball)               # in use: not to be pruned
        return tarball
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE))
    try:
        root = work / "root"
        # the downloaded .debs stay in the cache too: a rebuild after a
        # revision bump downloads only what changed
        debs = CACHE / "apt"
        debs.mkdir(exist_ok=True)
        _run(["nice", "-n", "10", "debootstrap", "--variant=minbase",
              f"--include={','.join(packages)}", f"--cache-dir={debs}",
              SUITE, str(root), MIRROR])
        # what a container never needs (and what makes the image bigger)
        for sub in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / "etc/machine-id").unlink(missing_ok=True)
        partial = work / "rootfs.tar"
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."])
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n[tools image] built {tarball.name} in {time.monotonic() - started:.0f}s")
    for old in CACHE.glob(f"{SUITE}-tools-*.tar"):
        current = old.name.rsplit("-", 1)[-1][:-4] in (key(), key(SSH_PACKAGES))
        if old != tarball and not current and time.time() - old.stat().st_mtime > 7 * 86400:
            old.unlink(missing_ok=True)
    return tarball


def _import(tarball: Path, name: str, packages: tuple) -> None:
    _run(["docker", "import",
          "-c", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "-c", "ENV LANG=C.UTF-8", "-c", "WORKDIR /root", "-c", 'CMD ["/bin/sh"]',
          "-m", f"Hatchway test image: Debian {SUITE} minbase + {' '.join(packages)}",
          str(tarball), name], timeout=600)
