"""`make bench`: Hatchway against its floors, measured side by side in one run.

Every Hatchway figure is printed next to the floor it cannot beat, measured in
the same run on the same machine, interleaved (A B A B …) so drift from other
load hits both:

  start latency   ssh alice true (Hatchway, session mode)
                  vs plain sshd to a host `true` (same sshd, user outside
                  hatchway-users), `docker run --rm` of the same image, and their sum
  throughput      200 MB out of / into a session vs `docker run -i` of the same
                  image with the same log driver (none) and init, plain sshd, and
                  both in one pipe (`docker run -i` + one ssh hop: the real floor
                  on a small machine, where ssh's crypto competes for the cores)
  concurrency     N open interactive sessions: hatchwayd's memory per session,
                  keystroke echo round trip, time to open them all; vs the same
                  with plain sshd host shells
  key check       see tests/bench/keys.py (run by this script when present)
  workspaces      `persistent`: ssh alice true into an existing workspace (an exec,
                  no container start) vs plain sshd to a host `true`;
                  `connection`: a second session over an OpenSSH ControlMaster
                  connection whose container exists vs plain sshd, a new
                  connection and a second session over a ControlMaster alike

Results are printed as one markdown table; nothing here asserts anything.
Run as root on a machine prepared like the tests (`make bench` does it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pexpect

from tests.e2e.stack import IMAGE, Stack

MB = 1 << 20


# ------------------------------------------------------------------ helpers

def timed(argv: list[str], shell: bool = False) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, shell=shell, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{argv} failed ({p.returncode}): {p.stderr[-500:]!r}")
    return elapsed


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def interleave(commands: dict[str, list[str] | str], n: int, warmup: int) -> dict[str, list[float]]:
    """Run each command n times in turn (A B C A B C …) after warm-up rounds."""
    out: dict[str, list[float]] = {k: [] for k in commands}
    for i in range(warmup + n):
        for name, cmd in commands.items():
            t = timed(cmd, shell=isinstance(cmd, str))
            if i >= warmup:
                out[name].append(t)
    return out


class Table:
    def __init__(self):
        self.rows: list[tuple] = []

    def add(self, metric: str, value: str, floor_name: str = "", floor: str = "",
            ratio: str = ""):
        self.rows.append((metric, value, floor_name, floor, ratio))

    def render(self) -> str:
        head = ("metric", "Hatchway", "floor", "floor value", "ratio")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def ms(v: float) -> str:
    return f"{v * 1000:.0f} ms"


def delta(v: float) -> str:
    return f"{'+' if v >= 0 else '−'}{ms(abs(v))}"


# ------------------------------------------------------------------ start latency

def start_latency(hw: Stack, table: Table, n: int, warmup: int) -> None:
    res = interleave({
        "hatchway": hw.ssh_argv("alice", "true"),
        "sshd": hw.ssh_argv("carol", "true"),
        "docker": ["docker", "run", "--rm", "--init", "--log-driver", "none", IMAGE, "true"],
    }, n, warmup)
    sums = [a + b for a, b in zip(res["sshd"], res["docker"])]
    h50, h95 = pct(res["hatchway"], .5), pct(res["hatchway"], .95)
    for floor, vals in (("plain sshd → host `true`", res["sshd"]),
                        ("`docker run --rm` true", res["docker"]),
                        ("sum of both", sums)):
        f50, f95 = pct(vals, .5), pct(vals, .95)
        table.add("start latency `ssh host true` (p50 / p95)", f"{ms(h50)} / {ms(h95)}",
                  floor, f"{ms(f50)} / {ms(f95)}", f"{h50 / f50:.2f}× / {h95 / f95:.2f}×")


# ------------------------------------------------------------------ workspaces

def persistent_latency(hw: Stack, table: Table, n: int, warmup: int) -> None:
    hw.reconfigure({"session": {"mode": "persistent"}})
    try:
        res = interleave({"hatchway": hw.ssh_argv("alice", "true"),
                          "sshd": hw.ssh_argv("carol", "true")}, n, max(warmup, 1))
    finally:
        subprocess.run(["hatchway", "workspaces", "rm", "alice"], capture_output=True)
        hw.reconfigure(None)
    h50, h95 = pct(res["hatchway"], .5), pct(res["hatchway"], .95)
    f50, f95 = pct(res["sshd"], .5), pct(res["sshd"], .95)
    table.add("persistent mode: start latency `ssh host true` into a workspace (p50 / p95)",
              f"{ms(h50)} / {ms(h95)}", "plain sshd → host `true`", f"{ms(f50)} / {ms(f95)}",
              f"{delta(h50 - f50)} (p50)")


class _Master:
    """An OpenSSH ControlMaster connection for `user`, with one session held
    open on it (so a connection-mode container exists while we measure)."""

    def __init__(self, hw: Stack, user: str):
        self.dir = tempfile.mkdtemp(prefix="hw-bench-")
        self.opts = ("-o", f"ControlPath={self.dir}/ctl")
        self.master = subprocess.Popen(hw.ssh_argv(user, options=(
            "-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N", *self.opts)),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.exists(f"{self.dir}/ctl"):
                break
            time.sleep(0.05)
        self.held = subprocess.Popen(self.argv(hw, user, "echo ready; exec sleep 100000"),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.held.stdout.readline()

    def argv(self, hw: Stack, user: str, command: str) -> list[str]:
        return hw.ssh_argv(user, command, options=("-o", "ControlMaster=no", *self.opts))

    def close(self) -> None:
        for p in (self.held, self.master):
            p.terminate()
            p.wait()


def connection_latency(hw: Stack, table: Table, n: int, warmup: int) -> None:
    hw.reconfigure({"session": {"mode": "connection"}})
    mine = plain = None
    try:
        mine, plain = _Master(hw, "alice"), _Master(hw, "carol")
        res = interleave({"hatchway": mine.argv(hw, "alice", "true"),
                          "sshd_mux": plain.argv(hw, "carol", "true"),
                          "sshd": hw.ssh_argv("carol", "true")}, n, max(warmup, 1))
    finally:
        for m in (mine, plain):
            if m is not None:
                m.close()
        hw.reconfigure(None)
        hw.wait_no_containers(timeout=60)
    h50, h95 = pct(res["hatchway"], .5), pct(res["hatchway"], .95)
    for name, floor in (("plain sshd → host `true` (new connection)", res["sshd"]),
                        ("plain sshd, second session over a ControlMaster", res["sshd_mux"])):
        f50, f95 = pct(floor, .5), pct(floor, .95)
        table.add("connection mode: a second session over a ControlMaster connection, "
                  "`true` (p50 / p95)", f"{ms(h50)} / {ms(h95)}", name,
                  f"{ms(f50)} / {ms(f95)}", f"{delta(h50 - f50)} (p50)")


# ------------------------------------------------------------------ throughput

def throughput(hw: Stack, table: Table, size_mb: int, n: int) -> None:
    size = size_mb * MB
    ssh_out = " ".join(hw.ssh_argv("alice", f"head -c {size} /dev/zero"))
    ssh_in = " ".join(hw.ssh_argv("alice", "wc -c"))
    plain_out = " ".join(hw.ssh_argv("carol", f"head -c {size} /dev/zero"))
    plain_in = " ".join(hw.ssh_argv("carol", "wc -c"))
    dk = f"docker run --rm -i --init --log-driver none {IMAGE}"
    check = f'test "$(cat)" -eq {size}'   # every byte arrived, counted on the far side
    res = interleave({
        "out": f"{ssh_out} | wc -c | sh -c '{check}'",
        "out_floor": f"{dk} head -c {size} /dev/zero | wc -c | sh -c '{check}'",
        "in": f"head -c {size} /dev/zero | {ssh_in} | sh -c '{check}'",
        "in_floor": f"head -c {size} /dev/zero | {dk} wc -c | sh -c '{check}'",
        "out_sshd": f"{plain_out} | wc -c | sh -c '{check}'",
        "in_sshd": f"head -c {size} /dev/zero | {plain_in} | sh -c '{check}'",
        # the floor that has everything Hatchway's path has: the bytes cross
        # `docker run -i` and one ssh hop (the same sshd, to a host command)
        "out_both": f"{dk} head -c {size} /dev/zero | {plain_in} | sh -c '{check}'",
        "in_both": f"{plain_out} | {dk} wc -c | sh -c '{check}'",
    }, n, 1)
    for way, label in (("out", f"{size_mb} MB out of a session"),
                       ("in", f"{size_mb} MB into a session")):
        h = size_mb / pct(res[way], .5)
        for floor, name in (("_floor", "`docker run -i`, same image and log driver"),
                            ("_sshd", "plain sshd to a host command"),
                            ("_both", "`docker run -i` piped through one ssh hop")):
            f = size_mb / pct(res[way + floor], .5)
            table.add(f"throughput, {label} (median)", f"{h:.0f} MB/s", name, f"{f:.0f} MB/s",
                      f"{h / f:.2f}×")


# ------------------------------------------------------------------ concurrency

def _open(hw: Stack, user: str, count: int, parallel: int = 8) -> tuple[list, float]:
    """Open `count` interactive sessions, at most `parallel` handshakes at a time
    (sshd's MaxStartups would drop more)."""
    sessions: list = [None] * count
    errors: list = []
    lock = threading.Semaphore(parallel)

    def one(i: int):
        with lock:
            try:
                c = hw.spawn(user)
                c.timeout = 120
                c.delaybeforesend = None     # pexpect sleeps 50 ms before each send by default
                c.expect(r"[#$] ")
                sessions[i] = c
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(f"{type(e).__name__}: {e}")

    t = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    if errors:
        raise RuntimeError(f"{len(errors)} of {count} sessions failed to open: {errors[0]}")
    return sessions, elapsed


def _echo_rtt(sessions: list, samples: int) -> list[float]:
    """Type one character into an open shell and time until its echo is back."""
    out = []
    for i in range(samples):
        c = sessions[i % len(sessions)]
        t = time.perf_counter()
        c.send("x")
        c.expect_exact("x")
        out.append(time.perf_counter() - t)
        c.send("\x15")      # ^U: erase the line again
        time.sleep(0.01)
    return out


def _close(sessions: list) -> None:
    for c in sessions:
        try:
            c.sendline("exit")
        except OSError:
            pass
    for c in sessions:
        try:
            c.expect(pexpect.EOF, timeout=60)
        except Exception:  # noqa: BLE001
            pass
        c.close(force=True)


def _pss_uss(pids: list[int]) -> tuple[int, int]:
    pss = uss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                k, _, v = line.partition(":")
                if k == "Pss":
                    pss += int(v.split()[0]) * 1024
                elif k in ("Private_Clean", "Private_Dirty"):
                    uss += int(v.split()[0]) * 1024
        except OSError:
            pass
    return pss, uss


def _session_pids(main_pid: int) -> list[int]:
    """hatchwayd's session processes: every hatchwayd process but the main one."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == main_pid:
            continue
        try:
            if b"/usr/sbin/hatchwayd" in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except OSError:
            pass
    return pids


def _sshd_pids(user: str) -> list[int]:
    """The two per-connection sshd processes of `user` (monitor + session)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(f"sshd: {user}".encode()):
            pids.append(int(d.name))
    return pids


def concurrency(hw: Stack, table: Table, counts: list[int], samples: int) -> None:
    main_pid = int(Path("/run/hatchway/hatchwayd.pid").read_text())
    for n in counts:
        mine, t_open = _open(hw, "alice", n)
        try:
            pids = _session_pids(main_pid)
            pss, uss = _pss_uss(pids)
            rtt = _echo_rtt(mine, samples)
            sshd_pss, sshd_uss = _pss_uss(_sshd_pids("alice"))
        finally:
            _close(mine)
        hw.wait_no_containers(timeout=120)
        plain, t_plain = _open(hw, "carol", n)
        try:
            rtt_plain = _echo_rtt(plain, samples)
        finally:
            _close(plain)

        table.add(f"N={n}: hatchwayd memory per session (PSS / USS; {len(pids)} processes)",
                  f"{pss / n / MB:.1f} / {uss / n / MB:.1f} MiB",
                  "sshd's own per-connection processes", f"{sshd_pss / n / MB:.1f} / "
                  f"{sshd_uss / n / MB:.1f} MiB", f"{pss / max(sshd_pss, 1):.2f}× (PSS)")
        r50, r99 = pct(rtt, .5), pct(rtt, .99)
        f50, f99 = pct(rtt_plain, .5), pct(rtt_plain, .99)
        table.add(f"N={n}: keystroke echo round trip (p50 / p99)",
                  f"{r50 * 1000:.1f} / {r99 * 1000:.1f} ms", "plain sshd host shell",
                  f"{f50 * 1000:.1f} / {f99 * 1000:.1f} ms", f"{r50 / f50:.2f}× (p50)")
        table.add(f"N={n}: time to open all sessions (8 at a time)", f"{t_open:.1f} s",
                  "plain sshd host shells", f"{t_plain:.1f} s", f"{t_open / t_plain:.2f}×")


# ------------------------------------------------------------------ main

def versions() -> str:
    def first(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    pkg = first(["dpkg-query", "-W", "-f=${Version}", "hatchway"])
    return (f"{datetime.date.today()} · {os.cpu_count()} cores · kernel {platform.release()} · "
            f"{first(['sshd', '-V'])} · docker {first(['docker', 'version', '-f', '{{.Server.Version}}'])}"
            f" · Python {platform.python_version()} · hatchway {pkg}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--throughput-runs", type=int, default=3)
    ap.add_argument("--sessions", default="10,50,200")
    ap.add_argument("--echo-samples", type=int, default=100)
    ap.add_argument("--only", default="start,keys,throughput,concurrency,persistent,"
                    "connection", help="comma-separated: start, keys, throughput, "
                    "concurrency, persistent, connection")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))

    table = Table()
    hw = Stack(Path(tempfile.mkdtemp(prefix="hatchway-bench-")))
    hw.base_config["log"] = {"level": "info"}     # debug lines cost time per session
    # up to 200 sessions of one user at once: over the default limits
    hw.base_config["limits"] = {"max_sessions": 0, "max_sessions_per_user": 0,
                                "max_starts_per_user": 0}
    hw.config = hw.base_config
    try:
        hw.start()
        if "start" in only:
            start_latency(hw, table, args.iterations, args.warmup)
            print("start latency done", file=sys.stderr)
        if "keys" in only and Path(__file__).with_name("keys.py").exists():
            from tests.bench import keys
            keys.measure(hw, table, args.iterations, args.warmup)
            print("key check done", file=sys.stderr)
        if "persistent" in only:
            persistent_latency(hw, table, args.iterations, args.warmup)
            print("persistent mode done", file=sys.stderr)
        if "connection" in only:
            connection_latency(hw, table, args.iterations, args.warmup)
            print("connection mode done", file=sys.stderr)
        if "throughput" in only:
            throughput(hw, table, args.size_mb, args.throughput_runs)
            print("throughput done", file=sys.stderr)
        if "concurrency" in only:
            concurrency(hw, table, [int(x) for x in args.sessions.split(",")],
                        args.echo_samples)
    finally:
        hw.stop()
    print(f"\n{versions()}\n")
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
