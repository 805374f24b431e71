"""Clean Debian roots for the packaging tests, built once and cached.

A pristine root per recipe is made with `debootstrap --variant=minbase` from
the Debian mirror and kept under CACHE (/var/cache/hatchway-test, outside the
work tree, reused by later runs on the same machine); every test works on a
copy.  The .debs apt downloads land in one archive directory per suite that is
bind-mounted into every root, so a warm run downloads only changed indexes.

Commands run inside a root through `chroot` in a private mount namespace
(`unshare --mount`), which holds the /proc and archive mounts: they vanish
with the command, so a killed test never leaves a mount behind.  Roots get a
fresh random /etc/machine-id: Hatchway labels containers with it and its
reaper only touches containers carrying its own host's id, so a daemon in a
test root and the daemons of the host (other developers' tests) never reap
each other's containers.
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("HATCHWAY_TEST_CACHE", "/var/cache/hatchway-test"))
MIRROR = os.environ.get("HATCHWAY_TEST_MIRROR", "http://deb.debian.org/debian")
WORK = Path(os.environ.get("HATCHWAY_TEST_WORK", "/var/tmp"))
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
       "DEBIAN_FRONTEND": "noninteractive", "TERM": "dumb"}
# Non-interactive conffile handling, as an admin's unattended upgrade would use.
CONFOLD = ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
NICE = ["nice", "-n", "10"]


@dataclass(frozen=True)
class Recipe:
    suite: str
    packages: tuple[str, ...] = ()
    # bump to rebuild every cached root of this recipe
    revision: int = 1

    def key(self) -> str:
        text = f"{self.suite} {' '.join(sorted(self.packages))} {self.revision} {MIRROR}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


RECIPES = {
    "bookworm": Recipe("bookworm"),
    "trixie": Recipe("trixie"),
    # booted with systemd-nspawn: init, D-Bus, sshd and a client, plus the
    # Python modules Hatchway needs (checked again against the .deb at test time)
    "bookworm-systemd": Recipe("bookworm", ("systemd", "systemd-sysv", "dbus", "openssh-server",
                                            "openssh-client", "python3-click", "python3-yaml",
                                            "adduser", "procps")),
}


class RootError(Exception):
    pass


def _run(argv, check=True, timeout=1800, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run(argv, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RootError(f"{shlex.join(argv)} failed ({p.returncode}):\n"
                        f"{(p.stdout or '')[-3000:]}{(p.stderr or '')[-3000:]}")
    return p


def archives(suite: str) -> Path:
    path = CACHE / "apt" / suite
    (path / "partial").mkdir(parents=True, exist_ok=True)
    return path


def pristine(name: str) -> Path:
    """The cached pristine root for recipe `name`, built if missing."""
    roots = CACHE / "roots"
    roots.mkdir(parents=True, exist_ok=True)
    final = roots / f"{name}-{RECIPES[name].key()}"
    if not (final / ".complete").exists():
        with open(roots / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _ensure(name)
    os.utime(final / ".complete")       # in use: not to be pruned
    return final


def _ensure(name: str) -> Path:
    """pristine() with the lock held (a derived root builds its base first)."""
    recipe = RECIPES[name]
    roots = CACHE / "roots"
    final = roots / f"{name}-{recipe.key()}"
    if (final / ".complete").exists():
        return final
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=roots))
    try:
        _build(recipe, tmp)
        (tmp / ".complete").write_text(f"{time.ctime()}\n")
        tmp.chmod(0o755)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"\n[roots] built {final.name} in {time.monotonic() - started:.0f}s")
    # Roots of older recipes, unused for a week (other work trees may still
    # use a recent one).
    for old in roots.iterdir():
        if old != final and old.name.rsplit("-", 1)[0] == name and \
                time.time() - (old / ".complete").stat().st_mtime > 7 * 86400:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _build(recipe: Recipe, target: Path) -> None:
    if recipe.packages:
        # derived from the suite's plain root: debootstrap once per suite
        _run(["cp", "-a", "--reflink=auto", f"{_ensure(recipe.suite)}/.", str(target)])
        (target / ".complete").unlink(missing_ok=True)
    else:
        _run(NICE + ["debootstrap", "--variant=minbase",
                     f"--cache-dir={archives(recipe.suite)}", recipe.suite, str(target), MIRROR])
    root = Root(target, recipe.suite)
    if recipe.packages:
        root.apt(["update", "-q"])
        root.apt(["install", "-y", "-q", "--no-install-recommends", *recipe.packages])
    # (not `apt-get clean` in the root: that would empty the shared archive)
    for deb in (target / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    # a test root must never share a machine id with anything (see above)
    (target / "etc/machine-id").unlink(missing_ok=True)


class Root:
    """A Debian root directory and commands run inside it with chroot."""

    def __init__(self, path: Path, suite: str):
        self.path = Path(path)
        self.suite = suite
        self.binds: list[tuple[str, str]] = [(str(archives(suite)), "/var/cache/apt/archives")]

    @classmethod
    def copy(cls, name: str, workdir: Path | None = None) -> "Root":
        src = pristine(name)
        workdir = Path(tempfile.mkdtemp(prefix=f"hatchway-pkgtest-{name}-", dir=workdir or WORK))
        dst = workdir / "root"
        _run(["cp", "-a", "--reflink=auto", str(src), str(dst)])
        (dst / ".complete").unlink(missing_ok=True)
        dst.chmod(0o755)        # its "/": roots cached before 0755 was set are 0700
        (dst / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        return cls(dst, RECIPES[name].suite)

    def destroy(self) -> None:
        self.kill_all()
        shutil.rmtree(self.path.parent, ignore_errors=True)

    # ------------------------------------------------------------ running

    def argv(self, argv: list[str], env: dict | None = None) -> list[str]:
        """argv that runs `argv` inside the root, with /proc and the binds mounted."""
        mounts = [f"mount -t proc proc {shlex.quote(str(self.path / 'proc'))}"]
        for src, dst in self.binds:
            target = shlex.quote(str(self.path / dst.lstrip("/")))
            make = "mkdir -p" if os.path.isdir(src) else "touch"      # a socket, say
            mounts.append(f"{make} {target} && mount --bind {shlex.quote(src)} {target}")
        script = " && ".join(mounts) + ' && exec chroot "$0" "$@"'
        environment = dict(ENV, **(env or {}))
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                str(self.path), "env", "-i", *(f"{k}={v}" for k, v in environment.items()),
                *argv]

    def run(self, argv: list[str], check=True, env=None, timeout=900, **kw):
        return _run(self.argv(argv, env), check=check, timeout=timeout, **kw)

    def sh(self, script: str, check=True, env=None, timeout=900, **kw):
        return self.run(["sh", "-c", script], check=check, env=env, timeout=timeout, **kw)

    def popen(self, argv: list[str], env=None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv, env), start_new_session=True, **kw)

    def kill_all(self) -> list[str]:
        """End every process still running inside this root (daemons a test
        started there, and their children); returns what they were."""
        killed = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/root") != str(self.path):
                    continue
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                os.kill(int(pid), 9)
                killed.append(f"{pid} {cmd.strip()}")
            except (OSError, ValueError):
                continue
        return killed

    # ------------------------------------------------------------ packages

    def put(self, src: Path, dst: str) -> str:
        target = self.path / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)
        return dst

    def no_services(self) -> None:
        """As in a chroot build: maintainer scripts may not start daemons."""
        p = self.path / "usr/sbin/policy-rc.d"
        p.write_text("#!/bin/sh\nexit 101\n")
        p.chmod(0o755)

    def apt_update(self) -> None:
        # conditional requests: nearly free when the mirror has not changed
        self.apt(["update", "-q"])

    def apt(self, argv: list[str]) -> subprocess.CompletedProcess:
        """apt-get in the root, one at a time per suite on this host: the roots
        share one archive directory, and with it apt's lock, which apt does
        not wait for."""
        lock = str(archives(self.suite).parent / f"{self.suite}.lock")
        return _run(["flock", lock, *NICE, *self.argv(["apt-get", *argv])], timeout=1800)

    def apt_install(self, *what: str, recommends=False, extra=()) -> subprocess.CompletedProcess:
        argv = ["install", "-y", "-q", *CONFOLD, *extra]
        if not recommends:
            argv.append("--no-install-recommends")
        return self.apt(argv + list(what))

    def satisfy(self, deb: Path) -> None:
        """Install what the .deb depends on, from the mirror, but not the .deb."""
        depends = _run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout.strip()
        self.apt(["satisfy", "-y", "-q", "--no-install-recommends", depends])

    def dpkg_status(self, package: str) -> str:
        p = self.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package], check=False)
        return p.stdout.strip() if p.returncode == 0 else "not-installed"

    # ------------------------------------------------------------ inspection

    def files(self) -> dict[str, tuple]:
        """Every path in the root (as the root sees it) with its type, mode and owner."""
        out = {}
        skip = {self.path / d for d in ("proc", "sys", "dev", "run/lock", "tmp")}
        for dirpath, dirnames, filenames in os.walk(self.path):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if here / d not in skip]
            for name in dirnames + filenames:
                p = here / name
                st = p.lstat()
                out["/" + str(p.relative_to(self.path))] = (st.st_mode, st.st_uid, st.st_gid)
        return out

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path / path.lstrip("/"))

    def read(self, path: str) -> str:
        return (self.path / path.lstrip("/")).read_text()

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        p = self.path / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)


@dataclass
class Snapshot:
    """The difference between two `Root.files()` listings, less what `ignore`
    names (exact paths, and whole trees written with a trailing slash)."""
    before: dict
    after: dict
    ignore: tuple[str, ...] = field(default=())

    def _ok(self, path: str) -> bool:
        """Not ignored: `ignore` holds exact paths, and trees as "/dir/"."""
        for p in self.ignore:
            if path == p.rstrip("/") or (p.endswith("/") and path.startswith(p)):
                return False
        return True

    @property
    def added(self) -> list[str]:
        return sorted(p for p in self.after if p not in self.before and self._ok(p))

    @property
    def removed(self) -> list[str]:
        return sorted(p for p in self.before if p not in self.after and self._ok(p))

    @property
    def changed(self) -> list[str]:
        return sorted(p for p in self.after if p in self.before and self._ok(p)
                      and self.after[p] != self.before[p])
