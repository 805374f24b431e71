"""A stand-in session for `sftp -D`: the container's side of an sftp
subsystem session (the command line hatchway/daemon/commands.py plans) run as a local
process, behind hatchway/daemon/sftp_fallback.Watch, with this process's stdin/stdout as
the client's channel.  Usage: sftp_harness.py SERVER [SERVER...] (the
candidate sftp servers, as session.subsystems.sftp lists them)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hatchway.daemon import commands, sftp_fallback        # noqa: E402
from hatchway.backends.base import ExitStatus, Process          # noqa: E402


class LocalProcess(Process):
    """A real local process in place of the container (stdout only: sshd
    drops a subsystem's stderr anyway)."""

    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)

    def send(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close_stdin(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass

    def recv(self):
        data = os.read(self.p.stdout.fileno(), 65536)
        return (1, data) if data else None

    def resize(self, rows, cols):
        pass

    def signal(self, name):
        pass

    def exit_status(self, timeout=None):
        return ExitStatus(self.p.wait(timeout))

    def destroy(self):
        if self.p.poll() is None:
            self.p.kill()


def main():
    proc = sftp_fallback.Watch(LocalProcess(commands.sftp_argv(sys.argv[1:])))

    def pump_in():
        while data := os.read(0, 65536):
            try:
                proc.send(data)
            except OSError:
                return
        proc.close_stdin()

    threading.Thread(target=pump_in, daemon=True).start()
    while (item := proc.recv()) is not None:
        os.write(1, item[1])
    return proc.exit_status(10).code


if __name__ == "__main__":
    sys.exit(main())
