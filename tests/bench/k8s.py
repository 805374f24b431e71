"""Kubernetes rows of `make bench` (`--only k8s`, opt-in: it brings up the
real test cluster, tests/k8s_cluster.py, which takes its own lock and a
minute or two).

  start       ssh alice true on the Kubernetes backend
              vs a bare pod: create, wait until its container runs, exec
              `true` over the exec websocket until its status arrives (the
              same API client as the backend, polling every 20 ms; deletion
              after the status, untimed, as Hatchway deletes after its reply);
              and that plus a plain sshd login
  throughput  N MB out of / into a session (the websocket relay; a session
              starts its pod, so the time includes that start)
              vs a bare pod of the same image on the same cluster, created and
              waited for as above, then `kubectl exec -i` into it, alone and
              piped through one ssh hop (the same sshd, to a host command);
              and `kubectl exec -i` into a pod that already runs (the
              transfer alone)

Asserts nothing; the whole pipeline checks that every byte arrived.
"""

from __future__ import annotations

import shlex
import time
from types import SimpleNamespace

from tests import k8s_cluster
from tests.e2e.backends import k8s_config, pods

NS = "default"
FLOOR_POD = "hatchway-bench-floor"
IDLE = ["/bin/sh", "-c", "while :; do sleep 3600; done"]


def _api(kubeconfig: str):
    """The backend's own API client (work tree), on the admin kubeconfig."""
    from hatchway.backends.kubernetes.api import Api
    k = SimpleNamespace(kubeconfig=kubeconfig, context=None, in_cluster=False, server=None,
                        ca_file=None, token_file=None, cert_file=None, key_file=None)
    return Api(k)


def _manifest(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": k8s_cluster.NODE, "restartPolicy": "Never",
                     "terminationGracePeriodSeconds": 0, "enableServiceLinks": False,
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": k8s_cluster.IMAGE,
                                     "imagePullPolicy": "Never", "command": IDLE}]}}


def _create_running(api, name: str, timeout: float = 60) -> None:
    api.call("POST", f"/api/v1/namespaces/{NS}/pods", _manifest(name))
    deadline = time.monotonic() + timeout
    while True:
        pod = api.call("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if "running" in (cs.get("state") or {}):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench pod {name} did not run within {timeout:g}s")
        time.sleep(0.02)


def _exec_true(api, name: str) -> None:
    """Exec `true` and read the stream to its end (the status frame comes last)."""
    import websocket
    ws = api.exec_socket(NS, name, "c", ["true"], stdin=False, stdout=True, stderr=True,
                         tty=False)
    status = None
    try:
        while True:
            try:
                frame = ws.recv()
            except websocket.WebSocketConnectionClosedException:
                break
            if not frame:
                break
            if isinstance(frame, str):
                frame = frame.encode()
            if frame[0] == 3:
                status = frame[1:]
    finally:
        ws.close()
    if status is None or b"Success" not in status:
        raise RuntimeError(f"exec true in {name}: {status!r}")


def _delete(api, name: str) -> None:
    from hatchway.backends.kubernetes.backend import delete_pod
    delete_pod(api, NS, name, wait=60)


def _pct(values, q):
    from tests.bench.run import pct
    return pct(values, q)


def start(hw, api, table, n: int, warmup: int) -> None:
    from tests.bench.run import ms, timed
    res: dict[str, list[float]] = {"hatchway": [], "sshd": [], "pod": []}
    for i in range(warmup + n):
        h = timed(hw.ssh_argv("alice", "true"))
        s = timed(hw.ssh_argv("carol", "true"))
        name = f"{FLOOR_POD}-start-{i}"
        t = time.perf_counter()
        try:
            _create_running(api, name)
            _exec_true(api, name)
            p = time.perf_counter() - t
        finally:
            _delete(api, name)
        if i >= warmup:
            res["hatchway"].append(h)
            res["sshd"].append(s)
            res["pod"].append(p)
    sums = [a + b for a, b in zip(res["sshd"], res["pod"])]
    h50, h95 = _pct(res["hatchway"], .5), _pct(res["hatchway"], .95)
    for name, vals in (("bare pod: create, running, exec `true`", res["pod"]),
                       ("plain sshd → host `true` + bare pod", sums)):
        f50, f95 = _pct(vals, .5), _pct(vals, .95)
        table.add("Kubernetes: start latency `ssh host true` (p50 / p95)",
                  f"{ms(h50)} / {ms(h95)}", name, f"{ms(f50)} / {ms(f95)}",
                  f"{h50 / f50:.2f}× / {h95 / f95:.2f}×")


