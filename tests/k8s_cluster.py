"""The real single-node Kubernetes cluster (tests/setup/k8s-cluster) that the
contract suite, the backend's own tests and the Kubernetes e2e tests run on.

One pytest session brings it up once (the `cluster` fixture in
tests/conftest.py), whichever of those suites it runs, and takes it down at
the end.  The cluster has a lock of its own, so two runs never share or tear
down each other's cluster; it is not the e2e lock (the cluster uses no port or
file of the installed stack).  Lock order, where both are taken: the e2e lock
(Makefile) first, then this one.  Needs root.
"""

from __future__ import annotations

import base64
import fcntl
import json
import ssl
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests/setup/k8s-cluster"
STATE = Path("/run/hatchway-k8s")
KUBECONFIG = str(STATE / "admin.kubeconfig")
LOCK = "/run/lock/hatchway-k8s-cluster.lock"
IMAGE = "local/busybox:1"       # imported by k8s-cluster up; never pulled
NODE = "localhost"              # the test cluster has no scheduler: pods name their node
GATEWAY = "10.244.0.1"          # the pod bridge: pods reach this host here


class ClusterError(Exception):
    pass


@contextmanager
def running():
    """Take the cluster lock, bring the cluster up, yield its admin kubeconfig;
    take it down and release the lock afterwards."""
    lock = open(LOCK, "w")          # O_CLOEXEC: no child (a daemon, say) inherits the lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t0 = time.monotonic()
        p = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=3600)
        if p.returncode != 0:
            subprocess.run([str(CLUSTER), "down"], capture_output=True, timeout=300)
            raise ClusterError(f"cannot start the test cluster:\n{p.stderr[-4000:]}")
        print(f"\ncluster up in {time.monotonic() - t0:.1f}s")
        try:
            yield KUBECONFIG
        finally:
            d = subprocess.run([str(CLUSTER), "down"], capture_output=True, text=True,
                               timeout=300)
            if d.returncode != 0:
                raise ClusterError(f"cannot take the test cluster down:\n{d.stderr[-4000:]}")
    finally:
        lock.close()


def api(kubeconfig: str, path: str, method: str = "GET", body: dict | None = None):
    """One call with the kubeconfig's first cluster and user (files or inline
    data, client certificate or token): the tests' own view of the cluster,
    independent of the backend's client."""
    import yaml
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    cl, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    ctx = ssl.create_default_context(
        cafile=cl.get("certificate-authority"),
        cadata=base64.b64decode(cl["certificate-authority-data"]).decode()
        if "certificate-authority-data" in cl else None)
    headers = {}
    if "token" in user:
        headers["Authorization"] = f"Bearer {user['token']}"
    if "client-certificate" in user:
        ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    elif "client-certificate-data" in user:
        with tempfile.TemporaryDirectory() as d:
            for field in ("client-certificate-data", "client-key-data"):
                Path(d, field).write_bytes(base64.b64decode(user[field]))
            ctx.load_cert_chain(f"{d}/client-certificate-data", f"{d}/client-key-data")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(cl["server"] + path, method=method, headers=headers, data=data)
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.loads(r.read())


def pods(kubeconfig: str, namespace: str = "default", **labels: str) -> list[dict]:
    """Session pods (io.hatchway.managed=true) with these io.hatchway.* labels."""
    sel = ",".join(["io.hatchway.managed=true"] +
                   [f"io.hatchway.{k}={v}" for k, v in labels.items()])
    return api(kubeconfig, f"/api/v1/namespaces/{namespace}/pods?labelSelector={sel}")["items"]
