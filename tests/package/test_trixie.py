"""The same .deb (built on Debian 12) in a clean Debian 13 root: it installs
with trixie's packages (Python 3.13, OpenSSH 10), the drop-in is rendered for
the newer sshd and applies to members only, and real logins go through
trixie's sshd, key helper, bundled webhook and daemon into containers on the
host's Docker engine.  No systemd here (a chroot, as on these build machines):
the test starts the three daemons inside the root as hatchwayd(8) describes,
restarts the daemon's main process under a live session, and has
`hatchway sshd enable|disable` signal the running sshd.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from .helpers import (DROPIN, MEMBER, add_users, assert_dropin_applies_to_members_only,
                      effective, installed_layout_problems)
from .machine import DOCKER_SOCKET
from .roots import Root

IMAGE = "hatchway/demo:latest"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, f"{what} exited ({proc.returncode})"
        assert time.monotonic() < end, f"{what} did not listen on {port}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def trixie(deb, docker_gid):
    root = Root.copy("trixie")
    try:
        root.no_services()
        root.apt_update()
        # the host's docker group, as if docker.io were installed in the root
        # (no -o: a gid clash must fail, not hand the socket to another group)
        root.run(["groupadd", "-g", str(docker_gid), "docker"])
        root.put(deb, f"/tmp/{deb.name}")
        root.apt_install(f"/tmp/{deb.name}")
        yield root
    finally:
        root.destroy()


def test_installs_with_trixies_packages(trixie):
    assert trixie.dpkg_status("hatchway") == "ii"
    assert trixie.run(["dpkg", "--verify", "hatchway"]).stdout == ""
    assert trixie.read("/etc/debian_version").startswith("13")
    python = trixie.run(["python3", "--version"]).stdout
    assert python.startswith("Python 3.13"), python
    assert installed_layout_problems(trixie) == []
    assert "docker" in trixie.run(["id", "-nG", "hatchway"]).stdout.split()


def test_programs_run(trixie):
    assert trixie.run(["hatchway", "--help"]).stdout.startswith("Usage: hatchway")
    assert "usage: hatchwayd" in trixie.run(["hatchwayd", "--help"]).stdout
    check = trixie.run(["hatchway", "check"], check=False)
    assert "ok   /etc/hatchway/hatchway.yaml: valid" in check.stdout
    assert "Traceback" not in check.stdout + check.stderr


def test_drop_in_for_openssh_10(trixie):
    add_users(trixie)
    trixie.run(["hatchway", "sshd", "enable"])
    live = trixie.read(DROPIN)
    assert "AuthorizedKeysCommand /usr/lib/hatchway/hatchway-keys %u %t %k %C" in live
    assert_dropin_applies_to_members_only(trixie)
    assert effective(trixie, MEMBER)["authorizedkeyscommand"].endswith("%k %C")
    check = trixie.run(["hatchway", "check"], check=False).stdout
    assert "ok   sshd: drop-in matches the template and is in effect for members only" in check


class Daemons:
    """The bundled webhook, hatchwayd and sshd, started inside the root the
    way an admin without systemd would (hatchwayd(8)), on free loopback ports.
    sshd keeps its default PidFile, so `hatchway sshd enable|disable` finds
    and signals it."""

    def __init__(self, root: Root):
        self.root = root
        self.webhook_port, self.sshd_port = free_port(), free_port()
        self.log = open(root.path.parent / "daemons.log", "ab")
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        self.root.binds.append((DOCKER_SOCKET, "/run/docker.sock"))
        self.root.write("/etc/hatchway/hatchway.yaml",
                        f"auth:\n  webhook:\n    url: http://127.0.0.1:{self.webhook_port}\n"
                        f"docker:\n  image: {IMAGE}\n")
        self.spawn("webhook", ["setpriv", "--reuid=hatchway-webhook", "--regid=hatchway-webhook",
                               "--init-groups", "hatchway", "webhook", "serve", "--listen",
                               f"127.0.0.1:{self.webhook_port}"])
        wait_port(self.webhook_port, self.procs["webhook"], "the webhook")
        self.start_daemon()
        self.root.run(["install", "-d", "-m", "0755", "/run/sshd"])
        self.spawn("sshd", ["/usr/sbin/sshd", "-D", "-p", str(self.sshd_port),
                            "-o", "ListenAddress=127.0.0.1", "-E", "/tmp/sshd.log"])
        wait_port(self.sshd_port, self.procs["sshd"], "sshd")

    def spawn(self, name: str, argv: list[str]) -> None:
        self.procs[name] = self.root.popen(argv, stdout=self.log, stderr=self.log)

    def start_daemon(self) -> None:
        sock = self.root.path / "run/hatchway/hatchwayd.sock"
        sock.unlink(missing_ok=True)
        self.spawn("hatchwayd", ["setpriv", "--reuid=hatchway", "--regid=hatchway",
                                 "--init-groups", "/usr/sbin/hatchwayd"])
        end = time.monotonic() + 30
        while not sock.exists():
            assert self.procs["hatchwayd"].poll() is None and time.monotonic() < end, \
                (self.root.path.parent / "daemons.log").read_text()[-3000:]
            time.sleep(0.1)

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            p.wait(30)
        self.log.close()

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-p", str(self.sshd_port),
                "-i", str(self.root.path / f"root/{MEMBER}"), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                f"{MEMBER}@127.0.0.1", command]

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.ssh_argv(command), capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def daemons(trixie, docker_gid):
    d = Daemons(trixie)
    try:
        d.start()
        yield d
    finally:
        d.stop()
    # every session's container is gone with its session
    mid = trixie.read("/etc/machine-id").strip()
    end = time.monotonic() + 30
    while subprocess.run(["docker", "ps", "-aq", "--filter", f"label=io.hatchway.host={mid}"],
                         capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < end, "a session's container was left behind"
        time.sleep(0.2)


def test_a_login_lands_in_a_container(daemons):
    p = daemons.ssh("cat /etc/hatchway-demo; exit 3")
    assert (p.returncode, p.stdout) == (3, "inside a Hatchway demo container\n"), \
        p.stderr + daemons.root.read("/tmp/sshd.log")[-2000:]


def test_a_session_survives_a_restart_of_the_daemon_without_systemd(daemons):
    """What KillMode=process gives under systemd, by hand: TERM to the main
    process (its pid file names it), a new daemon, the old session finishes."""
    p = subprocess.Popen(daemons.ssh_argv("echo started; sleep 4; echo finished; exit 7"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "started\n"
    main = int(daemons.root.read("/run/hatchway/hatchwayd.pid"))
    assert main == daemons.procs["hatchwayd"].pid
    daemons.procs["hatchwayd"].terminate()
    daemons.procs["hatchwayd"].wait(30)
    daemons.start_daemon()
    out, err = p.communicate(timeout=120)
    assert (p.returncode, out, err) == (7, "finished\n", "")
    assert daemons.ssh("exit 9").returncode == 9


def test_sshd_disable_and_enable_reach_a_running_sshd(daemons):
    """Without systemd, enable/disable signal the sshd named by its PidFile;
    the running sshd's behaviour shows they did."""
    sshd = daemons.procs["sshd"].pid
    out = daemons.root.run(["hatchway", "sshd", "disable"]).stdout
    assert f"sent SIGHUP to sshd (pid {sshd})" in out
    assert_eventually(lambda: daemons.ssh("true").returncode == 255, "members refused")
    out = daemons.root.run(["hatchway", "sshd", "enable"]).stdout
    assert f"sent SIGHUP to sshd (pid {sshd})" in out
    assert_eventually(lambda: daemons.ssh("exit 4").returncode == 4, "members let in again")
    assert daemons.procs["sshd"].poll() is None


def assert_eventually(predicate, what: str, timeout: float = 30) -> None:
    """sshd re-executes itself on SIGHUP; give it the moment that takes."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, what
        time.sleep(0.3)


def test_purge(trixie):
    trixie.apt(["purge", "-y", "-q", "hatchway"])
    assert trixie.dpkg_status("hatchway") == "not-installed"
    for gone in ("/etc/hatchway", DROPIN, "/usr/share/hatchway", "/var/lib/hatchway/webhook"):
        assert not trixie.exists(gone), gone
    trixie.run(["sshd", "-t"])