def throughput(hw, api, kubeconfig: str, table, size_mb: int, runs: int) -> None:
    """Every Hatchway run starts a pod, so its floors do too: a bare pod
    created and waited for (timed), then `kubectl exec -i` into it; and, for
    the transfer alone, `kubectl exec -i` into a pod that already runs."""
    from tests.bench.run import MB, timed
    size = size_mb * MB
    check = f'test "$(cat)" -eq {size}'

    def kx(pod: str) -> str:
        return shlex.join(["kubectl", "--kubeconfig", kubeconfig, "-n", NS, "exec", "-i", pod,
                           "-c", "c", "--"])
    ssh_out = shlex.join(hw.ssh_argv("alice", f"head -c {size} /dev/zero"))
    ssh_in = shlex.join(hw.ssh_argv("alice", "wc -c"))
    plain_out = shlex.join(hw.ssh_argv("carol", f"head -c {size} /dev/zero"))
    plain_in = shlex.join(hw.ssh_argv("carol", "wc -c"))
    floors = {  # name: pod -> shell line
        "out_kubectl": lambda pod: f"{kx(pod)} head -c {size} /dev/zero | wc -c | sh -c '{check}'",
        "out_both": lambda pod: f"{kx(pod)} head -c {size} /dev/zero | {plain_in} | sh -c '{check}'",
        "in_kubectl": lambda pod: f"head -c {size} /dev/zero | {kx(pod)} wc -c | sh -c '{check}'",
        "in_both": lambda pod: f"{plain_out} | {kx(pod)} wc -c | sh -c '{check}'",
    }
    res: dict[str, list[float]] = {k: [] for k in
                                   ["out", "in", *floors, "out_running", "in_running"]}
    for i in range(1 + runs):                       # one warm-up round
        got = {"out": timed(f"{ssh_out} | wc -c | sh -c '{check}'", shell=True),
               "in": timed(f"head -c {size} /dev/zero | {ssh_in} | sh -c '{check}'", shell=True)}
        for name, line in floors.items():
            pod = f"{FLOOR_POD}-{name.replace('_', '-')}-{i}"
            t = time.perf_counter()
            try:
                _create_running(api, pod)
                got[name] = time.perf_counter() - t + timed(line(pod), shell=True)
            finally:
                _delete(api, pod)
        got["out_running"] = timed(floors["out_kubectl"](FLOOR_POD), shell=True)
        got["in_running"] = timed(floors["in_kubectl"](FLOOR_POD), shell=True)
        if i:
            for k, v in got.items():
                res[k].append(v)
    for way, label in (("out", f"{size_mb} MB out of a session"),
                       ("in", f"{size_mb} MB into a session")):
        h = size_mb / _pct(res[way], .5)
        for suffix, name in (("_kubectl", "bare pod created, then `kubectl exec -i`"),
                             ("_both", "bare pod, `kubectl exec -i` piped through one ssh hop"),
                             ("_running", "`kubectl exec -i` into a running pod (no start)")):
            f = size_mb / _pct(res[way + suffix], .5)
            table.add(f"Kubernetes: throughput, {label} incl. its start (median)",
                      f"{h:.0f} MB/s", name, f"{f:.0f} MB/s", f"{h / f:.2f}×")


def measure(hw, table, size_mb: int, runs: int, n: int, warmup: int) -> None:
    import sys
    with k8s_cluster.running() as kubeconfig:
        cluster = {"kubeconfig": kubeconfig, "external": False}
        hw.reconfigure(k8s_config(cluster, hw.tmp))
        api = _api(kubeconfig)
        try:
            start(hw, api, table, n, warmup)
            print("kubernetes start done", file=sys.stderr)
            _create_running(api, FLOOR_POD)
            try:
                throughput(hw, api, kubeconfig, table, size_mb, runs)
            finally:
                _delete(api, FLOOR_POD)
        finally:
            hw.reconfigure(None)
            if pods(cluster):
                print("warning: session pods left on the cluster", file=sys.stderr)
