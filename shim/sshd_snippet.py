"""`hatchway sshd enable|disable` and the drift check behind `hatchway check`.

The package ships the sshd drop-in inactive, under /usr/share/hatchway.
Enabling copies it into /etc/ssh/sshd_config.d, proves with `sshd -t` and
`sshd -T -C` that it parses and that the Match really captures members of
hatchway-users (and nobody else), and only then reloads sshd.  Any failure
puts the previous state back, so sshd is never left unable to restart.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import signal
import subprocess

TEMPLATE = "/usr/share/hatchway/sshd_config.d/10-hatchway.conf"
TARGET = "/etc/ssh/sshd_config.d/10-hatchway.conf"
SHELL = "/usr/lib/hatchway/hatchway-shell"
KEYS = "/usr/lib/hatchway/hatchway-keys"
GROUP = "hatchway-users"


class SnippetError(Exception):
    pass


def sshd_version() -> tuple[int, int]:
    try:
        out = subprocess.run(["sshd", "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SnippetError(f"cannot run sshd: {e}") from None
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
    with open(template, encoding="utf-8") as f:
        return render(f.read(), sshd_version())


def drift(template: str = TEMPLATE, target: str = TARGET) -> str | None:
    """None if the live snippet equals the rendered template, else what differs."""
    try:
        with open(target, encoding="utf-8") as f:
            live = f.read()
    except FileNotFoundError:
        return f"{target} is missing (run `hatchway sshd enable`)"
    want = expected(template)
    if live == want:
        return None
    import difflib
    diff = difflib.unified_diff(want.splitlines(), live.splitlines(), "template", target,
                                lineterm="", n=0)
    changed = [ln for ln in diff if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    return f"{target} differs from the template: " + "; ".join(changed[:4])


def _sshd(args: list[str]) -> subprocess.CompletedProcess:
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # bookworm's sshd -t needs it
    return subprocess.run(["sshd", *args], capture_output=True, text=True, timeout=30)


def effective(user: str) -> dict[str, str]:
    p = _sshd(["-T", "-C", f"user={user},host=localhost,addr=127.0.0.1,laddr=127.0.0.1,lport=22"])
    if p.returncode != 0:
        raise SnippetError(f"sshd -T failed: {_last(p)}")
    out = {}
    for line in p.stdout.splitlines():
        k, _, v = line.partition(" ")
        out.setdefault(k, v)
    return out


def verify() -> list[str]:
    """Check the live config; returns notes, raises SnippetError on a real problem."""
    p = _sshd(["-t"])
    if p.returncode != 0:
        raise SnippetError(f"sshd -t rejects the configuration: {_last(p)}")
    notes = []
    other = effective("root")
    if other.get("forcecommand", "none") != "none" and SHELL in other.get("forcecommand", ""):
        raise SnippetError("the Hatchway ForceCommand applies to root; the Match is broken")
    members = _members()
    if not members:
        notes.append(f"no member of {GROUP} yet: could not check the Match for members")
        return notes
    mine = effective(members[0])
    if mine.get("forcecommand") != f"exec {SHELL}":
        raise SnippetError(f"members of {GROUP} get ForceCommand {mine.get('forcecommand')!r}, "
                           "not Hatchway's (an earlier drop-in's Match wins?)")
    if not mine.get("authorizedkeyscommand", "").startswith(KEYS):
        raise SnippetError(f"members of {GROUP} get AuthorizedKeysCommand "
                           f"{mine.get('authorizedkeyscommand')!r}, not Hatchway's")
    if mine.get("authorizedkeyscommanduser") != "hatchway-keys":
        raise SnippetError(f"members of {GROUP} get AuthorizedKeysCommandUser "
                           f"{mine.get('authorizedkeyscommanduser')!r}")
    for key, want in (("allowtcpforwarding", "no"), ("allowstreamlocalforwarding", "no"),
                      ("x11forwarding", "no"), ("permittunnel", "no"),
                      ("allowagentforwarding", "no")):
        if mine.get(key) != want:
            raise SnippetError(f"members of {GROUP} get {key} {mine.get(key)!r}, expected {want}")
    return notes


def _members() -> list[str]:
    try:
        g = grp.getgrnam(GROUP)
    except KeyError:
        return []
    import pwd
    names = list(g.gr_mem) + [p.pw_name for p in pwd.getpwall() if p.pw_gid == g.gr_gid]
    return sorted(set(names))


def _last(p: subprocess.CompletedProcess) -> str:
    lines = (p.stderr or p.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {p.returncode}"


def reload_sshd() -> str:
    if os.path.isdir("/run/systemd/system"):
        p = subprocess.run(["systemctl", "try-reload-or-restart", "ssh.service"],
                           capture_output=True, text=True)
        return "reloaded ssh.service" if p.returncode == 0 else f"reload failed: {_last(p)}"
    try:
        with open("/run/sshd.pid", encoding="ascii") as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGHUP)
        return f"sent SIGHUP to sshd (pid {pid})"
    except (OSError, ValueError):
        return "sshd is not running; the snippet applies when it starts"


def enable(template: str = TEMPLATE, target: str = TARGET) -> list[str]:
    text = expected(template)
    previous = None
    if os.path.exists(target):
        with open(target, encoding="utf-8") as f:
            previous = f.read()
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = target + ".hatchway-new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    try:
        notes = verify()
    except (SnippetError, subprocess.TimeoutExpired, OSError) as e:
        _restore(target, previous)
        raise SnippetError(f"{e}; the previous sshd configuration was put back") from None
    return notes + [reload_sshd()]


def disable(target: str = TARGET) -> list[str]:
    if not os.path.exists(target):
        return [f"{target} was not there; nothing to do"]
    backup = target + ".hatchway-disabled"
    shutil.move(target, backup)
    p = _sshd(["-t"])
    if p.returncode != 0:
        shutil.move(backup, target)
        raise SnippetError(f"sshd -t fails without the snippet ({_last(p)}); left it in place")
    os.unlink(backup)
    return [reload_sshd()]


def _restore(target: str, previous: str | None) -> None:
    if previous is None:
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
        return
    with open(target, "w", encoding="utf-8") as f:
        f.write(previous)
