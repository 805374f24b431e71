"""A test root booted with systemd-nspawn: real systemd as PID 1, so units,
their sandboxes, restarts and the maintainer scripts' systemctl calls behave
as on a server.

The host has no systemd (these machines run without it), hence
--register=no and --keep-unit; commands enter the container's namespaces with
nsenter.  Its network is private (its sshd and webhook use their real ports
without meeting the host's), and the host's Docker socket is bind-mounted, so
the sandboxed hatchwayd inside creates real containers on the host's engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

from .roots import ENV, Root, RootError

DOCKER_SOCKET = os.path.realpath("/var/run/docker.sock")


class Machine:
    def __init__(self, root: Root):
        self.root = root
        self.name = "hw-" + uuid.uuid4().hex[:8]
        self.machine_id = root.read("/etc/machine-id").strip()
        self.log = open(root.path.parent / "nspawn.log", "ab")
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None

    def boot(self, timeout: float = 120) -> None:
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "-D", str(self.root.path), "-b", "--register=no",
             "--keep-unit", "--console=pipe", "-M", self.name, "--private-network",
             f"--bind={DOCKER_SOCKET}:/run/docker.sock"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        end = time.monotonic() + timeout
        # The container's init is the descendant of nspawn that runs systemd as
        # PID 1 of its own pid namespace.  nspawn's first child is only an
        # intermediate process: entering its namespaces before init runs
        # reaches a half-built container (the CI failure "the container's
        # systemd is ''").
        while self.leader is None:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RootError(f"systemd-nspawn did not boot: {self.console()[-3000:]}")
            self.leader = _container_init(self.proc.pid)
            time.sleep(0.1)
        # systemctl answers nothing until init has opened its private bus, so
        # ask again until it names a state or the deadline passes.
        while True:
            p = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                         timeout=max(1.0, end - time.monotonic()))
            state = p.stdout.strip()
            if state in ("running", "degraded"):
                return
            if state not in ("", "initializing", "starting") or time.monotonic() > end \
                    or self.proc.poll() is not None:
                raise RootError(f"the container's systemd is {state!r} ({p.stderr.strip()[-500:]}):"
                                f" {self.console()[-3000:]}")
            time.sleep(0.5)

    def console(self) -> str:
        self.log.flush()
        return (self.root.path.parent / "nspawn.log").read_text(errors="replace")

    def argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.leader), "-a", "env", "-i",
                *(f"{k}={v}" for k, v in ENV.items()), *argv]

    def run(self, argv: list[str], check=True, timeout=300, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        p = subprocess.run(self.argv(argv), timeout=timeout, stdin=subprocess.DEVNULL, **kw)
        if check and p.returncode != 0:
            raise RootError(f"{argv} failed ({p.returncode}): {p.stdout[-2000:]}{p.stderr[-2000:]}")
        return p

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", script], **kw)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), stdin=subprocess.DEVNULL, **kw)

    # ------------------------------------------------------------ systemd

    def main_pid(self, unit: str) -> int:
        return int(self.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout)

    def active(self, unit: str) -> str:
        return self.run(["systemctl", "is-active", unit], check=False).stdout.strip()

    def unit_pids(self, unit: str) -> list[int]:
        """Every process in the unit's cgroup (main process and sessions)."""
        cgroup = self.run(["systemctl", "show", "-p", "ControlGroup", "--value", unit]).stdout.strip()
        out = self.sh(f"cat /sys/fs/cgroup/systemd{cgroup}/cgroup.procs 2>/dev/null || "
                      f"cat /sys/fs/cgroup{cgroup}/cgroup.procs", check=False).stdout
        return [int(x) for x in out.split()]

    def proc_status(self, pid: int) -> dict[str, str]:
        text = self.run(["cat", f"/proc/{pid}/status"]).stdout
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)

    def mounts_of(self, pid: int) -> dict[str, set[str]]:
        """mount point -> mount options, as the process sees them."""
        out = {}
        for line in self.run(["cat", f"/proc/{pid}/mountinfo"]).stdout.splitlines():
            fields = line.split()
            out[fields[4]] = set(fields[5].split(","))
        return out

    # ------------------------------------------------------------ teardown

    def containers(self) -> list[str]:
        """Containers that Hatchway inside this machine created (its host id)."""
        out = subprocess.run(["docker", "ps", "-a", "-q", "--no-trunc", "--filter",
                              f"label=io.hatchway.host={self.machine_id}"],
                             capture_output=True, text=True).stdout
        return out.split()

    def poweroff(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)       # nspawn: orderly poweroff
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.leader = None

    def reboot(self) -> None:
        """Power off and boot the same root again: a fresh /run, units started
        by systemd at boot rather than by maintainer scripts."""
        self.poweroff()
        self.boot()

    def shutdown(self) -> list[str]:
        """Power off for good; returns the containers this machine had left
        behind (they are removed)."""
        self.poweroff()
        self.log.close()
        # only ours: every one carries this machine's id
        leftover = self.containers()
        if leftover:
            subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True)
        return leftover


def _container_init(nspawn: int) -> int | None:
    todo = _children(nspawn)
    while todo:
        pid = todo.pop(0)
        try:
            with open(f"/proc/{pid}/status") as f:
                nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
        except OSError:
            continue
        if len(nspid) > 1 and nspid[-1] == "1" and _comm(pid) == "systemd":
            return pid
        todo += _children(pid)
    return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []
