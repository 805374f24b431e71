"""`make bench`: Hatchway against its floors, measured side by side in one run.

Every Hatchway figure is printed next to the floor it cannot beat, measured in
the same run on the same machine, interleaved (A B A B …) so drift from other
load hits both.  "sshd → docker run" floors go through a second sshd the
bench starts for root (tests/bench/floors.py): the same path as Hatchway's,
without Hatchway.

  start        ssh alice true (Hatchway, session mode)
               vs plain sshd to a host `true` (same sshd, user outside
               hatchway-users), `docker run --rm` of the same image, their
               sum, and one sshd login that runs that `docker run --rm`
  pool         the same start latency with docker.warm_pool: 2 (each login
               claims a spare; the pool is refilled before the next round,
               untimed), against the same floors; and what the idle spares
               cost: their cgroup memory and the keeper process's PSS
  throughput   200 MB out of / into a session vs `docker run -i` of the same
               image with the same log driver (none) and init, plain sshd,
               both in one pipe (`docker run -i` + one ssh hop), and sshd
               running `docker run -i`
  concurrency  N interactive sessions opened 8 at a time: hatchwayd's memory
               per session, keystroke echo round trip, time to open them all;
               vs plain sshd host shells, sshd → `docker run -it … sh`, and
               (time to open only) `docker run -d -i` alone: dockerd's share
  pscp         100 MB upload with PuTTY's `pscp -sftp` into a session vs
               plain sshd → host sftp-server and sshd → `docker run -i …
               sftp-server` (a run is stopped after --pscp-limit seconds)
  keys         see tests/bench/keys.py (run by this script when present)
  k8s          opt-in (`--only k8s`, brings up the test cluster): see
               tests/bench/k8s.py
  persistent,  `persistent`: ssh alice true into an existing workspace (an exec,
               no container start) vs plain sshd to a host `true`;
               `connection`: a second session over an OpenSSH ControlMaster
               connection whose container exists vs plain sshd, a new
               connection and a second session over a ControlMaster alike

Sizes and counts are options (see --help), so a quick run is possible, e.g.
  make bench BENCH_ARGS="--only start,throughput --iterations 5 --size-mb 50"
Results are printed as one markdown table; nothing here asserts anything.
Run as root on a machine prepared like the tests (`make bench` does it).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pexpect

from tests.bench import floors
from tests.bench.floors import FloorSshd
from tests.e2e.stack import IMAGE, SSHD_PORT, Stack, token_pid, wait_for

MB = 1 << 20


# ------------------------------------------------------------------ helpers

def timed(argv, shell: bool = False) -> float:
    """Wall time of one command (argv, or a shell line), or of one call."""
    t = time.perf_counter()
    if callable(argv):
        argv()
        return time.perf_counter() - t
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


def interleave(commands: dict, n: int, warmup: int) -> dict[str, list[float]]:
    """Run each command (argv, shell line or callable) n times in turn
    (A B C A B C …) after warm-up rounds."""
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

def start_latency(hw: Stack, floor: FloorSshd, table: Table, n: int, warmup: int) -> None:
    res = interleave({
        "hatchway": hw.ssh_argv("alice", "true"),
        "sshd": hw.ssh_argv("carol", "true"),
        "docker": floors.docker_run(IMAGE, "true", interactive=False),
        # the whole path without Hatchway: one login that runs `docker run`
        "sshd_docker": floor.argv(shlex.join(floors.docker_run(IMAGE, "true",
                                                               interactive=False))),
    }, n, warmup)
    sums = [a + b for a, b in zip(res["sshd"], res["docker"])]
    h50, h95 = pct(res["hatchway"], .5), pct(res["hatchway"], .95)
    for name, vals in (("plain sshd → host `true`", res["sshd"]),
                       ("`docker run --rm` true", res["docker"]),
                       ("sum of both", sums),
                       ("sshd login running `docker run --rm … true`", res["sshd_docker"])):
        f50, f95 = pct(vals, .5), pct(vals, .95)
        table.add("start latency `ssh host true` (p50 / p95)", f"{ms(h50)} / {ms(h95)}",
                  name, f"{ms(f50)} / {ms(f95)}", f"{h50 / f50:.2f}× / {h95 / f95:.2f}×")


# ------------------------------------------------------------------ warm pool

def _spares(hw: Stack) -> list[dict]:
    """The pool's unclaimed spares (a claimed one is renamed to its session's name)."""
    return [c for c in hw.containers() if "io.hatchway.pool=" in c["Labels"]
            and c["Names"].startswith("hatchway-pool-") and c["State"] == "running"]


def _pool_full(hw: Stack, size: int) -> list[dict]:
    """Wait until `size` spares run and nothing else of Hatchway's does (the
    last session's container is removed): the keeper is idle again."""
    def full():
        every, spare = hw.containers(), _spares(hw)
        return spare if len(spare) == size and len(every) == size else None
    return wait_for(full, 60, 0.05, what=f"a full warm pool of {size}")


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "kB": 1000, "MB": 10 ** 6,
          "GB": 10 ** 9}


