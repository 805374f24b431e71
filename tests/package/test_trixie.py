"""The same .deb (built on Debian 12) in a clean Debian 13 root: it installs
with trixie's packages (Python 3.13, OpenSSH 10), the drop-in is rendered for
the newer sshd and applies to members only, and a real login through trixie's
sshd, key helper, bundled webhook and daemon runs in a container on the host's
Docker engine.  Nothing is started by the package (chroot); the test starts
the three daemons itself, inside the root, and ends them.
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


def test_a_login_lands_in_a_container(trixie):
    trixie.binds.append((DOCKER_SOCKET, "/run/docker.sock"))
    webhook_port, sshd_port = free_port(), free_port()
    trixie.write("/etc/hatchway/hatchway.yaml",
                 f"auth:\n  webhook:\n    url: http://127.0.0.1:{webhook_port}\n"
                 f"docker:\n  image: {IMAGE}\n")
    log = open(trixie.path.parent / "daemons.log", "ab")
    procs = []
    try:
        procs.append(trixie.popen(
            ["setpriv", "--reuid=hatchway-webhook", "--regid=hatchway-webhook", "--init-groups",
             "hatchway", "webhook", "serve", "--listen", f"127.0.0.1:{webhook_port}"],
            stdout=log, stderr=log))
        wait_port(webhook_port, procs[-1], "the webhook")
        procs.append(trixie.popen(["setpriv", "--reuid=hatchway", "--regid=hatchway",
                                   "--init-groups", "/usr/sbin/hatchwayd"],
                                  stdout=log, stderr=log))
        trixie.run(["install", "-d", "-m", "0755", "/run/sshd"])
        procs.append(trixie.popen(["/usr/sbin/sshd", "-D", "-p", str(sshd_port),
                                   "-o", "ListenAddress=127.0.0.1",
                                   "-o", "PidFile=/run/sshd-test.pid", "-E", "/tmp/sshd.log"],
                                  stdout=log, stderr=log))
        wait_port(sshd_port, procs[-1], "sshd")
        end = time.monotonic() + 30
        while not (trixie.path / "run/hatchway/hatchwayd.sock").exists():
            assert procs[1].poll() is None and time.monotonic() < end, \
                (trixie.path.parent / "daemons.log").read_text()
            time.sleep(0.1)
        p = subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", str(sshd_port), "-i", str(trixie.path / "root/alice"),
             "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             f"{MEMBER}@127.0.0.1", "cat /etc/hatchway-demo; exit 3"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert (p.returncode, p.stdout) == (3, "inside a Hatchway demo container\n"), \
            p.stderr + trixie.read("/tmp/sshd.log")[-2000:]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        log.close()
    # the session's container is gone when the session is
    mid = trixie.read("/etc/machine-id").strip()
    end = time.monotonic() + 30
    while subprocess.run(["docker", "ps", "-aq", "--filter", f"label=io.hatchway.host={mid}"],
                         capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < end, "the session's container was left behind"
        time.sleep(0.2)


def test_purge(trixie):
    trixie.run(["apt-get", "purge", "-y", "-q", "hatchway"])
    assert trixie.dpkg_status("hatchway") == "not-installed"
    for gone in ("/etc/hatchway", DROPIN, "/usr/share/hatchway", "/var/lib/hatchway/webhook"):
        assert not trixie.exists(gone), gone
    trixie.run(["sshd", "-t"])
