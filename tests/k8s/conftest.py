"""A real single-node Kubernetes cluster (tests/setup/k8s-cluster) for the
backend's integration tests: started once per test session, torn down after.

These tests drive hatchway/backends/kubernetes/backend.py from the work tree directly (no
.deb, no sshd, no fixed ports of the e2e stack), so they do not take the e2e
lock; the cluster has a lock of its own, so two runs never share or tear down
each other's cluster.  Needs root.
"""

import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "tests/setup/k8s-cluster"
KUBECONFIG = "/run/hatchway-k8s/admin.kubeconfig"
LOCK = "/run/lock/hatchway-k8s-cluster.lock"


@pytest.fixture(scope="session")
def cluster():
    if os.geteuid() != 0:
        pytest.exit("the Kubernetes integration tests need root", returncode=2)
    lock = open(LOCK, "w")          # O_CLOEXEC: no child inherits the lock
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        t0 = time.monotonic()
        p = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=3600)
        if p.returncode != 0:
            subprocess.run([str(CLUSTER), "down"], capture_output=True, timeout=300)
            pytest.fail(f"cannot start the test cluster:\n{p.stderr[-4000:]}")
        print(f"\ncluster up in {time.monotonic() - t0:.1f}s")
        yield KUBECONFIG
        d = subprocess.run([str(CLUSTER), "down"], capture_output=True, text=True, timeout=300)
        assert d.returncode == 0, d.stderr
    finally:
        lock.close()
