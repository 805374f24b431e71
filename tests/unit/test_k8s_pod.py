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


def check(c):
    return policy.check(c, "alice")


NO_LIMITS = {"max_memory": 0, "max_cpus": 0}


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
        check(cfg(pod))
    assert e.value.field == field


def test_what_the_admin_may_allow():
    pod = {"hostNetwork": True,
           "containers": [{"name": "a", "securityContext": {
               "privileged": True, "capabilities": {"add": ["CAP_NET_ADMIN"]}}}]}
    check(cfg(pod, {"allow_host_namespaces": True, "allow_privileged": True,
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
        check(c)
    else:
        with pytest.raises(policy.Violation, match=r"volumes\[0\]\.hostPath"):
            check(c)


def test_host_path_refused_without_any_prefix():
    with pytest.raises(policy.Violation):
        check(cfg({"volumes": [{"name": "v", "hostPath": {"path": "/srv"}}]}))


def test_limits_are_capped_like_dockers():
    c = check(cfg({"containers": [{"name": "a"}]}, {"max_memory": "1Gi", "max_cpus": 2}))
    assert c["kubernetes"]["pod"]["containers"][0]["resources"]["limits"] == \
        {"memory": str(1 << 30), "cpu": "2.0"}
    with pytest.raises(policy.Violation, match="exceeds policy.max_memory"):
        check(cfg({"containers": [{"name": "a", "resources": {"limits": {
            "memory": "2Gi"}}}]}, {"max_memory": "1Gi"}))


def limits(c, group="containers"):
    return [x["resources"]["limits"] for x in c["kubernetes"]["pod"][group]]


def test_pods_are_limited_by_default():
    assert limits(check(cfg())) == [{"memory": str(1 << 30), "cpu": "1.0"}]


def test_zero_limits_mean_unlimited_and_are_capped():
    # the kubelet sets no cgroup limit for 0: a webhook answering "0" was unlimited
    c = check(cfg({"containers": [{"name": "a", "resources": {"limits": {
        "memory": "0", "cpu": "0"}}}]}, {"max_memory": "1Gi", "max_cpus": 2}))
    assert limits(c) == [{"memory": str(1 << 30), "cpu": "2.0"}]
    with pytest.raises(policy.Violation, match="cannot read the quantity"):
        check(cfg({"containers": [{"name": "a", "resources": {"limits": {"memory": "-1"}}}]}))


def test_every_container_is_limited_and_together_under_the_maximum():
    side = {"name": "side", "resources": {"limits": {"memory": "256Mi", "cpu": "250m"}}}
    c = check(cfg({"containers": [{"name": "a"}, side],
                   "initContainers": [{"name": "init"}]}, {"max_memory": "1Gi", "max_cpus": 1}))
    # the session container gets what the sidecar leaves; an init container
    # runs alone, before them, and may have all of it
    assert limits(c) == [{"memory": str(768 << 20), "cpu": "0.75"},
                         {"memory": "256Mi", "cpu": "250m"}]
    assert limits(c, "initContainers") == [{"memory": str(1 << 30), "cpu": "1.0"}]
    with pytest.raises(policy.Violation, match=r"containers\[1\].resources.limits.memory: "
                       "every container beside the session's needs a memory limit"):
        check(cfg({"containers": [{"name": "a"}, {"name": "side"}]}))
    big = {"name": "side", "resources": {"limits": {"memory": "1Gi", "cpu": "1"}}}
    with pytest.raises(policy.Violation, match="add up to more than policy.max_memory"):
        check(cfg({"containers": [{"name": "a", "resources": {"limits": {
            "memory": "512Mi", "cpu": "500m"}}}, big]}))
    with pytest.raises(policy.Violation, match="nothing of policy.max_memory is left"):
        check(cfg({"containers": [{"name": "a"}, big]}))


# ------------------------------------------------------------------ the allowlist

@pytest.mark.parametrize("pod, field", [
    ({"serviceAccountName": "admin"}, "kubernetes.pod.serviceAccountName"),
    ({"serviceAccount": "admin"}, "kubernetes.pod.serviceAccount"),
    ({"nodeName": "control-plane"}, "kubernetes.pod.nodeName"),
    ({"imagePullSecrets": [{"name": "x"}]}, "kubernetes.pod.imagePullSecrets"),
    ({"priorityClassName": "system-node-critical"}, "kubernetes.pod.priorityClassName"),
    ({"runtimeClassName": "unsafe"}, "kubernetes.pod.runtimeClassName"),
    ({"ephemeralContainers": [{"name": "e"}]}, "kubernetes.pod.ephemeralContainers"),
    ({"volumes": [{"name": "t", "secret": {"secretName": "admin-token"}}]},
     "kubernetes.pod.volumes[0].secret"),
    ({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {
        "path": "t"}}]}}]}, "kubernetes.pod.volumes[0].projected"),
    ({"volumes": [{"name": "n", "nfs": {"server": "10.0.0.1", "path": "/"}}]},
     "kubernetes.pod.volumes[0].nfs"),
    ({"volumes": [{"name": "c", "configMap": {"name": "kube-proxy"}}]},
     "kubernetes.pod.volumes[0].configMap"),
    ({"volumes": [{"name": "p", "persistentVolumeClaim": {"claimName": "bobs"}}]},
     "kubernetes.pod.volumes[0].persistentVolumeClaim"),
    ({"volumes": [{"name": "g", "gitRepo": {"repository": "x"}}]},
     "kubernetes.pod.volumes[0].gitRepo"),
    ({"containers": [{"name": "a", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {
        "name": "s", "key": "k"}}}]}]}, "kubernetes.pod.containers[0].env[0].valueFrom.secretKeyRef"),
    ({"containers": [{"name": "a", "envFrom": [{"secretRef": {"name": "s"}}]}]},
     "kubernetes.pod.containers[0].envFrom"),
    ({"containers": [{"name": "a", "livenessProbe": {"httpGet": {"host": "169.254.169.254",
                                                                 "port": 80}}}]},
     "kubernetes.pod.containers[0].livenessProbe"),
    ({"containers": [{"name": "a", "volumeMounts": [{"name": "v", "mountPath": "/v",
                                                     "mountPropagation": "Bidirectional"}]}]},
     "kubernetes.pod.containers[0].volumeMounts[0].mountPropagation"),
    ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
     "kubernetes.pod.securityContext.seccompProfile"),
    ({"containers": [{"name": "a", "securityContext": {"seccompProfile": {
        "type": "Unconfined"}}}]}, "kubernetes.pod.containers[0].securityContext.seccompProfile"),
    ({"containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": True}}]},
     "kubernetes.pod.containers[0].securityContext.allowPrivilegeEscalation"),
    ({"whatever": 1}, "kubernetes.pod.whatever"),
])
def test_only_allowlisted_pod_fields(pod, field):
    with pytest.raises(policy.Violation) as e:
        check(cfg(pod))
    assert e.value.field == field


