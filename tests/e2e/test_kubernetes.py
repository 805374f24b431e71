"""What is the Kubernetes backend's own, end to end: the real sshd stack
against a REAL single-node cluster (kube-apiserver + kubelet 1.20 built from
Debian's source package, see tests/setup/k8s-cluster), one pod per session.

Everything Docker and Kubernetes share (exit statuses and 128+N, the
environment, stdin EOF, every byte value, the terminal, TERM, HUP on a
disconnect, kill -9, a missing image, 200 MB, a slow reader) runs on both in
test_on_each_backend.py; the Backend interface itself in tests/contract.
`HATCHWAY_E2E_KUBECONFIG=/path` runs these against that cluster instead
(tests/e2e/backends.py).
"""

import os
import shutil
import subprocess

import pytest

from tests.k8s_cluster import STATE

from .backends import k8s_config, pods
from .stack import wait_for


@pytest.fixture
def kw(stack, k8s):
    """The stack on the Kubernetes backend; after each test, no session pod may be left."""
    stack.reconfigure(k8s_config(k8s, stack.tmp))
    yield stack
    wait_for(lambda: not pods(k8s), 30, 0.2, what="session pods to be deleted")


def test_the_pod_is_labelled_never_restarts_and_has_no_token(kw, k8s):
    p = subprocess.Popen(kw.ssh_argv("alice", "echo ready; sleep 1000"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        [pod] = pods(k8s, user="alice")
        labels, notes = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels["io.hatchway.mode"] == "session" and len(labels["io.hatchway.session"]) == 32
        # the owner token has ':' (not a label value): an annotation the reaper reads
        assert notes["io.hatchway.process"].count(":") == 2
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["automountServiceAccountToken"] is False
    finally:
        p.kill()
        p.wait()


def test_explicit_server_ca_and_token(stack, k8s):
    if k8s["external"]:
        pytest.skip("uses the test cluster's static token")
    ca = stack.tmp / "k8s-ca.crt"
    token = stack.tmp / "k8s-token"
    shutil.copy(STATE / "pki/ca.crt", ca)
    tok = next(line.split(",")[0] for line in (STATE / "pki/tokens.csv").read_text().splitlines())
    token.write_text(tok + "\n")
    for f in (ca, token):
        shutil.chown(f, "root", "hatchway")
        os.chmod(f, 0o640)
    stack.reconfigure(k8s_config(k8s, stack.tmp, server="https://127.0.0.1:16443",
                                 ca_file=str(ca), token_file=str(token)))
    p = stack.ssh("alice", "echo via-token")
    assert (p.returncode, p.stdout) == (0, b"via-token\n"), p.stderr
    wait_for(lambda: not pods(k8s), 30, 0.2, what="session pods to be deleted")
