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

from tests import k8s_cluster
from tests.k8s_cluster import STATE

from .backends import k8s_config, pods
from .stack import run, wait_for


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
        assert notes["io.hatchway.process"].count(":") == 1
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

def test_check_names_the_permissions_the_credentials_lack(stack, k8s):
    """`hatchway check` asks the API server's authorizer what the configured
    credentials may do and names what is missing, for sessions and, with
    port forwarding on, for the pods' portforward.  A user of the test
    cluster's with no role (static token, tests/setup/k8s-cluster), then
    given a Role step by step."""
    if k8s["external"]:
        pytest.skip("uses the test cluster's static tokens")
    import yaml
    ca, token = stack.tmp / "limited-ca.crt", stack.tmp / "limited-token"
    shutil.copy(STATE / "pki/ca.crt", ca)
    token.write_text(next(line.split(",")[0] for line in
                          (STATE / "pki/tokens.csv").read_text().splitlines()
                          if ",hatchway-limited," in line) + "\n")
    token.chmod(0o600)
    config = stack.tmp / "limited.yaml"
    conf = k8s_config(k8s, stack.tmp, server="https://127.0.0.1:16443", ca_file=str(ca),
                      token_file=str(token))
    conf["session"]["port_forwarding"] = True
    config.write_text(yaml.safe_dump(conf))
    kc, ns = k8s["kubeconfig"], "/apis/rbac.authorization.k8s.io/v1/namespaces/default"

    def kubernetes_lines():
        out = run(["hatchway", "check", "--config", str(config)], check=False).stdout
        return [line for line in out.splitlines() if " kubernetes: " in line]

    sessions = ("create pods, get pods, list pods, delete pods, get pods/exec, "
                "create pods/exec")
    forwards = "get pods/portforward, create pods/portforward"
    lines = kubernetes_lines()
    assert f"FAIL kubernetes: the credentials may not {sessions} in namespace default, so no " \
        "session can start (grant them with a Role and RoleBinding)" in lines, lines
    assert f"FAIL kubernetes: the credentials may not {forwards} in namespace default, so " \
        "every port forward is refused (grant them with a Role and RoleBinding)" in lines, lines

    rules = [{"apiGroups": [""], "resources": ["pods"],
              "verbs": ["create", "get", "list", "delete"]},
             {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]}]
    k8s_cluster.api(kc, f"{ns}/roles", "POST", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "hatchway-limited"}, "rules": rules})
    try:
        k8s_cluster.api(kc, f"{ns}/rolebindings", "POST", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "hatchway-limited"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "hatchway-limited"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "hatchway-limited"}]})
        # RBAC answers from a cache the API server refreshes from its watch
        wait_for(lambda: not any(sessions in line for line in kubernetes_lines()), 30, 0.5,
                 what="the Role to take effect")
        lines = kubernetes_lines()
        assert "ok   kubernetes: reachable at https://127.0.0.1:16443, namespace default" \
            in lines, lines
        assert [line for line in lines if line.startswith("FAIL")] == [
            f"FAIL kubernetes: the credentials may not {forwards} in namespace default, so "
            "every port forward is refused (grant them with a Role and RoleBinding)"], lines

        rules.append({"apiGroups": [""], "resources": ["pods/portforward"],
                      "verbs": ["get", "create"]})
        k8s_cluster.api(kc, f"{ns}/roles/hatchway-limited", "PUT", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "hatchway-limited"}, "rules": rules})
        wait_for(lambda: not any(line.startswith("FAIL") for line in kubernetes_lines()), 30,
                 0.5, what="the portforward rule to take effect")
    finally:
        for kind in ("rolebindings", "roles"):
            try:
                k8s_cluster.api(kc, f"{ns}/{kind}/hatchway-limited", "DELETE")
            except Exception:
                pass


# ------------------------------------------------------------------ the admin policy on pods

@pytest.fixture
def config_webhook(stack):
    from .webhook_servers import ContainerSSHServer
    srv = ContainerSSHServer()
    yield srv
    srv.close()


def with_webhook(k8s, stack, srv, **policy):
    cfg = k8s_config(k8s, stack.tmp)
    cfg["config_webhook"] = {"url": f"{srv.url}/config", "timeout": "5s"}
    cfg["policy"].update(policy)
    stack.reconfigure(cfg)


