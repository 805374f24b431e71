"""rbac.py: what `hatchway check` asks the API server's authorizer, and how
it reads the answers (a stand-in for the API answers SelfSubjectAccessReviews
as the test cluster does: tests/e2e/test_kubernetes.py drives the real one)."""

import pytest

from hatchway.backends.kubernetes import rbac
from hatchway.backends.kubernetes.api import KubernetesError


class Authorizer:
    """Answers reviews from a set of allowed (verb, resource, subresource)."""

    def __init__(self, allowed, fail=None):
        self.allowed, self.fail, self.asked = set(allowed), fail, []

    def call(self, method, path, body=None, **_):
        assert (method, path) == ("POST", rbac.REVIEWS)
        if self.fail:
            raise self.fail
        attrs = body["spec"]["resourceAttributes"]
        self.asked.append(attrs)
        key = (attrs["verb"], attrs["resource"], attrs.get("subresource", ""))
        return {"status": {"allowed": key in self.allowed}}


def test_nothing_missing_when_everything_is_allowed():
    api = Authorizer(rbac.SESSIONS + rbac.FORWARDING)
    assert rbac.missing(api, "ns1", rbac.SESSIONS + rbac.FORWARDING) == []
    assert all(a["namespace"] == "ns1" for a in api.asked)
    assert {"namespace": "ns1", "verb": "create", "resource": "pods",
            "subresource": "exec"} in api.asked


def test_the_missing_ones_are_named_in_order():
    api = Authorizer([n for n in rbac.SESSIONS if n != ("get", "pods", "exec")])
    assert rbac.missing(api, "default", rbac.SESSIONS + rbac.FORWARDING) == [
        "get pods/exec", "get pods/portforward", "create pods/portforward"]


@pytest.mark.parametrize("answer", [{}, {"status": {}}, {"status": {"allowed": "yes"}}, None])
def test_an_answer_that_does_not_say_allowed_counts_as_missing(answer):
    class Odd(Authorizer):
        def call(self, *a, **kw):
            return answer
    assert rbac.missing(Odd([]), "default", [("list", "pods", "")]) == ["list pods"]


def test_both_websocket_verbs_are_needed():
    """Before the AuthorizePodWebsocketUpgradeCreatePermission gate a websocket
    GET is authorized as `get`, after it as `get` and `create`."""
    assert {("get", "pods", "exec"), ("create", "pods", "exec")} <= set(rbac.SESSIONS)
    assert set(rbac.FORWARDING) == {("get", "pods", "portforward"),
                                    ("create", "pods", "portforward")}


def test_the_backend_says_when_it_cannot_ask():
    from hatchway.backends.kubernetes.backend import KubernetesBackend
    b = KubernetesBackend.__new__(KubernetesBackend)
    b.ns, b.api = "default", Authorizer([], fail=KubernetesError(0, "connection refused"))
    assert b.permission_problems(rbac.SESSIONS, "x") == \
        ([], ["kubernetes: permissions not checked (connection refused)"])
    b.api = Authorizer([])
    problems, notes = b.permission_problems(rbac.FORWARDING, "every port forward is refused")
    assert problems == ["kubernetes: the credentials may not get pods/portforward, create "
                        "pods/portforward in namespace default, so every port forward is "
                        "refused (grant them with a Role and RoleBinding)"] and notes == []