def _memory(ids: list[str]) -> int:
    """The containers' memory as dockerd accounts it (cgroup usage without the
    page cache): `docker stats`' MemUsage, e.g. "1.2MiB / 7.7GiB"."""
    out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", *ids],
                         capture_output=True, text=True, check=True).stdout
    total = 0
    for line in out.splitlines():
        used = line.split("/")[0].strip()
        num = used.rstrip("BKiMGk")
        total += int(float(num) * _UNITS[used[len(num):]])
    return total


def pool_latency(hw: Stack, floor: FloorSshd, table: Table, n: int, warmup: int,
                 size: int = 2) -> None:
    hw.reconfigure({"docker": {"warm_pool": size}})
    try:
        commands = {
            "sshd": hw.ssh_argv("carol", "true"),
            "docker": floors.docker_run(IMAGE, "true", interactive=False),
            "sshd_docker": floor.argv(shlex.join(floors.docker_run(IMAGE, "true",
                                                                   interactive=False))),
        }
        res: dict[str, list[float]] = {"hatchway": [], **{k: [] for k in commands}}
        hits = 0
        for i in range(warmup + n):
            # a full pool before each login, and again before the floors: the
            # keeper's refill (a container start) runs untimed, competing with
            # nothing measured
            before = {c["ID"] for c in _pool_full(hw, size)}
            t = timed(hw.ssh_argv("alice", "true"))
            # a login that claimed a spare renamed it before its command ran
            hit = not before <= {c["ID"] for c in _spares(hw)}
            _pool_full(hw, size)
            if i >= warmup:
                res["hatchway"].append(t)
                hits += hit
            for name, cmd in commands.items():
                t = timed(cmd)
                if i >= warmup:
                    res[name].append(t)
        spares = _pool_full(hw, size)
        mem = _memory([c["ID"] for c in spares])
        keeper = token_pid(spares[0]["Labels"].split("io.hatchway.process=")[1]
                                  .split(",")[0])
        keeper_pss, _ = _pss_uss([keeper])
    finally:
        hw.reconfigure(None)
        hw.wait_no_containers(timeout=60)
    print(f"idle spares: {len(spares)}, memory {mem / MB:.1f} MiB "
          f"(keeper process PSS {keeper_pss / MB:.1f} MiB); a spare was used in {hits} of "
          f"{n} logins", file=sys.stderr)
    h50, h95 = pct(res["hatchway"], .5), pct(res["hatchway"], .95)
    metric = (f"start latency `ssh host true`, warm pool of {size} "
              f"(spare used {hits}/{n}; p50 / p95)")
    for name, vals in (("plain sshd → host `true`", res["sshd"]),
                       ("`docker run --rm` true", res["docker"]),
                       ("sum of both", [a + b for a, b in zip(res["sshd"], res["docker"])]),
                       ("sshd login running `docker run --rm … true`", res["sshd_docker"])):
        f50, f95 = pct(vals, .5), pct(vals, .95)
        table.add(metric, f"{ms(h50)} / {ms(h95)}", name, f"{ms(f50)} / {ms(f95)}",
                  f"{h50 / f50:.2f}× / {h95 / f95:.2f}×")
    table.add(f"warm pool of {size}: what the idle spares cost",
              f"idle spares: {len(spares)}, memory {mem / MB:.1f} MiB",
              "the keeper process (hwd-pool), PSS", f"{keeper_pss / MB:.1f} MiB")


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

