"""Per-call latency of the installed key helper, interpreter start included.

sshd runs /usr/lib/hatchway/hatchway-keys twice per login, so its whole run —
exec, Python start, imports, config, the webhook call or the cache — is what a
login pays.  Run as sshd runs it: as user hatchway-keys (when it exists and
this runs as root), stdin /dev/null, cwd /, a minimal environment, the cache
on, with the helper's private directories of its own.  Measured interleaved
(A B C D A B C D …) so other load hits all:

  cold     a key not seen before: the login's first call (the key query),
           which asks the webhook (ContainerSSH's reference server on loopback,
           tests/e2e/webhook_servers.py) and caches the yes
  cached   a key answered before: the login's second call (the signed attempt)
  floors   `/bin/true` as the AuthorizedKeysCommand (exec alone) and
           `python3 -IS -c pass` (the interpreter's own start)

Target from issue 3: p50 <= 40 ms.  Standalone: `python3 -m tests.bench.keys`;
`make bench` runs it too (tests/bench/run.py).  Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.e2e.webhook_servers import ContainerSSHServer

HELPER = "/usr/lib/hatchway/hatchway-keys"
RUN_AS = "hatchway-keys"
TARGET_MS = 40.0


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _timed(argv: list[str], env: dict, uid: int | None) -> tuple[float, bytes]:
    t = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, env=env, cwd="/", user=uid, group=uid,
                       extra_groups=[] if uid is not None else None)
    return time.perf_counter() - t, p.stdout


def _helper_user() -> int | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS).pw_uid
    except KeyError:
        return None


def _private(path: Path, uid: int | None) -> Path:
    path.mkdir(mode=0o700)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def run(n: int = 20, warmup: int = 3, helper: str = HELPER) -> dict[str, list[float]]:
    uid = _helper_user()
    d = Path(tempfile.mkdtemp(prefix="hatchway-bench-keys-"))
    os.chmod(d, 0o755)
    srv = ContainerSSHServer.reference()
    try:
        keys = []
        for i in range(warmup + n + 1):
            path = d / f"id{i}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                           check=True)
            keys.append(path.with_suffix(".pub").read_text().split()[:2])
        cfg = d / "hatchway.yaml"
        cfg.write_text(yaml.safe_dump({"auth": {
            "webhook": {"url": srv.url},
            "cache": {"ttl": "1h", "dir": str(_private(d / "cache", uid))}}}))
        os.chmod(cfg, 0o644)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "HATCHWAY_CONFIG": str(cfg), "HATCHWAY_KEYS_DIR": str(_private(d / "state", uid))}
        seen = keys.pop()
        _timed([helper, "foo", *seen], env, uid)             # now cached
        out: dict[str, list[float]] = {"cold": [], "cached": [], "/bin/true": [],
                                       "python3 -IS -c pass": []}
        for i in range(warmup + n):
            cases = {"cold": [helper, "foo", *keys[i]], "cached": [helper, "foo", *seen],
                     "/bin/true": ["/bin/true", "foo", *seen],
                     "python3 -IS -c pass": ["/usr/bin/python3", "-IS", "-c", "pass"]}
            for name, cmd in cases.items():
                t, stdout = _timed(cmd, env, uid)
                if name in ("cold", "cached") and not stdout.startswith(b"restrict,pty "):
                    raise RuntimeError(f"{name}: the helper did not say yes: {stdout!r}")
                if i >= warmup:
                    out[name].append(t)
        # every cold call asked the webhook, no cached one did
        if srv.calls() != warmup + n + 1:
            raise RuntimeError(f"expected {warmup + n + 1} webhook calls, saw {srv.calls()}")
        return out
    finally:
        srv.close()
        shutil.rmtree(d, ignore_errors=True)


def _ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def measure(hw, table, n: int = 20, warmup: int = 3) -> None:
    """For tests/bench/run.py: rows in its table (hw unused: no sshd needed)."""
    res = run(n, warmup)
    f50, f95 = _pct(res["/bin/true"], .5), _pct(res["/bin/true"], .95)
    for name in ("cold", "cached"):
        h50, h95 = _pct(res[name], .5), _pct(res[name], .95)
        table.add(f"key check `hatchway-keys`, {name} (p50 / p95; target p50 ≤ "
                  f"{TARGET_MS:.0f} ms)",
                  f"{_ms(h50)} / {_ms(h95)}", "`/bin/true` as the command",
                  f"{_ms(f50)} / {_ms(f95)}", f"+{_ms(h50 - f50)} (p50)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--helper", default=HELPER)
    args = ap.parse_args(argv)
    if not os.access(args.helper, os.X_OK):
        print(f"{args.helper} is not installed (make install)", file=sys.stderr)
        return 2
    res = run(args.iterations, args.warmup, args.helper)
    who = RUN_AS if _helper_user() is not None else f"uid {os.geteuid()}"
    print(f"{args.iterations} interleaved runs each, after {args.warmup} warm-up rounds; "
          f"{args.helper} as {who}\n")
    print("| command | p50 | p95 | min |")
    print("|---|---|---|---|")
    for name, vals in res.items():
        print(f"| {name} | {_ms(_pct(vals, .5))} | {_ms(_pct(vals, .95))} | {_ms(min(vals))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
