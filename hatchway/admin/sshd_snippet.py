"""`hatchway sshd enable|disable` and the sshd part of `hatchway check`.

The package ships the sshd drop-in inactive, under /usr/share/hatchway.
Enabling copies it into /etc/ssh/sshd_config.d and then proves, with sshd
itself, that it does what it says: `sshd -t` accepts the whole configuration,
and `sshd -T -C user=…` shows every directive of the drop-in in effect for
members of hatchway-users (an earlier drop-in's Match could override any of
them) and Hatchway's two hooks in effect for nobody else.  Only then is sshd
reloaded.  Any failure, the reload included, puts the previous file back, so
sshd is never left unable to restart.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import pwd
import re
import signal
import subprocess

from hatchway.core import fsutil, identity
from hatchway.core.errors import HatchwayError
from hatchway.core.identity import GROUP

TEMPLATE = "/usr/share/hatchway/sshd_config.d/10-hatchway.conf"
TARGET = "/etc/ssh/sshd_config.d/10-hatchway.conf"
SHELL = "/usr/lib/hatchway/hatchway-shell"
KEYS = "/usr/lib/hatchway/hatchway-keys"
SSHD = "/usr/sbin/sshd"
LOCK = "/run/lock/hatchway-sshd.lock"
# sshd -T costs ~30 ms a user; beyond this many members, check a sample.
MAX_MEMBERS_CHECKED = 25
# Accounts that are never members, used to prove the Match leaves others alone.
OUTSIDERS = ("root", "nobody")
# Keywords whose values accumulate (sshd -T prints one line per value).
MULTI = {"acceptenv"}
# The file names enable/disable use next to the drop-in: none ends in .conf,
# so sshd's `Include /etc/ssh/sshd_config.d/*.conf` never reads them.
DISABLED, SAVED = ".hatchway-disabled", ".hatchway-saved"


class SnippetError(HatchwayError):
    pass


# ------------------------------------------------------------------ the text

def sshd_version() -> tuple[int, int]:
    try:
        out = subprocess.run([SSHD, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SnippetError(f"cannot run {SSHD}: {e}") from None
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stderr + out.stdout)
    if not m:
        raise SnippetError("cannot tell the installed sshd's version")
    return int(m.group(1)), int(m.group(2))


def render(template_text: str, version: tuple[int, int]) -> str:
    """sshd >= 9.4 can pass the client address to the key helper (%C)."""
    if version >= (9, 4):
        return re.sub(r"^(\s*AuthorizedKeysCommand\s+\S+ %u %t %k)\s*$", r"\1 %C",
                      template_text, flags=re.M)
    return template_text


def expected(template: str = TEMPLATE) -> str:
    try:
        with open(template, encoding="utf-8") as f:
            return render(f.read(), sshd_version())
    except OSError as e:
        raise SnippetError(f"cannot read the template {template}: {e.strerror}") from None


def directives(text: str) -> list[tuple[str, str]]:
    """(keyword, value) for every directive inside the drop-in's Match block,
    keywords lower-cased as `sshd -T` prints them."""
    out, in_match = [], False
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.partition(" ")
        if key.lower() == "match":
            in_match = True
            continue
        if in_match:
            out.append((key.lower(), " ".join(value.split())))
    return out


def drift(template: str = TEMPLATE, target: str = TARGET) -> str | None:
    """None if the live drop-in equals the rendered template, else what differs."""
    try:
        with open(target, encoding="utf-8") as f:
            live = f.read()
    except FileNotFoundError:
        return f"{target} is missing (run `hatchway sshd enable`)"
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read {target}: {e}"
    want = expected(template)
    if live == want:
        return None
    diff = difflib.unified_diff(want.splitlines(), live.splitlines(), "template", target,
                                lineterm="", n=0)
    changed = [ln for ln in diff if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    return (f"{target} differs from the template (`hatchway sshd enable` restores it): "
            + "; ".join(changed[:4]) + (" …" if len(changed) > 4 else ""))


# ------------------------------------------------------------------ sshd's view

def _sshd(args: list[str]) -> subprocess.CompletedProcess:
    # Debian 12's sshd -t refuses to run without its privilege separation
    # directory, which only a running ssh.service creates.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    try:
        return subprocess.run([SSHD, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SnippetError(f"cannot run {SSHD}: {e}") from None


def _last(p: subprocess.CompletedProcess) -> str:
    lines = (p.stderr or p.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {p.returncode}"


def effective(user: str) -> dict[str, list[str]]:
    """What sshd would apply to a connection of `user` (from 127.0.0.1)."""
    p = _sshd(["-T", "-C", f"user={user},host=localhost,addr=127.0.0.1,laddr=127.0.0.1,lport=22"])
    if p.returncode != 0:
        raise SnippetError(f"sshd -T for {user} failed: {_last(p)}")
    out: dict[str, list[str]] = {}
    for line in p.stdout.splitlines():
        k, _, v = line.partition(" ")
        out.setdefault(k, []).append(v.strip())
    return out


def _mismatches(want: list[tuple[str, str]], got: dict[str, list[str]]) -> list[str]:
    bad = []
    for key, value in want:
        have = got.get(key)
        if have is None:
            continue    # a keyword this sshd does not report (sshd -t accepted it)
        if key in MULTI:
            missing = [v for v in value.split() if v not in have]
            if missing:
                bad.append(f"{key} lacks {' '.join(missing)}")
        elif have[0].lower() != value.lower():
            bad.append(f"{key} is {have[0]!r}, not {value!r}")
    return bad


def verify(text: str) -> list[str]:
    """Check sshd's live configuration against the drop-in `text`.
    Returns notes; raises SnippetError on a real problem."""
    p = _sshd(["-t"])
    if p.returncode != 0:
        raise SnippetError(f"sshd -t rejects the configuration: {_last(p)}")
    notes = []
    for user in OUTSIDERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        got = effective(user)
        if SHELL in " ".join(got.get("forcecommand", [])) or \
                " ".join(got.get("authorizedkeyscommand", [])).startswith(KEYS):
            raise SnippetError(f"Hatchway's hooks apply to {user}, who is not in {GROUP}: "
                               "the Match is broken")
    want = directives(text)
    found = identity.members()
    if not found:
        notes.append(f"no member of {GROUP} yet, so sshd could not show the drop-in applying "
                     "to members; `hatchway check` does once there is one")
        return notes
    checked = found[:MAX_MEMBERS_CHECKED]
    for user in checked:
        bad = _mismatches(want, effective(user))
        if bad:
            hint = ""
            if any(k.startswith("forcecommand") for k in bad):
                hint = (" (an earlier Match in /etc/ssh/sshd_config or sshd_config.d wins, or "
                        "the Include of sshd_config.d/*.conf is missing)")
            raise SnippetError(f"for {user} (in {GROUP}) sshd has " + "; ".join(bad) + hint)
    if len(found) > len(checked):
        notes.append(f"checked {len(checked)} of {len(found)} members of {GROUP}")
    return notes


def check(template: str = TEMPLATE, target: str = TARGET) -> tuple[list[str], list[str]]:
    """(problems, notes) for `hatchway check`: drift, then sshd's own view."""
    try:
        d = drift(template, target)
        if d:
            return [d], []
        notes = verify(expected(template))
    except (SnippetError, OSError) as e:
        return [str(e)], []
    return [], ["drop-in matches the template and is in effect for members only"] + notes