def throughput(hw: Stack, floor: FloorSshd, table: Table, size_mb: int, n: int) -> None:
    size = size_mb * MB
    ssh_out = shlex.join(hw.ssh_argv("alice", f"head -c {size} /dev/zero"))
    ssh_in = shlex.join(hw.ssh_argv("alice", "wc -c"))
    plain_out = shlex.join(hw.ssh_argv("carol", f"head -c {size} /dev/zero"))
    plain_in = shlex.join(hw.ssh_argv("carol", "wc -c"))
    dk = shlex.join(floors.docker_run(IMAGE))
    floor_out = shlex.join(floor.argv(f"{dk} head -c {size} /dev/zero"))
    floor_in = shlex.join(floor.argv(f"{dk} wc -c"))
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
        # the same path as Hatchway's, in one piece: sshd runs `docker run -i`
        "out_sshd_docker": f"{floor_out} | wc -c | sh -c '{check}'",
        "in_sshd_docker": f"head -c {size} /dev/zero | {floor_in} | sh -c '{check}'",
    }, n, 1)
    for way, label in (("out", f"{size_mb} MB out of a session"),
                       ("in", f"{size_mb} MB into a session")):
        h = size_mb / pct(res[way], .5)
        for suffix, name in (("_floor", "`docker run -i`, same image and log driver"),
                             ("_sshd", "plain sshd to a host command"),
                             ("_both", "`docker run -i` piped through one ssh hop"),
                             ("_sshd_docker", "sshd login running `docker run -i`")):
            f = size_mb / pct(res[way + suffix], .5)
            table.add(f"throughput, {label} (median)", f"{h:.0f} MB/s", name, f"{f:.0f} MB/s",
                      f"{h / f:.2f}×")


# ------------------------------------------------------------------ concurrency

def _open(spawn, count: int, parallel: int = 8) -> tuple[list, float]:
    """Open `count` interactive sessions (`spawn()` starts one), at most
    `parallel` handshakes at a time (sshd's MaxStartups would drop more)."""
    sessions: list = [None] * count
    errors: list = []
    lock = threading.Semaphore(parallel)

    def one(i: int):
        with lock:
            try:
                c = spawn()
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


def _detached(count: int, parallel: int = 8) -> float:
    """dockerd's own share: `count` containers started with `docker run -d -i`
    (no ssh, no terminal, no attach), `parallel` at a time; removed afterwards
    (not timed)."""
    ids: list[str] = []
    errors: list[str] = []
    gate = threading.Semaphore(parallel)
    argv = floors.docker_run("-d", IMAGE, "sh")

    def one():
        with gate:
            p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            (ids if p.returncode == 0 else errors).append(p.stdout.strip() or p.stderr.strip())

    t = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    for i in range(0, len(ids), 50):
        subprocess.run(["docker", "rm", "-f", *ids[i:i + 50]], capture_output=True)
    if errors:
        raise RuntimeError(f"{len(errors)} of {count} `docker run -d` failed: {errors[0]}")
    return elapsed


def concurrency(hw: Stack, floor: FloorSshd, table: Table, counts: list[int],
                samples: int) -> None:
    main_pid = int(Path("/run/hatchway/hatchwayd.pid").read_text())
    floor_cmd = shlex.join(floors.docker_run(IMAGE, "sh", tty=True))
    for n in counts:
        mine, t_open = _open(lambda: hw.spawn("alice"), n)
        try:
            pids = _session_pids(main_pid)
            pss, uss = _pss_uss(pids)
            rtt = _echo_rtt(mine, samples)
            sshd_pss, sshd_uss = _pss_uss(_sshd_pids("alice"))
        finally:
            _close(mine)
        hw.wait_no_containers(timeout=120)
        plain, t_plain = _open(lambda: hw.spawn("carol"), n)
        try:
            rtt_plain = _echo_rtt(plain, samples)
        finally:
            _close(plain)
        # the same sessions without Hatchway: sshd runs `docker run -it … sh`
        dk, t_dk = _open(lambda: floor.spawn(floor_cmd), n)
        try:
            rtt_dk = _echo_rtt(dk, samples)
        finally:
            _close(dk)
        floors.wait_gone()
        t_detached = _detached(n)

        table.add(f"N={n}: hatchwayd memory per session (PSS / USS; {len(pids)} processes)",
                  f"{pss / n / MB:.1f} / {uss / n / MB:.1f} MiB",
                  "sshd's own per-connection processes", f"{sshd_pss / n / MB:.1f} / "
                  f"{sshd_uss / n / MB:.1f} MiB", f"{pss / max(sshd_pss, 1):.2f}× (PSS)")
        r50, r99 = pct(rtt, .5), pct(rtt, .99)
        for name, vals in (("plain sshd host shell", rtt_plain),
                           ("sshd → `docker run -it … sh`", rtt_dk)):
            f50, f99 = pct(vals, .5), pct(vals, .99)
            table.add(f"N={n}: keystroke echo round trip (p50 / p99)",
                      f"{r50 * 1000:.2f} / {r99 * 1000:.2f} ms", name,
                      f"{f50 * 1000:.2f} / {f99 * 1000:.2f} ms", f"{r50 / f50:.2f}× (p50)")
        for name, t in (("plain sshd host shells", t_plain),
                        ("sshd → `docker run -it … sh`", t_dk),
                        ("`docker run -d -i` alone (dockerd's share, no ssh)", t_detached)):
            table.add(f"N={n}: time to open all sessions (8 at a time)", f"{t_open:.1f} s",
                      name, f"{t:.1f} s", f"{t_open / t:.2f}×")


