"""Running hatchway-keys the way sshd does, from the work tree.

The entry point is the very script the .deb installs as
/usr/lib/hatchway/hatchway-keys (`#!/usr/bin/python3 -IS`), with its module path
pointed at this work tree: a fresh interpreter per call, stdin /dev/null, cwd /,
a minimal environment plus HATCHWAY_CONFIG (the helper honours it for running
by hand against another config).  The helper logs every decision to syslog
with LOG_PERROR, so the same line arrives on stderr, which is what the tests
read (sshd itself throws that stderr away; the end-to-end suite reads
/var/log/auth.log instead).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "keyhelper" / "hatchway-keys"
PYTHON = "/usr/bin/python3"


def entry_point(directory: Path) -> Path:
    text = SCRIPT.read_text()
    assert text.count('"/usr/share/hatchway"') == 1, "the packaged entry point changed shape"
    out = directory / "hatchway-keys"
    out.write_text(text.replace('"/usr/share/hatchway"', repr(str(ROOT))))
    return out


def keygen(directory: Path, kind: str = "ed25519") -> tuple[str, str]:
    """A fresh key pair; returns (%t, %k) as sshd would pass them."""
    path = directory / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    kt, b64 = path.with_suffix(".pub").read_text().split()[:2]
    return kt, b64


def fingerprint(directory: Path, kind: str = "ed25519") -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(directory / f"id_{kind}.pub")],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]



def helper_env(directory: Path) -> dict:
    """A key pair and the packaged entry point in `directory`: what every test
    of the helper needs (dir, entry, type, key, fp)."""
    kt, b64 = keygen(directory)
    return {"dir": directory, "entry": entry_point(directory), "type": kt, "key": b64,
            "fp": fingerprint(directory)}

def write_config(directory: Path, url: str, webhook: dict | None = None,
                 cache: dict | None = None) -> Path:
    cache_dir = directory / "cache"
    cache_dir.mkdir(mode=0o700, exist_ok=True)
    cfg = {"auth": {"webhook": {"url": url, "timeout": "2s", **(webhook or {})},
                    "cache": {"dir": str(cache_dir), **(cache or {})}}}
    path = directory / "hatchway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Run:
    def __init__(self, p: subprocess.CompletedProcess, elapsed: float):
        self.returncode = p.returncode
        self.stdout = p.stdout
        self.stderr = p.stderr.decode(errors="replace")
        self.elapsed = elapsed
        lines = [ln for ln in self.stderr.splitlines() if "decision=" in ln]
        self.log_lines = lines
        self.log = parse_fields(lines[-1]) if lines else {}

    @property
    def reason(self) -> str:
        return self.log.get("reason", "")


def parse_fields(line: str) -> dict[str, str]:
    return {m.group(1): m.group(3) if m.group(3) is not None else m.group(2)
            for m in re.finditer(r'(\w+)=("([^"]*)"|\S+)', line)}


def run_keys(entry: Path, config: Path | str, *argv: str, timeout: float = 30,
             user: int | None = None, pyflags: tuple = ()) -> Run:
    # the helper's parsed copy of the config goes next to the config (a
    # directory of its own), never to the host's /var/cache/hatchway-keys
    state = Path(config).parent / "keys-state"
    if not state.exists():
        state.mkdir(mode=0o700)
        if user is not None:
            os.chown(state, user, user)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "HATCHWAY_CONFIG": str(config), "HATCHWAY_KEYS_DIR": str(state)}
    started = time.monotonic()
    p = subprocess.run([PYTHON, *pyflags, "-IS", str(entry), *argv], stdin=subprocess.DEVNULL,
                       capture_output=True, cwd="/", env=env, timeout=timeout,
                       user=user, group=user, extra_groups=[] if user is not None else None)
    return Run(p, time.monotonic() - started)


def assert_denied(r: Run, reason: str) -> None:
    """Refused the way sshd needs it: nothing on stdout, exit 0, and one log
    line naming the reason."""
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    assert "Traceback" not in r.stderr
    assert r.log.get("decision") == "deny", r.stderr
    assert reason in r.reason, r.stderr


def private_dir(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o700)
    return path