# ------------------------------------------------------------------ reloading

def reload_sshd() -> str:
    """Make a running sshd read its configuration again; raises on failure."""
    if os.path.isdir("/run/systemd/system"):
        active = subprocess.run(["systemctl", "is-active", "--quiet", "ssh.service"])
        if active.returncode != 0:
            return "ssh.service is not running; the drop-in applies when it starts"
        p = subprocess.run(["systemctl", "reload", "ssh.service"], capture_output=True,
                           text=True, timeout=60)
        if p.returncode != 0:
            raise SnippetError(f"systemctl reload ssh.service failed: {_last(p)}")
        return "reloaded ssh.service"
    pid = _sshd_pid()
    if pid is None:
        return "sshd is not running; the drop-in applies when it starts"
    os.kill(pid, signal.SIGHUP)
    return f"sent SIGHUP to sshd (pid {pid})"


def _sshd_pid() -> int | None:
    """The listening sshd named by its PidFile, if it is really sshd."""
    p = _sshd(["-T", "-C", "user=root,host=localhost,addr=127.0.0.1"])
    pidfile = "/run/sshd.pid"
    for line in p.stdout.splitlines():
        if line.startswith("pidfile "):
            pidfile = line.split(" ", 1)[1].strip()
    try:
        with open(pidfile, encoding="ascii") as f:
            pid = int(f.read().strip())
        exe = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError):
        return None
    # a stale pid file may name a reused pid: signal only an sshd
    return pid if os.path.basename(exe.removesuffix(" (deleted)")) == "sshd" else None


# ------------------------------------------------------------------ enable / disable

@contextlib.contextmanager
def _locked():
    """One enable/disable at a time (both read, write and roll back one file)."""
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write(path: str, text: str) -> None:
    """sshd (or a concurrent reader) sees the old file or the new."""
    fsutil.atomic_write(path, text.encode(), 0o644, durable=True)


def _restore(target: str, previous: str | None) -> None:
    if previous is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
    else:
        _write(target, previous)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SnippetError("changing sshd's configuration needs root")


def enable(template: str = TEMPLATE, target: str = TARGET) -> list[str]:
    _require_root()
    text = expected(template)
    with _locked():
        previous = _read(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        notes = []
        if previous is not None and previous != text:
            _write(target + SAVED, previous)
            notes.append(f"{target} had local changes; they are saved in {target + SAVED}")
        _write(target, text)
        reloading = False
        try:
            notes += verify(text)
            reloading = True
            notes.append(reload_sshd())
        except (SnippetError, OSError) as e:
            _restore(target, previous)
            again = ""
            if reloading:       # sshd may have half-read the new file: reload the old
                try:
                    reload_sshd()
                except (SnippetError, OSError) as e2:
                    again = f" (reloading sshd after that failed too: {e2})"
            raise SnippetError(f"{e}; the previous sshd configuration was put back{again}") \
                from None
    return notes


def disable(target: str = TARGET) -> list[str]:
    _require_root()
    with _locked():
        if not os.path.exists(target):
            return [f"{target} was not there; nothing to do"]
        aside = target + DISABLED
        os.replace(target, aside)
        p = _sshd(["-t"])
        if p.returncode != 0:
            os.replace(aside, target)
            raise SnippetError(f"sshd -t fails without the drop-in ({_last(p)}); left it in place")
        try:
            note = reload_sshd()
        except (SnippetError, OSError) as e:
            os.replace(aside, target)
            raise SnippetError(f"{e}; the drop-in was put back") from None
        os.unlink(aside)
    notes = [note, f"removed {target}"]
    if identity.members():
        notes.append(f"members of {GROUP} are no longer sent to containers; with no password "
                     "and root-owned homes they cannot log in at all, unless you give them keys")
    return notes
