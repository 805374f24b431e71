"""The backend contract suite: what every backend must do behind Backend and
Process (hatchway/backends/base.py), checked against the real things through
the interface the session relay uses (output collected by a pump thread, as
the relay does):

  docker      the real dockerd (tests/setup/services starts it) and the demo
              image hatchway/demo:latest (busybox, built locally)
  kubernetes  the real single-node cluster (tests/setup/k8s-cluster, the
              `cluster` fixture of tests/conftest.py) and its local busybox image

Every test takes `backend`, a Target: backends are built only by
hatchway.backends.registry.make(config) and sessions only by Target.start, so how a
config reaches a backend is known here (config_for) and nowhere else.

No e2e lock: nothing here touches the installed package, /etc/hatchway or the
stack's ports (the work tree's code drives dockerd and the cluster directly).
Sessions carry a host label of their own (HOST), so the e2e stack's leak checks
and its daemon's reaper never see them, nor does this suite's reaper see the
stack's containers.  The Kubernetes half takes the cluster lock.  Needs root.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hatchway.backends import labels, registry
from hatchway.backends.base import SessionSpec
from hatchway.core import config
from tests import k8s_cluster

ROOT = Path(__file__).resolve().parents[2]
DOCKER_IMAGE = "hatchway/demo:latest"
BACKENDS = ["docker", "kubernetes"]
USER = "contract"
# Sessions of this suite belong to a host of their own (see the docstring).
HOST = "contract-" + labels.host_id()


def config_for(name: str, cluster: str | None = None, image: str | None = None,
               **section):
    """The daemon's config for backend `name`: the defaults, pointed at the test
    engine/cluster, then `section` over the backend's own section.  Neither
    backend pulls: no registry is reachable in tests."""
    c = config.defaults()
    c["backend"] = name
    if name == "docker":
        c["docker"].update(image=image or DOCKER_IMAGE, pull="Never")
    else:
        c["kubernetes"].update(kubeconfig=cluster, image=image or k8s_cluster.IMAGE, pod={
            "nodeName": k8s_cluster.NODE,
            "containers": [{"name": "session", "imagePullPolicy": "Never"}]})
    c[name].update(section)
    return config.typed(c)


class Session:
    """One command: its output collected by a thread, like the relay's pump.
    With `digest_stdout`, stdout is only hashed and counted (200 MB tests)."""

    def __init__(self, target: "Target", spec: SessionSpec, digest_stdout: bool = False):
        self.spec = spec
        self.proc = target.backend.start(spec)
        target.procs.append(self.proc)
        self.out = {1: bytearray(), 2: bytearray()}     # += on bytes would be quadratic
        self.digest = hashlib.sha256() if digest_stdout else None
        self.stdout_size = 0
        self._grew = threading.Condition()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        while (item := self.proc.recv()) is not None:
            stream, data = item
            with self._grew:
                if stream == 1 and self.digest is not None:
                    self.digest.update(data)
                    self.stdout_size += len(data)
                else:
                    self.out[stream] += data
                self._grew.notify_all()
        with self._grew:
            self._grew.notify_all()

    def wait_output(self, needle: bytes, timeout: float = 30, stream: int = 1) -> None:
        """Until `needle` is in the output so far; fails at the timeout or when
        the output ends without it."""
        end = time.monotonic() + timeout
        with self._grew:
            while needle not in self.out[stream]:
                left = end - time.monotonic()
                assert left > 0 and self.thread.is_alive(), \
                    f"no {needle!r} in the output: {bytes(self.out[stream][-500:])!r}"
                self._grew.wait(min(left, 1))

    def finish(self, timeout: float = 60):
        """Wait for the end of the output; the exit status; destroy."""
        self.thread.join(timeout)
        alive = self.thread.is_alive()
        try:
            st = self.proc.exit_status(timeout=30) if not alive else None
        finally:
            self.proc.destroy()
        assert not alive, f"no end of output within {timeout}s: {bytes(self.out[1][:200])!r}"
        return st

    def output(self) -> dict[int, bytes]:
        return {k: bytes(v) for k, v in self.out.items()}


class Target:
    """One backend under test, built from its config by the registry."""

    def __init__(self, name: str, cluster: str | None = None, image: str | None = None,
                 **section):
        """`cluster`: the test cluster's kubeconfig (kubernetes)."""
        self.name = name
        self.cluster = cluster
        self.cfg = config_for(name, cluster, image, **section)
        self.backend = registry.make(self.cfg)
        self.session_ids: list[str] = []
        self.procs: list = []

    def variant(self, image: str | None = None, **section) -> "Target":
        """The same backend with another image or other keys of its section;
        its sessions are checked with this one's."""
        t = Target(self.name, self.cluster, image, **section)
        t.session_ids, t.procs = self.session_ids, self.procs
        return t

    def spec(self, argv: list[str], pty: bool = False, size=(30, 100), owner: str | None = None,
             env: dict | None = None, host: str = HOST) -> SessionSpec:
        sid = os.urandom(16).hex()
        self.session_ids.append(sid)
        s = SessionSpec(user=USER, uid=1000, session_id=sid, connection_id=os.urandom(16).hex(),
                        kind="exec", argv=argv, pty=pty, term="xterm" if pty else None,
                        size=size if pty else None,
                        env={"LANG": "C.UTF-8"} if env is None else env,
                        remote_address="127.0.0.1:1", config=self.cfg)
        s.labels = labels.for_session(USER, sid, s.connection_id, "session", os.getpid())
        s.labels[labels.HOST] = host
        if owner is not None:
            s.labels[labels.PROCESS] = owner
        return s

    def start(self, argv: list[str], digest_stdout: bool = False, **kw) -> Session:
        return Session(self, self.spec(argv, **kw), digest_stdout)

    def sh(self, script: str, data: bytes = b"", pty: bool = False, **kw):
        """Run `script` to its end (stdin: `data`, then EOF without a pty, as the
        relay does): (ExitStatus, {1: out, 2: err})."""
        s = self.start(["/bin/sh", "-c", script], pty=pty, **kw)
        if data:
            s.proc.send(data)
        if not pty:
            s.proc.close_stdin()
        st = s.finish()
        return st, s.output()

    def reap(self, is_alive) -> list[str]:
        return self.backend.reap(is_alive)

    # -- seen from outside: the engine's own view, not the backend's client

    def leftovers(self, session_id: str | None = None) -> list[str]:
        """Containers/pods of this target's sessions (or of one) that exist, by
        the name the backend gives them (Found.name: container id, pod name)."""
        ids = [session_id] if session_id else self.session_ids
        if self.name == "docker":
            out = subprocess.run(
                ["docker", "ps", "-a", "--no-trunc",
                 "--format", "{{.ID}} {{.Label \"io.hatchway.session\"}}",
                 "--filter", "label=io.hatchway.managed=true",
                 "--filter", f"label=io.hatchway.user={USER}"],
                capture_output=True, text=True, check=True).stdout
            return [ln.split()[0] for ln in out.splitlines()
                    if ln.strip() and ln.split()[-1] in ids]
        return [p["metadata"]["name"] for p in k8s_cluster.pods(self.cluster, user=USER)
                if p["metadata"]["labels"].get("io.hatchway.session") in ids]

    def wait_nothing_left(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while left := self.leftovers():
            assert time.monotonic() < end, f"left behind: {left}"
            time.sleep(0.2)


@pytest.fixture(scope="session")
def docker_engine():
    """dockerd and the demo image (tests/setup/services: idempotent)."""
    if os.geteuid() != 0:
        pytest.exit("the contract suite needs root", returncode=2)
    p = subprocess.run([str(ROOT / "tests/setup/services")], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"cannot start dockerd or build the demo image:\n{p.stderr[-4000:]}",
                    pytrace=False)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn; after the test, nothing of its sessions may be left."""
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
        t = Target("docker")
    else:
        t = Target("kubernetes", request.getfixturevalue("cluster"))
    yield t
    # a failed test may leave its sessions running: end them the product's way
    for proc in t.procs:
        proc.destroy()
    t.wait_nothing_left()


def pytest_collection_modifyitems(items):
    """`fails_on(backend, why)`: a case this backend is known to fail (a
    limitation or a product bug, `why` says which).  It still runs, for that
    backend only, as a strict xfail: reported with its reason (-rxX), and a
    run where it passes fails until the mark goes.  Never a skip."""
    for item in items:
        for mark in item.iter_markers("fails_on"):
            name, why = mark.args
            if getattr(item, "callspec", None) and item.callspec.params.get("backend") == name:
                item.add_marker(pytest.mark.xfail(reason=f"{name}: {why}", strict=True))


def pytest_configure(config):
    config.addinivalue_line("markers", "fails_on(backend, reason): known to fail on a backend")
