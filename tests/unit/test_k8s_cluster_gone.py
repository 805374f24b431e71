"""What a Kubernetes session says when the API server does not answer: at
login (CLUSTER_DOWN), and when its exec stream ended under it (CLUSTER_GONE),
and that its process keeps deleting the pod until the API server is back.  A
stand-in for the API; the real cluster's behaviour is in
tests/e2e/test_kubernetes_faults.py."""

import threading

import pytest

from hatchway.backends.base import BackendError
from hatchway.backends.kubernetes import backend as kb
from hatchway.backends.kubernetes.api import (CLUSTER_DOWN, CLUSTER_GONE, KubernetesError,
                                              unreachable)
from hatchway.backends.kubernetes.channel import Frames, Status

from .test_k8s_pod import cfg, spec

REFUSED = KubernetesError(0, "HTTPSConnectionPool(host='127.0.0.1', port=16443): Max retries "
                             "exceeded (Caused by NewConnectionError: Connection refused)")


class Api:
    """Answers by method: an exception to raise, a list of them (then the
    last one keeps answering), or a value."""

    def __init__(self, **answers):
        self.answers = answers
        self.calls = []

    def call(self, method, path, body=None, query=None, timeout=None):
        self.calls.append(method)
        a = self.answers.get(method)
        if isinstance(a, list):
            a = a.pop(0) if len(a) > 1 else a[0]
        if isinstance(a, Exception):
            raise a
        return a


@pytest.mark.parametrize("status, down", [(0, True), (503, True), (502, True), (504, True),
                                          (404, False), (403, False), (500, False),
                                          (422, False)])
def test_unreachable_is_no_answer_or_not_serving(status, down):
    assert unreachable(KubernetesError(status, "x")) is down


def process(api, status=None, gone=False):
    p = kb.KubernetesProcess(api, "default", "pod-1", "session", spec(cfg(image="i")))
    p.frames = Frames(None)
    p.frames.status = status
    p._gone = gone
    return p


def test_a_stream_ended_with_the_api_server_gone_ends_with_one_line():
    st = process(Api(GET=REFUSED)).exit_status(1)
    assert (st.code, st.note) == (255, CLUSTER_GONE) and "\n" not in st.note


@pytest.mark.parametrize("answer", [{"metadata": {}}, KubernetesError(404, "not found")])
def test_a_stream_ended_with_the_api_server_there_is_a_lost_status(answer):
    # the kubelet went away, or the pod was deleted: not the cluster
    st = process(Api(GET=answer)).exit_status(1)
    assert (st.code, st.note) == (255, "lost the exit status of the command")


def test_a_status_that_arrived_is_kept_without_asking():
    api = Api(GET=REFUSED)
    st = process(api, Status(3)).exit_status(1)
    assert (st.code, st.note, api.calls) == (3, None, [])


def test_a_destroyed_session_does_not_ask():
    api = Api(GET=REFUSED)
    assert process(api, gone=True).exit_status(1).note == "lost the exit status of the command"
    assert api.calls == []


def backend(api):
    b = kb.KubernetesBackend.__new__(kb.KubernetesBackend)
    b.api, b.ns = api, "default"
    return b


def test_login_with_the_api_server_down_is_one_line_for_the_user():
    with pytest.raises(BackendError) as e:
        backend(Api(POST=REFUSED, DELETE=REFUSED)).start(spec(cfg(image="i")))
    assert e.value.message == CLUSTER_DOWN
    assert "Connection refused" in e.value.log_reason     # the detail is the log's


def test_a_refused_pod_keeps_the_api_servers_words():
    with pytest.raises(BackendError) as e:
        backend(Api(POST=KubernetesError(403, "pods is forbidden"))).start(spec(cfg(image="i")))
    assert e.value.message == "cannot create the pod: pods is forbidden"


def test_the_api_server_going_while_the_pod_starts_is_cluster_down(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(kb.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(kb.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    with pytest.raises(BackendError) as e:
        backend(Api(GET=REFUSED))._wait_running("pod-1", "session", 5)
    assert e.value.message == CLUSTER_DOWN


def sleeps(monkeypatch) -> list:
    clock, slept = [0.0], []
    monkeypatch.setattr(kb.time, "monotonic", lambda: clock[0])

    def sleep(s):
        slept.append(s)
        clock[0] += s
    monkeypatch.setattr(kb.time, "sleep", sleep)
    return slept


def test_the_pod_is_deleted_once_the_api_server_is_back(monkeypatch):
    slept = sleeps(monkeypatch)
    api = Api(DELETE=[REFUSED] * 5 + [None], GET=KubernetesError(404, "gone"))
    assert kb.delete_pod(api, "default", "pod-1", retry_for=60)
    assert api.calls.count("DELETE") == 6 and len(slept) == 5 and max(slept) <= 2.0


def test_deleting_gives_up_after_its_bound(monkeypatch):
    slept = sleeps(monkeypatch)
    api = Api(DELETE=REFUSED)
    assert not kb.delete_pod(api, "default", "pod-1", retry_for=60)
    assert 58 <= sum(slept) <= 60


def test_an_answered_refusal_to_delete_is_not_tried_again(monkeypatch):
    sleeps(monkeypatch)
    api = Api(DELETE=KubernetesError(403, "forbidden"))
    assert not kb.delete_pod(api, "default", "pod-1", retry_for=60)
    assert api.calls == ["DELETE"]


def test_without_retry_for_one_try(monkeypatch):
    sleeps(monkeypatch)
    api = Api(DELETE=REFUSED)
    assert not kb.delete_pod(api, "default", "pod-1")
    assert api.calls == ["DELETE"]


def test_destroy_keeps_deleting_for_remove_for(monkeypatch):
    slept = sleeps(monkeypatch)
    api = Api(DELETE=REFUSED)
    done = threading.Event()
    threading.Thread(target=lambda: (process(api).destroy(), done.set()), daemon=True).start()
    assert done.wait(10)
    assert kb.REMOVE_FOR - 2.0 <= sum(slept) <= kb.REMOVE_FOR


def test_a_request_to_a_hung_api_server_times_out():
    """A server that takes the connection and never answers (a SIGSTOPped
    API server): the request ends with an unreachable error, even with a
    float timeout, which the client library would silently drop."""
    import socket
    from types import SimpleNamespace

    from hatchway.backends.kubernetes.api import Api
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    k = SimpleNamespace(kubeconfig=None, context=None, in_cluster=False,
                        server=f"https://127.0.0.1:{listener.getsockname()[1]}", ca_file=None,
                        token_file=None, cert_file=None, key_file=None)
    api, out = Api(k), []

    def post():
        try:
            api.call("POST", "/api/v1/namespaces/default/pods", {}, timeout=0.5)
        except KubernetesError as e:
            out.append(e)
    t = threading.Thread(target=post, daemon=True)
    t.start()
    t.join(30)
    listener.close()
    assert not t.is_alive() and len(out) == 1 and unreachable(out[0])
