"""Which PodSpec fields a session's pod may have: an allowlist, so that a
field this table does not know (a new volume type, a new way to reach a
secret) is refused rather than passed on.

Left out on purpose, each a route out of the pod: serviceAccountName and
serviceAccount (the account's API token and rights), nodeName (skips the
scheduler and its taints), imagePullSecrets, priorityClassName,
runtimeClassName, schedulerName, ephemeralContainers; volumes other than
emptyDir, downwardAPI and hostPath (secret, projected, configMap, nfs,
persistentVolumeClaim, csi, gitRepo, ...); env valueFrom other than the
pod's own fields, envFrom; probes and lifecycle hooks (their httpGet and
tcpSocket make the kubelet connect anywhere); volumeDevices,
mountPropagation, seLinuxOptions, sysctls.  The admin may let any of them
through by name (policy.allow_pod_fields, e.g. `nodeName`,
`volumes.persistentVolumeClaim`, `containers.lifecycle`).

A leaf is True (any value; the policy may still judge it), a dict a mapping
with those keys, a one-element list a list of such mappings.
"""

from __future__ import annotations

from hatchway.core.policy import Violation

ANY = True
PROFILE = {"type": ANY, "localhostProfile": ANY}
CONTAINER_SECURITY = {
    "runAsUser": ANY, "runAsGroup": ANY, "runAsNonRoot": ANY, "readOnlyRootFilesystem": ANY,
    "allowPrivilegeEscalation": ANY, "privileged": ANY, "procMount": ANY,
    "capabilities": {"add": ANY, "drop": ANY}, "seccompProfile": PROFILE,
}
POD_SECURITY = {
    "runAsUser": ANY, "runAsGroup": ANY, "runAsNonRoot": ANY, "fsGroup": ANY,
    "fsGroupChangePolicy": ANY, "supplementalGroups": ANY, "seccompProfile": PROFILE,
}
CONTAINER = {
    "name": ANY, "image": ANY, "imagePullPolicy": ANY, "command": ANY, "args": ANY,
    "workingDir": ANY,
    "env": [{"name": ANY, "value": ANY,
             "valueFrom": {"fieldRef": ANY, "resourceFieldRef": ANY}}],
    "resources": {"limits": ANY, "requests": ANY},
    "volumeMounts": [{"name": ANY, "mountPath": ANY, "readOnly": ANY, "subPath": ANY,
                      "subPathExpr": ANY}],
    "ports": [{"name": ANY, "containerPort": ANY, "protocol": ANY, "hostPort": ANY}],
    "securityContext": CONTAINER_SECURITY,
    "stdin": ANY, "stdinOnce": ANY, "tty": ANY,
    "terminationMessagePath": ANY, "terminationMessagePolicy": ANY,
}
VOLUME = {
    "name": ANY,
    "emptyDir": {"medium": ANY, "sizeLimit": ANY},
    "downwardAPI": ANY,                  # the pod's own labels and fields
    "hostPath": {"path": ANY, "type": ANY},   # judged against policy.mount_prefixes
}
POD = {
    "containers": [CONTAINER], "initContainers": [CONTAINER], "volumes": [VOLUME],
    "nodeSelector": ANY, "affinity": ANY, "tolerations": ANY,
    "topologySpreadConstraints": ANY, "securityContext": POD_SECURITY,
    "hostname": ANY, "subdomain": ANY, "setHostnameAsFQDN": ANY, "hostAliases": ANY,
    "dnsPolicy": ANY, "dnsConfig": ANY, "restartPolicy": ANY,
    "terminationGracePeriodSeconds": ANY, "activeDeadlineSeconds": ANY,
    "enableServiceLinks": ANY, "automountServiceAccountToken": ANY,
    "shareProcessNamespace": ANY,
    "hostNetwork": ANY, "hostPID": ANY, "hostIPC": ANY,   # policy.allow_host_namespaces
}


def check(value, extra: list[str], allow=POD, generic: str = "", shown: str = "") -> None:
    """Raise Violation at the first field of `value` (a PodSpec) that neither
    the table nor `extra` (dotted generic names) allows."""
    if allow is ANY:
        return
    if isinstance(allow, list):
        if not isinstance(value, list):
            raise Violation(f"kubernetes.pod.{shown}", "expected a list")
        for i, item in enumerate(value):
            check(item, extra, allow[0], generic, f"{shown}[{i}]")
        return
    if not isinstance(value, dict):
        raise Violation(f"kubernetes.pod.{shown}" if shown else "kubernetes.pod",
                        "expected a mapping")
    for k, v in value.items():
        g = f"{generic}.{k}" if generic else str(k)
        s = f"{shown}.{k}" if shown else str(k)
        if any(g == e or g.startswith(e + ".") for e in extra):
            continue
        if k not in allow:
            raise Violation(f"kubernetes.pod.{s}", "not allowed in a session's pod "
                            f"(policy.allow_pod_fields may allow {g})")
        check(v, extra, allow[k], g, s)