# ------------------------------------------------------------------ PuTTY pscp -sftp

PSCP_DATA = Path("/srv/hatchway-bench-files")


def pscp_config() -> dict:
    """Sessions in the tools image (it has an sftp server), each user's
    PSCP_DATA directory at /data."""
    from tests.e2e import tools_image
    return {"docker": {"image": tools_image.ensure(),
                       "mounts": [f"{PSCP_DATA}/{{user}}:/data"]}}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pscp_upload(hw: Stack, table: Table, size_mb: int, n: int, limit: float) -> None:
    """`pscp -sftp` of one file of random bytes: into a session's /data, to a
    host directory over plain sshd, and over the floor's sshd whose sftp
    subsystem is `docker run -i … sftp-server` (see floors.py).  A run that
    takes longer than `limit` is stopped and counted as such (the floor may
    never finish: OpenSSH's sftp-server goes quadratic when PuTTY's requests
    pile up, README); a kind that timed out is not run again."""
    tmp = hw.tmp / "pscp"
    tmp.mkdir()
    (tmp / "home").mkdir()              # PuTTY writes its random seed to $HOME
    src = tmp / "up.bin"
    with open(src, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MB))
    digest = _sha256(src)
    fp = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f",
                         str(hw.tmp / "ssh_host_ed25519_key.pub")],
                        capture_output=True, text=True, check=True).stdout.split()[1]
    shutil.rmtree(PSCP_DATA, ignore_errors=True)
    for user in ("alice", "carol", floors.USER):
        (PSCP_DATA / user).mkdir(parents=True)
    shutil.chown(PSCP_DATA / "carol", "carol", "carol")
    # A writable bind mount must be on a nosuid file system (hatchway.yaml(5)),
    # or the daemon refuses the session: as tests/e2e/files/conftest.py does.
    subprocess.run(["mount", "--bind", str(PSCP_DATA), str(PSCP_DATA)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,nosuid,nodev", str(PSCP_DATA)], check=True)

    def ppk(user: str) -> str:
        out = tmp / f"{user}.ppk"
        subprocess.run(["puttygen", str(hw.keys[user]), "-O", "private", "-o", str(out)],
                       check=True, capture_output=True)
        return str(out)

    def argv(user: str, port: int, dest: str) -> list[str]:
        return ["pscp", "-q", "-sftp", "-batch", "-P", str(port), "-i", ppk(user),
                "-hostkey", fp, str(src), f"{user}@127.0.0.1:{dest}"]

    kinds = {   # name: (argv, where the file lands on the host)
        "hatchway": (argv("alice", SSHD_PORT, "/data/up.bin"), PSCP_DATA / "alice/up.bin"),
        "sshd": (argv("carol", SSHD_PORT, str(PSCP_DATA / "carol/up.bin")),
                 PSCP_DATA / "carol/up.bin"),
        "sshd_docker": (argv(floors.USER, floors.PORT, "/data/up.bin"),
                        PSCP_DATA / floors.USER / "up.bin"),
    }
    env = dict(os.environ, HOME=str(tmp / "home"))
    times: dict[str, list[float]] = {k: [] for k in kinds}
    timed_out: dict[str, int] = {k: 0 for k in kinds}
    hw.reconfigure(pscp_config())
    try:
        for _ in range(n):
            for name, (cmd, dest) in kinds.items():
                if timed_out[name]:
                    continue
                t = time.perf_counter()
                try:
                    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                                       capture_output=True, timeout=limit)
                except subprocess.TimeoutExpired:
                    timed_out[name] += 1
                    floors.remove_leftovers()   # a floor sftp-server still chewing
                    continue
                elapsed = time.perf_counter() - t
                if p.returncode != 0 or _sha256(dest) != digest:
                    raise RuntimeError(f"pscp ({name}) failed ({p.returncode}): "
                                       f"{p.stderr[-500:]!r}")
                times[name].append(elapsed)
                dest.unlink()
    finally:
        hw.reconfigure(None)
        subprocess.run(["umount", "-l", str(PSCP_DATA)], check=False)
        shutil.rmtree(PSCP_DATA, ignore_errors=True)

    def show(name: str) -> str:
        done = times[name]
        if not done:
            return f"> {limit:.0f} s (stopped)"
        extra = f", {timed_out[name]} run(s) stopped at {limit:.0f} s" if timed_out[name] else ""
        return f"{pct(done, .5):.1f} s{extra}"

    for floor, name in (("sshd", "plain sshd → host sftp-server"),
                        ("sshd_docker", "sshd → `docker run -i … sftp-server`")):
        h, f = times["hatchway"], times[floor]
        ratio = (f"{pct(h, .5) / pct(f, .5):.2f}×" if h and f else
                 f"< {pct(h, .5) / limit:.2f}×" if h else "—")
        table.add(f"{size_mb} MB upload, PuTTY `pscp -sftp` (median of {n})", show("hatchway"),
                  name, show(floor), ratio)


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


ALL = ("start", "pool", "keys", "throughput", "concurrency", "pscp", "persistent", "connection")
OPT_IN = ("k8s",)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--throughput-runs", type=int, default=3)
    ap.add_argument("--sessions", default="10,50,200")
    ap.add_argument("--echo-samples", type=int, default=100)
    ap.add_argument("--pscp-mb", type=int, default=100)
    ap.add_argument("--pscp-runs", type=int, default=3)
    ap.add_argument("--pscp-limit", type=float, default=60,
                    help="seconds after which one pscp run is stopped")
    ap.add_argument("--k8s-size-mb", type=int, default=50,
                    help="throughput size on Kubernetes (its relay is slower: keep runs short)")
    ap.add_argument("--only", default=",".join(ALL),
                    help=f"comma-separated, of {', '.join(ALL + OPT_IN)} "
                         f"(default all but {', '.join(OPT_IN)})")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(ALL + OPT_IN):
        ap.error(f"--only: unknown {', '.join(sorted(only - set(ALL + OPT_IN)))}")

    table = Table()
    started, load_before = time.monotonic(), os.getloadavg()
    hw = Stack(Path(tempfile.mkdtemp(prefix="hatchway-bench-")))
    hw.base_config["log"] = {"level": "info"}     # debug lines cost time per session
    # up to 200 sessions of one user at once: over the default limits
    hw.base_config["limits"] = {"max_sessions": 0, "max_sessions_per_user": 0,
                                "max_starts_per_user": 0}
    hw.config = hw.base_config
    sftp = {}
    if "pscp" in only:
        sftp = {"sftp_image": pscp_config()["docker"]["image"],
                "sftp_data": PSCP_DATA / floors.USER}
    floor = FloorSshd(hw, **sftp)
    failed: list[str] = []

    def section(name: str, fn, *a, **kw) -> None:
        """One group of rows; a failure is reported and the others still run."""
        if name not in only:
            return
        try:
            fn(*a, **kw)
            print(f"{name} done", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 (printed with the table)
            failed.append(f"{name}: {type(e).__name__}: {e}")
            print(f"{name} FAILED: {e}", file=sys.stderr)

    def k8s_rows() -> None:
        from tests.bench import k8s
        k8s.measure(hw, table, size_mb=args.k8s_size_mb, runs=args.throughput_runs,
                    n=args.iterations, warmup=args.warmup)

    def keys_rows() -> None:
        from tests.bench import keys
        keys.measure(hw, table, args.iterations, args.warmup)

    # a bench killed outright (SIGKILL, a lost terminal) cleans nothing: what
    # its floors left would crowd dockerd (177 containers once wedged its removals)
    floors.remove_leftovers()
    try:
        hw.start()
        floor.start()
        section("start", start_latency, hw, floor, table, args.iterations, args.warmup)
        section("pool", pool_latency, hw, floor, table, args.iterations, args.warmup)
        section("keys", keys_rows)
        section("persistent", persistent_latency, hw, table, args.iterations, args.warmup)
        section("connection", connection_latency, hw, table, args.iterations, args.warmup)
        section("throughput", throughput, hw, floor, table, args.size_mb, args.throughput_runs)
        section("concurrency", concurrency, hw, floor, table,
                [int(x) for x in args.sessions.split(",")], args.echo_samples)
        section("pscp", pscp_upload, hw, table, args.pscp_mb, args.pscp_runs, args.pscp_limit)
        section("k8s", k8s_rows)
    finally:
        floor.stop()
        hw.stop()
        floors.remove_leftovers()
    # the machine may be shared: say how busy it was (1-minute load averages)
    print(f"\n{versions()} · load average {load_before[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end · {(time.monotonic() - started) / 60:.0f} min\n")
    print(table.render())
    for f in failed:
        print(f"\nnot measured: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
