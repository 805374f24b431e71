"""What the daemon's credentials may do in its namespace, as the API server's
own authorizer answers (SelfSubjectAccessReview), so that `hatchway check`
names a missing permission instead of the admin meeting a 403 at the first
login or the first forward.

The exec and portforward streams are websockets, which are GET requests:
servers before the AuthorizePodWebsocketUpgradeCreatePermission gate
(Kubernetes 1.30/1.31) authorize them as `get`, later ones as `get` and
`create`; so both are needed to work on either.
"""

from __future__ import annotations

REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"

# (verb, resource, subresource): every call the backend makes
SESSIONS = (("create", "pods", ""), ("get", "pods", ""), ("list", "pods", ""),
            ("delete", "pods", ""), ("get", "pods", "exec"), ("create", "pods", "exec"))
FORWARDING = (("get", "pods", "portforward"), ("create", "pods", "portforward"))


def review(ns: str, verb: str, resource: str, subresource: str) -> dict:
    attributes = {"namespace": ns, "verb": verb, "resource": resource}
    if subresource:
        attributes["subresource"] = subresource
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes}}


def name(verb: str, resource: str, subresource: str) -> str:
    return f"{verb} {resource}/{subresource}" if subresource else f"{verb} {resource}"


def missing(api, ns: str, needs) -> list[str]:
    """The permissions in `needs` the credentials lack ("create pods/exec"),
    in order.  KubernetesError when the server cannot be asked."""
    out = []
    for need in needs:
        answer = api.call("POST", REVIEWS, body=review(ns, *need)) or {}
        if (answer.get("status") or {}).get("allowed") is not True:
            out.append(name(*need))
    return out
