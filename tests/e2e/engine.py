"""A Docker engine of the engine-fault tests' own, to stop and restart at will.

The machine's dockerd also serves what does not hold the e2e lock (other work
trees' contract and packaging tests), so the tests that make dockerd fail run
a second one: its own socket, data root, exec root, containerd namespace and
bridge, and no iptables rules, so it touches nothing of the first.  (Not
`--bridge=none`: with it dockerd deletes the interface docker0 at start,
which is the machine's dockerd's.)  Its data
root persists (/var/lib/hatchway-e2e-docker), so the demo image is built into
it once per machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from .stack import HOST_ID, ROOT, run, wait_for

SOCK = "/run/hatchway-e2e-docker.sock"
HOST = f"unix://{SOCK}"
DATA = Path("/var/lib/hatchway-e2e-docker")
EXEC = Path("/run/hatchway-e2e-docker")
PIDFILE = EXEC / "dockerd.pid"
BRIDGE, BRIDGE_ADDR = "hwfault0", "172.30.77.1/24"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Engine:
    def __init__(self, log: Path):
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ, DOCKER_HOST=HOST)

    def docker(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(["docker", *argv], check=check, env=self.env, **kw)

    def up(self) -> bool:
        return subprocess.run(["docker", "version"], env=self.env, capture_output=True,
                              timeout=30).returncode == 0

    def start(self) -> None:
        self._stop_stale()
        EXEC.mkdir(parents=True, exist_ok=True)
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            run(["ip", "addr", "add", BRIDGE_ADDR, "dev", BRIDGE])
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(DATA), "--exec-root", str(EXEC),
             "--pidfile", str(PIDFILE), "-H", HOST, "--group", "docker",
             "--bridge", BRIDGE, "--iptables=false", "--ip6tables=false", "--ip-masq=false",
             "--containerd-namespace", "hatchway-e2e",
             "--containerd-plugins-namespace", "hatchway-e2e-plugins"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        wait_for(self.up, 60, 0.2, what="the tests' own dockerd")

    def stop(self) -> None:
        """As an admin's `systemctl stop docker`: SIGTERM, and dockerd stops
        every container before it exits."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP / SIGCONT: an engine that accepts connections and never answers."""
        os.kill(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def _stop_stale(self) -> None:
        """One left running by an interrupted run (it would hold the pidfile)."""
        try:
            pid = int(PIDFILE.read_text())
        except (OSError, ValueError):
            return
        try:
            if "dockerd" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                return
        except OSError:
            return
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not _alive(pid), 90, 0.2, what=f"stale dockerd {pid} to stop")

    def ensure_demo_image(self, image: str) -> None:
        if self.docker("image", "inspect", image, check=False).returncode != 0:
            run([str(ROOT / "packaging/demo-image/build"), image], env=self.env)

    def containers(self) -> list[dict]:
        """Session containers of this machine in this engine, running or not."""
        out = self.docker("ps", "-a", "--no-trunc", "--format", "{{json .}}",
                          "--filter", "label=io.hatchway.managed=true",
                          "--filter", f"label=io.hatchway.host={HOST_ID}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_no_containers(self, timeout: float) -> None:
        wait_for(lambda: not self.containers(), timeout, 0.2,
                 what="session containers in the tests' own dockerd to be removed")


def daemon_pids() -> set[int]:
    """Every hatchwayd process: the main one, the metrics one, one per session,
    a reaper while it runs."""
    return set(_daemon_processes())


DAEMON = b"/usr/sbin/hatchwayd"      # the installed package's, which the stack runs


def _daemon_processes() -> dict[int, tuple[str, int]]:
    """The installed hatchwayd's processes on this host: their names (comm:
    hatchwayd for the main one, hwd-metrics, hwd-session and hwd-reaper for
    its children) and parents.

    Other test runs share the machine: the package tests boot containers
    whose hatchwayd is /usr/sbin/hatchwayd too, but in a pid namespace of
    their own (one such run's session process once failed a fault test here),
    and unit tests run work trees' shim/hatchwayd.  Neither is counted.
    """
    mine = os.readlink("/proc/self/ns/pid")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if DAEMON not in argv[:3] or os.readlink(entry / "ns/pid") != mine:
                continue
            comm = (entry / "comm").read_text().strip()
            # field 4 of stat, after the parenthesised comm (which may hold spaces)
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            found[int(entry.name)] = (comm, ppid)
        except (OSError, ValueError, IndexError):
            continue
        # (argv is [python3, -I, /usr/sbin/hatchwayd, ...]: the shebang's
        # interpreter and its option come first; looking only at the first
        # two once found nothing, and every comparison of these sets passed)
    return found


def daemon_own() -> set[int]:
    """The daemon's main process: the one whose parent is not a hatchwayd.

    Not its children, which come and go on their own schedule: sessions and
    reapers, and the metrics process too, which the main process forks only
    after it logs "listening on" (what the stack waits for) and forks again
    after it dies.  A baseline that caught one, or missed one, could never be
    met again, and the landing CI failed on each in turn.  Nor a child's name:
    a child is called hatchwayd too until it renames itself."""
    procs = _daemon_processes()
    return {pid for pid, (comm, ppid) in procs.items()
            if comm == "hatchwayd" and ppid not in procs}


def daemon_own_now() -> set[int]:
    """daemon_own() of a running daemon: exactly one process, never the empty
    set, which would make a comparison with it pass whatever happened."""
    pids = daemon_own()
    assert len(pids) == 1, f"expected one hatchwayd main process, found {sorted(pids)}"
    return pids


def session_pids() -> set[int]:
    return {pid for pid, (comm, _) in _daemon_processes().items() if comm == "hwd-session"}


def wait_only_daemon_left(own: set[int], timeout: float, why: str) -> None:
    """Wait until the same main process as before is left and no session
    process: what a fault test expects once the fault is over."""
    def settled():
        return daemon_own() == own and not session_pids()
    try:
        wait_for(settled, timeout, 0.2, what=why)
    except TimeoutError as e:
        raise TimeoutError(f"{e}: the daemon's main process was {sorted(own)}, now "
                           f"{sorted(daemon_own())}; session processes "
                           f"{sorted(session_pids())}") from None
