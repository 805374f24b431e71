"""`make soak`: sustained mixed load on the installed stack with faults
injected at random, then figures, and a non-zero exit if anything was lost or
left behind.  Not part of `make test`; bounded in sessions and in time.

What runs (real clients through Debian's sshd, on loopback):
  exec      ssh with random bytes on stdin, `sha256sum` in the container
  pty       ssh -tt, a shell driven with pexpect: resizes, `stty size`, exit
  sftp      put then get of a random file in one session
  scp       scp -O up and down through a bind-mounted /data
Faults, each session with probability --fault-rate (one at random): kill -9
of the ssh client, of its hatchway-shell, of its session process; and on a
timer: kill -9 of the daemon's main process (then started again, as systemd
would), the webhook stopped (SIGSTOP: slow, or down past the key helper's
deadline), dockerd restarted once (a dockerd of the soak's own, as the
engine-fault tests do: tests/e2e/engine.py).

Every session ends up in one of: ok (exit 0, bytes exact), refused or ended
with a clear line (stderr has a `hatchway: ...` line, or sshd refused the
key), killed (by an injected fault aimed at it), failed (anything else; must
be 0).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from tests.e2e import engine as engine_mod, tools_image
from tests.e2e.engine import Engine, daemon_pids, session_pids
from tests.e2e.stack import SSHD_PORT, Stack, memory_kb, run, token_pid, wait_for

DATA = Path("/srv/hatchway-soak")
KINDS = ("exec", "pty", "sftp", "scp")
# what a user may read when a fault takes the session away: a line of ours,
# or sshd refusing the key while the webhook is down
CLEAR = (b"hatchway: ", b"Permission denied (publickey")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clear_line(err: bytes) -> bool:
    return any(mark in line for line in err.replace(b"\r", b"\n").splitlines()
               for mark in CLEAR)


class Soak:
    def __init__(self, args, stack: Stack, engine: Engine, tmp: Path):
        self.a = args
        self.stack = stack
        self.engine = engine
        self.tmp = tmp
        self.users = [f"soak{i:02d}" for i in range(args.concurrency)]
        self.results: Counter = Counter()
        self.kinds: Counter = Counter()
        self.transfers = Counter()
        self.failures: list[str] = []
        self.faults: Counter = Counter()
        self.lock = threading.Lock()
        self.next = 0
        self.deadline = time.monotonic() + args.max_time
        self.stop = threading.Event()
        self.daemon_fds: dict[int, int] = {}
        self.struck: set[int] = set()      # client pids a fault was aimed at
        self.engine_window = (float("inf"), float("inf"))   # dockerd's restart

    # ------------------------------------------------------------ bookkeeping

    def take(self) -> int | None:
        with self.lock:
            if self.next >= self.a.sessions or time.monotonic() > self.deadline:
                return None
            self.next += 1
            return self.next

    def record(self, kind: str, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.results[outcome] += 1
            self.kinds[(kind, outcome)] += 1
            if outcome == "failed":
                self.failures.append(f"{kind}: {detail}"[:600])

    def transfer(self, exact: bool) -> None:
        with self.lock:
            self.transfers["exact" if exact else "corrupt"] += 1

    # ------------------------------------------------------------ faults

    def aim(self, rng: random.Random) -> str | None:
        if rng.random() >= self.a.fault_rate:
            return None
        return rng.choice(("client", "shell", "session"))

    def strike(self, target: str, user: str, client) -> bool:
        """kill -9 the chosen process of this user's one live session (each
        worker has a user of its own, so the user names the session)."""
        if target == "client":
            # through the Popen/pexpect object: never a pid already reaped
            alive = client.poll() is None if hasattr(client, "poll") else client.isalive()
            if not alive:
                return False
            client.kill(signal.SIGKILL) if not hasattr(client, "poll") else client.kill()
            with self.lock:
                self.faults["kill -9 client"] += 1
            return True
        if target == "shell":
            p = run(["pgrep", "-n", "-u", user, "-f", "hatchway-shell"], check=False)
            pid = int(p.stdout) if p.returncode == 0 else None
        else:
            try:
                found = self.engine.containers()
            except RuntimeError:
                return False        # dockerd is down (its restart): nothing to aim at
            mine = [c for c in found if f"io.hatchway.user={user}" in c["Labels"]]
            pid = None
            for c in mine:
                for kv in c["Labels"].split(","):
                    if kv.startswith("io.hatchway.process="):
                        pid = token_pid(kv.split("=", 1)[1])
            if pid and pid not in session_pids():
                pid = None
        if not pid:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        with self.lock:
            self.faults[f"kill -9 {target}"] += 1
        return True

    def chaos(self) -> None:
        """The faults on a timer, until the load is done."""
        rng = random.Random(self.a.seed + 1)
        restart_at = rng.uniform(0.3, 0.6)
        restarted = False
        while not self.stop.wait(rng.uniform(*self.a.fault_every)):
            done = self.next / self.a.sessions
            if not restarted and done >= restart_at:
                restarted = True
                t0 = time.monotonic()
                self.engine_window = (t0, float("inf"))
                self.engine.restart()
                self.engine_window = (t0, time.monotonic())
                self.faults["dockerd restart"] += 1
                continue
            what = rng.choice(("daemon", "webhook-slow", "webhook-down"))
            if what == "daemon":
                self.stack.stop_daemon(signal.SIGKILL)
                self.stack.start_daemon()
                self.note_daemon()
                self.faults["kill -9 hatchwayd main"] += 1
            else:
                hook = self.stack.procs["webhook"]
                hook.send_signal(signal.SIGSTOP)
                # slow: answers within the key helper's deadline; down: past it
                time.sleep(rng.uniform(0.5, 2) if what == "webhook-slow" else rng.uniform(6, 10))
                hook.send_signal(signal.SIGCONT)
                self.faults[what] += 1

    def daemon_pid(self) -> int:
        return self.stack.procs["daemon"].pid

    def note_daemon(self) -> None:
        pid = self.daemon_pid()
        self.daemon_fds[pid] = len(os.listdir(f"/proc/{pid}/fd"))

    # ------------------------------------------------------------ sessions

    def worker(self, user: str) -> None:
        rng = random.Random(f"{self.a.seed}-{user}")
        work = self.tmp / user
        work.mkdir()
        while (n := self.take()) is not None:
            kind = KINDS[n % len(KINDS)] if self.a.round_robin else rng.choice(KINDS)
            try:
                getattr(self, f"run_{kind}")(user, rng, work)
            except Exception as e:      # a bug of the soak is a failure too
                self.record(kind, "failed", f"{type(e).__name__}: {e}")

    def finish(self, kind: str, p: subprocess.Popen, struck: bool, ok: bool,
               err: bytes, detail: str, began: float = 0.0) -> None:
        if p.returncode == 0 and ok:
            self.record(kind, "ok")
        elif struck:
            self.record(kind, "killed")
        elif p.returncode != 0 and clear_line(err):
            self.record(kind, "clear")
        elif kind in ("sftp", "scp") and p.returncode != 0 \
                and began <= self.engine_window[1] and time.monotonic() >= self.engine_window[0]:
            # A transfer the dockerd restart ended (or refused) cannot show
            # our line: sshd drops a subsystem's stderr (sftp: "Connection
            # closed"), and scp -O quits on the data stream's end before the
            # line follows ("lost connection").  Counted apart, not as ok.
            self.record(kind, "engine")
        else:
            self.record(kind, "failed", f"exit {p.returncode} {detail} {err[-300:]!r}")

    def popen(self, argv, **kw) -> subprocess.Popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)

    def later(self, target, user, p, rng) -> threading.Timer | None:
        """The fault aimed at this session, a moment into it (if it still runs)."""
        if not target:
            return None
        t = threading.Timer(rng.uniform(0.3, 2.0), lambda: self.struck.add(p.pid)
                            if self.strike(target, user, p) else None)
        t.start()
        return t

    def settle(self, t, p) -> bool:
        """Whether a fault struck this session; none may come after it."""
        if t:
            t.cancel()
            t.join()
        return p.pid in self.struck

    def options(self, user: str) -> list[str]:
        """ssh_argv's options for scp and sftp: no port flag (theirs is -P),
        no -T, no destination."""
        argv = self.stack.ssh_argv(user)[1:-1]
        i = argv.index("-p")
        del argv[i:i + 2]
        return [a for a in argv if a != "-T"]

    def run_exec(self, user, rng, work):
        data = rng.randbytes(rng.randint(0, self.a.max_bytes))
        p = self.popen(self.stack.ssh_argv(user, "sha256sum; echo done >&2"),
                       stdin=subprocess.PIPE)
        t = self.later(self.aim(rng), user, p, rng)
        try:
            out, err = p.communicate(data, timeout=self.a.session_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        struck = self.settle(t, p)
        exact = out.split(b" ")[0].decode(errors="replace") == digest(data)
        if p.returncode == 0:
            self.transfer(exact)
        self.finish("exec", p, struck, exact and err == b"done\n", err,
                    f"stdin {len(data)} B")

    def run_pty(self, user, rng, work):
        import pexpect
        c = self.stack.spawn(user)
        c.timeout = self.a.session_timeout
        target = self.aim(rng)
        struck, ok, tail = False, False, b""
        try:
            c.expect(r"[#$] ")
            for i in range(rng.randint(1, 4)):
                rows, cols = rng.randint(10, 80), rng.randint(20, 250)
                c.setwinsize(rows, cols)
                # ssh sends the new size when its SIGWINCH handler has run,
                # which a command typed at once may overtake, and the resize
                # is an Engine API call that waits behind dockerd's other
                # work at twenty sessions at once: ask again, for ~8 s
                for attempt, pause in enumerate((0.3, 0.3, 0.5, 0.5, 1, 1, 2, 2)):
                    time.sleep(pause)
                    c.sendline(f"stty size; echo m{i}.{attempt}")
                    c.expect(rf"(\d+) (\d+)\r\nm{i}\.{attempt}")
                    if c.match.group(1, 2) == (b"%d" % rows, b"%d" % cols):
                        break
                else:
                    raise AssertionError(f"the size never became {rows} {cols}")
                if target and i == 0:
                    struck = self.strike(target, user, c)
                    if struck:
                        break
            c.sendline("exit 0")
            c.expect(pexpect.EOF)
            ok = True
        except (pexpect.EOF, pexpect.TIMEOUT):
            pass
        except AssertionError as e:
            tail = str(e).encode()
        tail += (c.before or b"") if isinstance(c.before, bytes) else b""
        c.close(force=True)
        code = c.exitstatus if c.exitstatus is not None else 255
        shim = subprocess.CompletedProcess([], code)
        self.finish("pty", shim, struck, ok and code == 0, tail, f"pty out {tail[-200:]!r}")

    def run_sftp(self, user, rng, work):
        src, back = work / "sftp.up", work / "sftp.back"
        data = rng.randbytes(rng.randint(0, self.a.max_bytes))
        src.write_bytes(data)
        back.unlink(missing_ok=True)
        batch = work / "batch"
        batch.write_text(f"put {src} /tmp/f\nget /tmp/f {back}\n")
        argv = ["sftp", "-P", str(SSHD_PORT), *self.options(user), "-b", str(batch),
                f"{user}@127.0.0.1"]
        began = time.monotonic()
        p = self.popen(argv, stdin=subprocess.DEVNULL)
        t = self.later(self.aim(rng), user, p, rng)
        try:
            _, err = p.communicate(timeout=self.a.session_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        struck = self.settle(t, p)
        exact = back.exists() and digest(back.read_bytes()) == digest(data)
        if p.returncode == 0:
            self.transfer(exact)
        self.finish("sftp", p, struck, exact, err, f"sftp {len(data)} B", began)

    def run_scp(self, user, rng, work):
        data = rng.randbytes(rng.randint(0, self.a.max_bytes))
        up = rng.random() < 0.5
        host_side = DATA / user / "f"
        local = work / "scp.f"
        local.unlink(missing_ok=True)
        host_side.unlink(missing_ok=True)
        (local if up else host_side).write_bytes(data)
        opts = self.options(user)
        remote = f"{user}@127.0.0.1:/data/f"
        # no -q: scp passes it on to ssh, which would then hide sshd's
        # refusal of the key while the webhook is down (a clear line)
        argv = ["scp", "-O", "-P", str(SSHD_PORT), *opts,
                *((str(local), remote) if up else (remote, str(local)))]
        began = time.monotonic()
        p = self.popen(argv, stdin=subprocess.DEVNULL)
        t = self.later(self.aim(rng), user, p, rng)
        try:
            _, err = p.communicate(timeout=self.a.session_timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        struck = self.settle(t, p)
        got = host_side if up else local
        exact = got.exists() and digest(got.read_bytes()) == digest(data)
        if p.returncode == 0:
            self.transfer(exact)
        self.finish("scp", p, struck, exact, err,
                    f"scp -O {'up' if up else 'down'} {len(data)} B", began)


# ------------------------------------------------------------------ leftovers

def records() -> list[str]:
    try:
        return os.listdir("/run/hatchway/sessions")
    except FileNotFoundError:
        return []


def user_processes(users) -> list[str]:
    out = []
    for u in users:
        p = run(["pgrep", "-a", "-u", u], check=False)
        out += [line for line in p.stdout.splitlines() if line.strip()]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make soak", description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--max-time", type=float, default=3600, help="seconds; then stop starting")
    ap.add_argument("--fault-rate", type=float, default=0.05,
                    help="share of sessions that get a kill -9 aimed at them")
    ap.add_argument("--fault-every", type=float, nargs=2, default=(20.0, 40.0),
                    help="seconds between daemon/webhook faults (min max)")
    ap.add_argument("--max-bytes", type=int, default=4 << 20)
    ap.add_argument("--session-timeout", type=float, default=300)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--round-robin", action="store_true", help="kinds in turn, not at random")
    a = ap.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/hatchwayd"):
        print("soak: needs root and the installed package (run `make soak`)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="hatchway-soak-"))
    stack = Stack(tmp)
    eng = Engine(tmp / "dockerd-soak.log")
    started = time.monotonic()
    try:
        stack.start()
        eng.start()
        os.environ["DOCKER_HOST"] = engine_mod.HOST     # tools_image drives `docker`
        image = tools_image.ensure()
        soak = Soak(a, stack, eng, tmp)
        # writable mounts must be nosuid (hatchway.yaml(5)): a bind of the
        # directory onto itself, remounted so, as tests/e2e/files does
        DATA.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", str(DATA), str(DATA)])
        run(["mount", "-o", "remount,bind,nosuid,nodev", str(DATA)])
        for u in soak.users:
            shutil.rmtree(DATA / u, ignore_errors=True)
            (DATA / u).mkdir(parents=True)
            stack.add_member(u)
        stack.reconfigure({
            "docker": {"host": engine_mod.HOST, "image": image, "network": "none",
                       "mounts": [f"{DATA}/{{user}}:/data"]},
            # orphans of a killed session process go at the next pass
            "daemon": {"reap_interval": "10s"},
            "log": {"level": "info"},
        })
        soak.note_daemon()
        first_pid = soak.daemon_pid()
        # the leftover count and the session-process fault rely on finding
        # the daemon's processes by their command line
        assert first_pid in daemon_pids(), "daemon_pids() does not see the daemon"
        mem_before = memory_kb(first_pid)
        print(f"soak: {a.sessions} sessions at concurrency {a.concurrency}, at most "
              f"{a.max_time:.0f}s, seed {a.seed}", flush=True)

        load_started = time.monotonic()
        chaos = threading.Thread(target=soak.chaos, daemon=True)
        chaos.start()
        workers = [threading.Thread(target=soak.worker, args=(u,)) for u in soak.users]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        soak.stop.set()
        chaos.join()
        load_took = time.monotonic() - load_started

        # leftovers, once everything had the time to end (the reaper included)
        if not eng.up():
            eng.start()
        pid = soak.daemon_pid()

        def quiet():
            return not eng.containers() and not session_pids() \
                and not user_processes(soak.users) and not records()
        try:
            wait_for(quiet, 90, 0.5, what="containers and session processes to be gone")
        except TimeoutError:
            pass
        containers = eng.containers()
        procs = sorted(session_pids())
        users = user_processes(soak.users)
        left_records = records()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        fd_leak = fds - soak.daemon_fds[pid]
        mem_after = memory_kb(pid)

        r, tr = soak.results, soak.transfers
        total = sum(r.values())
        print(f"\nsoak: {total} sessions in {load_took:.0f}s "
              f"({total / load_took:.1f}/s; seed {a.seed})")
        print(f"  ok                       {r['ok']}")
        print(f"  refused/ended, clear line {r['clear']}")
        print(f"  killed by an injected fault {r['killed']}")
        print(f"  sftp/scp ended by the dockerd restart, no line possible {r['engine']}")
        print(f"  failed otherwise         {r['failed']}")
        for kind in KINDS:
            row = {o: soak.kinds[(kind, o)] for o in ("ok", "clear", "killed", "engine", "failed")}
            print(f"    {kind:5} {row}")
        print(f"  transfers byte-exact     {tr['exact']} of {tr['exact'] + tr['corrupt']}")
        print(f"  faults injected          {dict(soak.faults)}")
        print(f"  containers left          {len(containers)}")
        print(f"  session processes left   {len(procs)} {procs or ''}")
        print(f"  user processes left      {len(users)} {users or ''}")
        print(f"  session records left     {len(left_records)}")
        print(f"  daemon fds               {soak.daemon_fds[pid]} at its start, {fds} after "
              f"(leaked {max(fd_leak, 0)})")
        same = "same process" if pid == first_pid else \
            f"pid {first_pid} -> {pid}: the main process was killed and restarted"
        print(f"  hatchwayd memory (kB)    before {mem_before}, after {mem_after} ({same})")
        for f in soak.failures[:20]:
            print(f"  FAILED {f}")
        bad = r["failed"] or tr["corrupt"] or containers or procs or users or left_records \
            or fd_leak > 0
        print(f"soak: {'FAIL' if bad else 'PASS'} in {time.monotonic() - started:.0f}s")
        return 1 if bad else 0
    finally:
        for u in [f"soak{i:02d}" for i in range(a.concurrency)]:
            run(["hatchway", "users", "remove", u, "--db", str(stack.db)], check=False)
        run(["umount", "-l", str(DATA)], check=False)
        shutil.rmtree(DATA, ignore_errors=True)
        eng.stop()
        stack.stop()
        if os.environ.get("HATCHWAY_KEEP_LOGS"):
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
