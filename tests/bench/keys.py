"""Per-call latency of the installed key helper, interpreter start included.

sshd runs /usr/lib/hatchway/hatchway-keys twice per login, so its whole run —
exec, Python start, imports, config, the webhook call or the cache — is what a
login pays.  Measured interleaved (A B C D A B C D …) so other load hits all:

  cold     cache off: every call asks the webhook (ContainerSSH's reference
           server on loopback, tests/e2e/webhook_servers.py)
  cached   cache on, the answer already cached: no webhook call
  floors   `/bin/true` as the AuthorizedKeysCommand (exec alone) and
           `python3 -IS -c pass` (the interpreter's own start)

Target from issue 3: p50 <= 40 ms.  Standalone: `python3 -m tests.bench.keys`;
`make bench` runs it too (tests/bench/run.py).  Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.e2e.webhook_servers import ContainerSSHServer

HELPER = "/usr/lib/hatchway/hatchway-keys"
TARGET_MS = 40.0


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _timed(argv: list[str], env: dict) -> tuple[float, bytes]:
    t = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, env=env, cwd="/")
    return time.perf_counter() - t, p.stdout


def _config(d: Path, url: str, ttl: str) -> Path:
    cache = d / f"cache-{ttl}"
    cache.mkdir(mode=0o700)
    path = d / f"hatchway-{ttl}.yaml"
    path.write_text(yaml.safe_dump({"auth": {"webhook": {"url": url},
                                             "cache": {"ttl": ttl, "dir": str(cache)}}}))
    return path


def run(n: int = 20, warmup: int = 3, helper: str = HELPER) -> dict[str, list[float]]:
    d = Path(tempfile.mkdtemp(prefix="hatchway-bench-keys-"))
    srv = ContainerSSHServer.reference()
    try:
        key = d / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        kt, b64 = key.with_suffix(".pub").read_text().split()[:2]
        argv = [helper, "foo", kt, b64]
        base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        cases = {
            "cold": (argv, dict(base, HATCHWAY_CONFIG=str(_config(d, srv.url, "0s")))),
            "cached": (argv, dict(base, HATCHWAY_CONFIG=str(_config(d, srv.url, "1h")))),
            "/bin/true": (["/bin/true", "foo", kt, b64], base),
            "python3 -IS -c pass": (["/usr/bin/python3", "-IS", "-c", "pass"], base),
        }
        out: dict[str, list[float]] = {k: [] for k in cases}
        for i in range(warmup + n):
            for name, (cmd, env) in cases.items():
                t, stdout = _timed(cmd, env)
                if name in ("cold", "cached") and not stdout.startswith(b"restrict,pty "):
                    raise RuntimeError(f"{name}: the helper did not say yes: {stdout!r}")
                if i >= warmup:
                    out[name].append(t)
        calls = srv.calls()
        # cold asks every time; cached only once, in the first warm-up round
        if calls != warmup + n + 1:
            raise RuntimeError(f"expected {warmup + n + 1} webhook calls, saw {calls}")
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
        table.add(f"key check `hatchway-keys`, {name} (p50 / p95; target p50 ≤ {TARGET_MS:.0f} ms)",
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
    print(f"{args.iterations} interleaved runs each, after {args.warmup} warm-up rounds; "
          f"{args.helper}\n")
    print("| command | p50 | p95 | min |")
    print("|---|---|---|---|")
    for name, vals in res.items():
        print(f"| {name} | {_ms(_pct(vals, .5))} | {_ms(_pct(vals, .95))} | {_ms(min(vals))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
