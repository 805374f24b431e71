"""What is the Kubernetes backend's own, on the real cluster: an unschedulable
pod, an explicit server/CA/token instead of a kubeconfig, the API's error text.
The contract every backend keeps (test_backend.py) runs on it too."""

import pytest

from hatchway.backends.base import BackendError
from hatchway.backends.kubernetes.api import KubernetesError
from tests import k8s_cluster

from .conftest import Target

SERVER = "https://127.0.0.1:16443"
CA = str(k8s_cluster.STATE / "pki/ca.crt")


@pytest.fixture
def kubernetes(cluster):
    t = Target("kubernetes", cluster)
    yield t
    for proc in t.procs:
        proc.destroy()
    t.wait_nothing_left()


def test_an_unschedulable_pod_fails_at_the_deadline_with_a_reason(kubernetes):
    # no nodeName, and the test cluster has no scheduler: nobody schedules it
    t = kubernetes.variant(pod={"containers": [{"name": "session", "imagePullPolicy": "Never"}]},
                           start_timeout=2.0)
    with pytest.raises(BackendError, match="did not start within 2s: the pod was not scheduled"):
        t.backend.start(t.spec(["true"]))


def test_explicit_server_ca_and_token(kubernetes, tmp_path):
    token = tmp_path / "token"
    token.write_text((k8s_cluster.STATE / "pki/tokens.csv").read_text().split(",")[0] + "\n")
    t = kubernetes.variant(kubeconfig=None, server=SERVER, ca_file=CA, token_file=str(token))
    st, out = t.sh("echo via-token")
    assert (st.code, out[1]) == (0, b"via-token\n")
    token.write_text("wrong\n")
    t = kubernetes.variant(kubeconfig=None, server=SERVER, ca_file=CA, token_file=str(token))
    with pytest.raises(BackendError, match="cannot create the pod"):
        t.backend.start(t.spec(["true"]))


def test_api_errors_name_the_status(kubernetes):
    t = kubernetes.variant(kubeconfig=None, server=SERVER, ca_file=CA)
    with pytest.raises(KubernetesError) as e:
        t.backend.api.call("GET", "/api/v1/namespaces/default/pods")
    assert e.value.status in (401, 403)
