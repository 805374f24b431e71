"""Sessions as host processes (pipes, no pty), each recorded as a JSON file
of its labels in `state_dir`, which is what list/remove/reap work on."""

import json
import os
import queue
import signal
import subprocess
import threading

from hatchway.backends.base import Backend, BackendError, ExitStatus, Found, Process


class DummyBackend(Backend):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.dir = cfg.dummy.state_dir

    def start(self, spec):
        if spec.pty:
            raise BackendError("the dummy backend has no terminals")
        os.makedirs(self.dir, exist_ok=True)
        argv = list(spec.argv)
        if spec.config.dummy.greeting:
            argv = ["/bin/sh", "-c", 'echo "$0"; exec "$@"', spec.config.dummy.greeting, *argv]
        try:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True,
                                 env={"PATH": "/usr/bin:/bin", **spec.env})
        except OSError as e:
            raise BackendError(f"cannot run the command: {e.strerror}") from None
        name = f"dummy-{spec.session_id[:12]}"
        with open(os.path.join(self.dir, name), "w") as f:
            json.dump({"labels": spec.labels, "pid": p.pid}, f)
        return DummyProcess(name, p, self.dir)

    def list(self, user=None):
        out = []
        for name in sorted(os.listdir(self.dir)) if os.path.isdir(self.dir) else []:
            with open(os.path.join(self.dir, name)) as f:
                labels = json.load(f)["labels"]
            if user is None or labels.get("io.hatchway.user") == user:
                out.append(Found(name, labels, "running"))
        return out

    def remove(self, found):
        path = os.path.join(self.dir, found.name)
        try:
            with open(path) as f:
                os.killpg(json.load(f)["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return True

    def check(self):
        if not os.access(os.path.dirname(self.dir.rstrip("/")) or "/", os.W_OK):
            return [f"dummy: cannot write {self.dir}"], []
        return [], [f"dummy: sessions recorded in {self.dir}"]


class DummyProcess(Process):
    def __init__(self, name, popen, state_dir):
        self.id = name
        self.p = popen
        self.dir = state_dir
        self.out = queue.Queue()
        self.open_streams = 2
        for stream, pipe in ((1, popen.stdout), (2, popen.stderr)):
            threading.Thread(target=self._read, args=(stream, pipe), daemon=True).start()

    def _read(self, stream, pipe):
        while data := os.read(pipe.fileno(), 65536):
            self.out.put((stream, data))
        self.out.put(None)

    def send(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close_stdin(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass

    def recv(self):
        while self.open_streams:
            item = self.out.get()
            if item is not None:
                return item
            self.open_streams -= 1
        return None

    def resize(self, rows, cols):
        pass

    def signal(self, name):
        try:
            os.killpg(self.p.pid, getattr(signal, "SIG" + name))
        except OSError:
            pass

    def exit_status(self, timeout=None):
        code = self.p.wait(timeout)
        return ExitStatus(128 - code if code < 0 else code)

    def destroy(self):
        self.signal("KILL")
        self.p.wait()
        try:
            os.unlink(os.path.join(self.dir, self.id))
        except FileNotFoundError:
            pass


BACKEND = DummyBackend