def pod_of_a_session(stack, k8s, user="alice"):
    """Start a session, read its pod from the API, end the session."""
    p = subprocess.Popen(stack.ssh_argv(user, "echo ready; sleep 1000"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n", p.stderr.read()
        [pod] = pods(k8s, user=user)
        return pod
    finally:
        p.kill()
        p.wait()
        wait_for(lambda: not pods(k8s), 30, 0.2, what="the session pod to be deleted")


def amounts(limits: dict) -> dict:
    """Resource quantities as numbers (the API server rewrites 0.5 as 500m)."""
    units = {"": 1, "m": 0.001, "Ki": 1024, "Mi": 1 << 20, "Gi": 1 << 30, "k": 1000, "M": 10**6}

    def number(q: str) -> float:
        digits = q.rstrip("".join(set("".join(units))))
        return round(float(digits) * units[q[len(digits):]], 6)
    return {k: number(v) for k, v in limits.items()}


def session_container(limits=None, **extra):
    c = {"name": "session", "imagePullPolicy": "Never", **extra}
    if limits is not None:
        c["resources"] = {"limits": limits}
    return c


def test_zero_limits_from_the_webhook_are_capped(stack, k8s, config_webhook):
    # "0" is no limit to the kubelet: it must not slip under the maximum
    config_webhook.configs["alice"] = {"kubernetes": {"pod": {"spec": {
        "containers": [session_container({"memory": "0", "cpu": "0"})]}}}}
    with_webhook(k8s, stack, config_webhook, max_memory="256Mi", max_cpus=0.5)
    pod = pod_of_a_session(stack, k8s)
    assert amounts(pod["spec"]["containers"][0]["resources"]["limits"]) == \
        {"memory": 256 << 20, "cpu": 0.5}


@pytest.mark.parametrize("spec,field", [
    ({"serviceAccountName": "default"}, "serviceAccountName"),
    ({"containers": [session_container(), session_container(
        name="side", image=k8s_cluster.IMAGE, command=["sleep", "3600"])]},
     "containers[1].resources.limits.memory"),
    ({"volumes": [{"name": "run", "hostPath": {"path": "/run"}}]}, "volumes[0].hostPath"),
    ({"containers": [session_container(securityContext={
        "seccompProfile": {"type": "Unconfined"}})]}, "containers[0].securityContext.seccompProfile"),
])
def test_a_webhooks_pod_outside_the_policy_is_refused(stack, k8s, config_webhook, spec, field):
    config_webhook.configs["alice"] = {"kubernetes": {"pod": {"spec": spec}}}
    with_webhook(k8s, stack, config_webhook, mount_prefixes=["/"])
    p = stack.ssh("alice", "echo should not run")
    assert p.returncode == 255 and p.stdout == b"", p.stdout
    assert p.stderr.decode().startswith(f"hatchway: policy refuses kubernetes.pod.{field}: "), \
        p.stderr
    assert not pods(k8s)


def test_every_container_is_limited_and_unprivileged(stack, k8s):
    cfg = k8s_config(k8s, stack.tmp)
    cfg["kubernetes"]["pod"]["containers"].append(session_container(
        {"memory": "64Mi", "cpu": "100m"}, name="side", image=k8s_cluster.IMAGE,
        command=["sleep", "3600"]))
    cfg["policy"].update(max_memory="512Mi", max_cpus=1)
    stack.reconfigure(cfg)
    p = stack.ssh("alice", "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status")
    status = dict(line.split(":\t") for line in p.stdout.decode().splitlines())
    assert status["NoNewPrivs"] == "1" and not int(status["CapEff"], 16) & (1 << 13), status
    pod = pod_of_a_session(stack, k8s)
    session, side = pod["spec"]["containers"]
    assert amounts(session["resources"]["limits"]) == {"memory": 448 << 20, "cpu": 0.9}
    assert amounts(side["resources"]["limits"]) == {"memory": 64 << 20, "cpu": 0.1}
    for c in (session, side):
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"NET_RAW", "MKNOD"} <= set(c["securityContext"]["capabilities"]["drop"])


# ------------------------------------------------------------------ hatchway users remove

def test_users_remove_ends_pods_and_deletes_the_account_without_docker(stack, k8s):
    """On a Kubernetes host there may be no dockerd at all: `users remove`
    asks the configured backend, ends the user's pod and session, and
    deletes the account."""
    cfg = k8s_config(k8s, stack.tmp)
    cfg["docker"] = {"host": "unix:///nonexistent/docker.sock"}      # nothing to ask there
    stack.reconfigure(cfg)
    key = stack.keygen("kim")
    run(["hatchway", "users", "add", "kim", "--key", f"{key}.pub", "--db", str(stack.db)])
    try:
        p = subprocess.Popen(stack.ssh_argv("kim", "echo ready; sleep 1000"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        assert p.stdout.readline() == b"ready\n", p.stderr.read()
        assert len(pods(k8s, user="kim")) == 1
        out = run(["hatchway", "users", "remove", "kim", "--db", str(stack.db)])
        assert (out.stdout, out.stderr) == ("removed user kim\n", "")
        p.communicate(timeout=60)
        assert p.returncode != 0
        wait_for(lambda: not pods(k8s, user="kim"), 30, 0.2, what="kim's pod to go")
        assert run(["getent", "passwd", "kim"], check=False).returncode == 2
    finally:
        run(["hatchway", "users", "remove", "kim", "--db", str(stack.db)], check=False)
