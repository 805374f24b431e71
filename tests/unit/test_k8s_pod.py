"""The pod a Kubernetes session gets: the admin policy on the pod template and
what the backend itself puts in (hatchway/daemon/policy.py check_pod,
hatchway/backends/kubernetes/backend.py pod_manifest).  No cluster needed."""

import pytest

from hatchway.core import config
from hatchway.daemon import policy
from hatchway.backends.base import BackendError, SessionSpec

from .typed import whole


def cfg(pod=None, pol=None, **k):
    c = config.defaults()
    c["backend"] = "kubernetes"
    c["kubernetes"].update(config.validate(dict(k, pod=pod or {}), config.schema().fields["kubernetes"],
                                           "kubernetes"))
    c["policy"].update(config.validate(pol or {}, config.schema().fields["policy"], "policy"))
    return c


@pytest.mark.parametrize("pod, field", [
    ({"hostNetwork": True}, "kubernetes.pod.hostNetwork"),
    ({"hostPID": True}, "kubernetes.pod.hostPID"),
    ({"hostIPC": True}, "kubernetes.pod.hostIPC"),
    ({"containers": [{"name": "a", "securityContext": {"privileged": True}}]},
     "kubernetes.pod.containers[0].securityContext"),
    ({"initContainers": [{"name": "i", "securityContext": {"privileged": True}}]},
     "kubernetes.pod.initContainers[0].securityContext"),
    ({"containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]},
     "kubernetes.pod.containers[0].securityContext"),
    ({"containers": [{"name": "a", "ports": [{"containerPort": 22, "hostPort": 22}]}]},
     "kubernetes.pod.containers[0].ports"),
])
def test_what_the_policy_refuses_by_default(pod, field):
    with pytest.raises(policy.Violation) as e:
        policy.check(cfg(pod))
    assert e.value.field == field


def test_what_the_admin_may_allow():
    pod = {"hostNetwork": True,
           "containers": [{"name": "a", "securityContext": {
               "privileged": True, "capabilities": {"add": ["CAP_NET_ADMIN"]}}}]}
    policy.check(cfg(pod, {"allow_host_namespaces": True, "allow_privileged": True,
                           "allow_capabilities": ["NET_ADMIN"]}))


@pytest.mark.parametrize("path, ok", [
    ("/srv/sites/alice", True), ("/srv/sites", True), ("/srv/sites/../secret", False),
    ("/srv/sitesX", False), ("srv/sites/a", False), ("/", False), ("/var/run/docker.sock", False),
])
def test_host_path_volumes_only_under_the_prefixes(path, ok):
    c = cfg({"volumes": [{"name": "v", "hostPath": {"path": path}}]},
            {"mount_prefixes": ["/srv/sites", "/"]} if path == "/" else
            {"mount_prefixes": ["/srv/sites"]})
    if ok:
        policy.check(c)
    else:
        with pytest.raises(policy.Violation, match=r"volumes\[0\]\.hostPath"):
            policy.check(c)


def test_host_path_refused_without_any_prefix():
    with pytest.raises(policy.Violation):
        policy.check(cfg({"volumes": [{"name": "v", "hostPath": {"path": "/srv"}}]}))


def test_limits_are_capped_like_dockers():
    c = policy.check(cfg({"containers": [{"name": "a"}]}, {"max_memory": "1Gi", "max_cpus": 2}))
    assert c["kubernetes"]["pod"]["containers"][0]["resources"]["limits"] == \
        {"memory": str(1 << 30), "cpu": "2.0"}
    with pytest.raises(policy.Violation, match="exceeds policy.max_memory"):
        policy.check(cfg({"containers": [{"name": "a", "resources": {"limits": {
            "memory": "2Gi"}}}]}, {"max_memory": "1Gi"}))


def spec(c, pty=False):
    return SessionSpec(user="Alice.B", uid=1000, session_id="ab" * 16, connection_id="c1",
                       kind="exec", argv=["id"], pty=pty, term="xterm" if pty else None,
                       size=(24, 80) if pty else None, env={"LANG": "C.UTF-8"},
                       remote_address="127.0.0.1:1", config=whole(c),
                       labels={"io.hatchway.managed": "true", "io.hatchway.user": "Alice.B",
                               "io.hatchway.process": "boot-id:123:456"})


def test_the_backend_pod():
    from hatchway.backends.kubernetes.backend import pod_manifest
    c = cfg({"containers": [{"name": "main", "image": "busybox",
                             "env": [{"name": "LANG", "value": "old"}]}],
             "serviceAccountName": "x"}, image="local/busybox:1")
    pod, container = pod_manifest(spec(c, pty=True))
    assert container == "main"
    meta, ps = pod["metadata"], pod["spec"]
    assert meta["name"] == "hatchway-alice-b-" + "ab" * 6
    # ':' is not allowed in a label value: the owner token is an annotation only
    assert "io.hatchway.process" not in meta["labels"]
    assert meta["annotations"]["io.hatchway.process"] == "boot-id:123:456"
    assert meta["labels"]["io.hatchway.managed"] == "true"
    assert ps["restartPolicy"] == "Never" and ps["automountServiceAccountToken"] is False
    main = ps["containers"][0]
    assert main["image"] == "local/busybox:1"
    assert {"name": "LANG", "value": "C.UTF-8"} in main["env"]
    assert {"name": "LANG", "value": "old"} not in main["env"]
    assert {"name": "TERM", "value": "xterm"} in main["env"]
    assert main["command"] == c["kubernetes"]["idle_command"]


def test_the_backend_pod_needs_an_image_and_the_named_container():
    from hatchway.backends.kubernetes.backend import pod_manifest
    with pytest.raises(BackendError, match="no image"):
        pod_manifest(spec(cfg()))
    with pytest.raises(BackendError, match="no container named x"):
        pod_manifest(spec(cfg(container="x", image="i")))


def test_service_account_token_only_when_configured():
    from hatchway.backends.kubernetes.backend import pod_manifest
    pod, _ = pod_manifest(spec(cfg(image="i", service_account_token=True)))
    assert pod["spec"]["automountServiceAccountToken"] is True


def test_importing_hatchway_does_not_import_the_client():
    import subprocess
    import sys
    code = ("import sys, hatchway.daemon.main, hatchway.daemon.session, hatchway.backends, hatchway.backends.docker.backend; "
            "print('kubernetes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
