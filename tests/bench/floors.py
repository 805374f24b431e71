"""The floors that need a user allowed to run docker behind sshd.

Hatchway's path is ssh → sshd → (hatchway-shell → hatchwayd) → dockerd; its
real floor is the same path without Hatchway: ssh → sshd → `docker run`.  The
stack's sshd gives no user the Docker socket (and must not), so the bench
starts a second sshd of its own on loopback for root, key login only, with a
key that exists only in the bench's temporary directory, and stops it at the
end.  It runs Debian's own sshd_config (so logins cost what the stack's cost),
except that its sftp subsystem is `docker run -i … sftp-server`: the floor of
an SFTP upload into a container.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from tests.e2e.stack import Stack, _port_open, run, wait_for

PORT = 2298
USER = "root"
# every container a floor starts carries this label, so the bench can wait
# for (and, after a failure, remove) exactly its own containers
LABEL = "io.hatchway-bench.floor=1"
DOCKER_RUN = ["docker", "run", "--rm", "--init", "--log-driver", "none", "--label", LABEL]


def docker_run(*args: str, interactive: bool = True, tty: bool = False) -> list[str]:
    """`docker run` of the session image as Hatchway runs it (init, no log driver)."""
    return DOCKER_RUN + (["-it"] if tty else ["-i"] if interactive else []) + list(args)


class FloorSshd:
    def __init__(self, hw: Stack, sftp_image: str | None = None, sftp_data: Path | None = None):
        self.hw = hw
        self.key = hw.keygen(USER)
        self.config = hw.tmp / "floor_sshd_config"
        self.keys_file = hw.tmp / "floor_authorized_keys"
        self.sftp_image, self.sftp_data = sftp_image, sftp_data

    def start(self) -> None:
        self.keys_file.write_text(Path(f"{self.key}.pub").read_text())
        os.chmod(self.keys_file, 0o600)
        lines = [line for line in Path("/etc/ssh/sshd_config").read_text().splitlines()
                 if not line.strip().lower().startswith("subsystem")]
        if self.sftp_image:
            sftp = docker_run("-v", f"{self.sftp_data}:/data", self.sftp_image,
                              "/usr/lib/openssh/sftp-server")
            lines.append("Subsystem sftp " + shlex.join(sftp))
        self.config.write_text("\n".join(lines) + "\n")
        self.hw._spawn("floor-sshd", [
            "/usr/sbin/sshd", "-D", "-f", str(self.config),
            "-o", f"Port={PORT}", "-o", "ListenAddress=127.0.0.1",
            "-o", f"PidFile={self.hw.tmp}/floor-sshd.pid", "-o", "LogLevel=ERROR",
            "-o", "MaxStartups=200", "-o", "PermitRootLogin=prohibit-password",
            "-o", "PasswordAuthentication=no",
            # the key file lives in the bench's temporary directory, not root's home
            "-o", f"AuthorizedKeysFile={self.keys_file}", "-o", "StrictModes=no",
            "-h", str(self.hw.tmp / "ssh_host_ed25519_key"),
            "-E", str(self.hw.tmp / "floor-sshd.log")], "floor-sshd.out")
        wait_for(lambda: _port_open(PORT), 15, what="the floor sshd")

    def stop(self) -> None:
        self.hw.stop_proc("floor-sshd")

    def argv(self, command: str | None = None, tty: bool = False) -> list[str]:
        argv = self.hw.ssh_argv(USER, command, tty=tty)
        argv[argv.index("-p") + 1] = str(PORT)
        return argv

    def spawn(self, command: str):
        import pexpect
        argv = self.argv(command, tty=True)
        return pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), timeout=30)


def containers() -> list[str]:
    out = run(["docker", "ps", "-aq", "--filter", f"label={LABEL}"]).stdout
    return out.split()


def wait_gone(timeout: float = 120) -> None:
    wait_for(lambda: not containers(), timeout, 0.2, what="the floor's containers to be removed")


def remove_leftovers() -> None:
    """After a failed run: the floor's own containers (by label), nobody else's."""
    ids = containers()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