def test_the_admin_may_allow_more_pod_fields():
    pod = {"nodeName": "n1", "serviceAccountName": "builder",
           "volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "cache"}}]}
    check(cfg(pod, {"allow_pod_fields": ["nodeName", "serviceAccountName",
                                         "volumes.persistentVolumeClaim"]}))
    with pytest.raises(policy.Violation, match="policy.allow_pod_fields may allow volumes.nfs"):
        check(cfg({"volumes": [{"name": "n", "nfs": {}}]}, {"allow_pod_fields": ["nodeName"]}))


def test_a_usual_pod_passes():
    pod = {"containers": [{"name": "a", "image": "debian", "env": [
               {"name": "X", "value": "1"},
               {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
           "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
           "securityContext": {"runAsUser": 1000, "runAsNonRoot": True,
                               "seccompProfile": {"type": "RuntimeDefault"}}}],
           "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
           "nodeSelector": {"pool": "users"}, "tolerations": [{"key": "users"}]}
    check(cfg(pod))


def test_every_container_drops_the_baseline_capabilities_and_cannot_escalate():
    c = check(cfg({"containers": [{"name": "a"}, {"name": "b", "securityContext": {
        "capabilities": {"drop": ["chown"]}}, "resources": {"limits": {
            "memory": "1", "cpu": "1m"}}}]}))
    scs = [x["securityContext"] for x in c["kubernetes"]["pod"]["containers"]]
    assert scs[0] == {"capabilities": {"drop": ["NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"]},
                      "allowPrivilegeEscalation": False}
    assert scs[1]["capabilities"]["drop"] == ["CHOWN", "NET_RAW", "MKNOD", "AUDIT_WRITE",
                                              "SETFCAP"]
    c = check(cfg({}, {"allow_new_privileges": True, "allow_capabilities": ["NET_RAW"]}))
    sc = c["kubernetes"]["pod"]["containers"][0]["securityContext"]
    assert sc == {"capabilities": {"drop": ["MKNOD", "AUDIT_WRITE", "SETFCAP"]}}


@pytest.mark.parametrize("path", ["/run", "/var/run", "/var", "/var/lib/kubelet/pods"])
def test_host_paths_above_or_in_the_engines_are_refused(path):
    with pytest.raises(policy.Violation, match="may never be mounted"):
        check(cfg({"volumes": [{"name": "v", "hostPath": {"path": path}}]},
                  {"mount_prefixes": ["/"]}))


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
