"""The stack on either backend: Docker (the stack's default) or Kubernetes on
the real test cluster (tests/k8s_cluster.py), with one view of the session
containers/pods for the tests that run on both (test_on_each_backend.py) and
the Kubernetes config the Kubernetes tests use.

`HATCHWAY_E2E_KUBECONFIG=/path` runs the Kubernetes half against that cluster
instead (image from HATCHWAY_E2E_K8S_IMAGE, default busybox; the cluster must
be able to schedule a pod, and reach this host for the HUP checks).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

from tests import k8s_cluster

from .stack import run, token_pid, wait_for

BACKENDS = ["docker", "kubernetes"]
EXTERNAL = os.environ.get("HATCHWAY_E2E_KUBECONFIG")


def _inline_kubeconfig(src: str, dst: Path) -> None:
    """The cluster's admin kubeconfig with its files inlined, readable by the
    daemon's user (hatchway) and nobody else."""
    import yaml
    cfg = yaml.safe_load(Path(src).read_text())
    for section, key in (("clusters", "cluster"), ("users", "user")):
        for item in cfg[section]:
            entry = item[key]
            for field in ("certificate-authority", "client-certificate", "client-key"):
                if field in entry:
                    entry[field + "-data"] = base64.b64encode(
                        Path(entry.pop(field)).read_bytes()).decode()
    dst.write_text(json.dumps(cfg))
    shutil.chown(dst, "root", "hatchway")
    os.chmod(dst, 0o640)


def k8s_config(cluster: dict, tmp: Path, **conn) -> dict:
    """Config overrides that put the stack on the cluster (`conn`: explicit
    connection keys instead of the kubeconfig)."""
    kc = tmp / "kubeconfig"
    if not kc.exists():
        _inline_kubeconfig(cluster["kubeconfig"], kc)
    pod = {"containers": [{"name": "session", "imagePullPolicy": "Never"}]}
    image = os.environ.get("HATCHWAY_E2E_K8S_IMAGE", "busybox")
    if not cluster["external"]:
        pod["nodeName"] = k8s_cluster.NODE      # the test cluster has no scheduler
        image = k8s_cluster.IMAGE
    else:
        pod["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    return {"backend": "kubernetes",
            "kubernetes": dict({"kubeconfig": str(kc)} if not conn else conn,
                               namespace="default", image=image, pod=pod,
                               start_timeout="60s"),
            # the test cluster's pods name their node (above)
            "policy": {"allow_pod_fields": [] if cluster["external"] else ["nodeName"]},
            # kill exec + the command's own HUP handling take longer than a docker kill
            "session": {"stop_grace": "10s"}}


def pods(cluster: dict, **labels: str) -> list[dict]:
    return k8s_cluster.pods(cluster["kubeconfig"], **labels)


class OnBackend:
    """The stack (its attributes pass through) on one backend, and that
    backend's session containers/pods seen the same way:
    {"name", "labels"} (a pod's labels with its annotations, which hold the
    values Kubernetes labels cannot, e.g. the owner process)."""

    def __init__(self, stack, backend: str, cluster: dict | None = None):
        self.stack = stack
        self.backend = backend
        self.cluster = cluster
        self.external = bool(cluster and cluster["external"])

    def __getattr__(self, name):
        return getattr(self.stack, name)

    def sessions(self, **labels: str) -> list[dict]:
        if self.backend == "docker":
            return [{"name": c["Names"], "id": c["ID"],
                     "labels": dict(kv.split("=", 1) for kv in c["Labels"].split(",")
                                    if "=" in kv)}
                    for c in self.stack.containers(**labels)]
        return [{"name": p["metadata"]["name"], "id": p["metadata"]["name"],
                 "labels": {**p["metadata"].get("labels", {}),
                            **p["metadata"].get("annotations", {})}}
                for p in pods(self.cluster, **labels)]

    def one_session(self, timeout: float = 30, **labels: str) -> dict:
        return wait_for(lambda: (lambda s: s if len(s) == 1 else None)(self.sessions(**labels)),
                        timeout, 0.2, what=f"one session container/pod {labels}")[0]

    def wait_no_sessions(self, timeout: float = 30, **labels: str) -> None:
        wait_for(lambda: not self.sessions(**labels), timeout, 0.2,
                 what=f"session containers/pods {labels or ''} to be removed")

    def host_address(self) -> str:
        """Where a session's container/pod reaches this host: the docker0
        bridge's address, or the pod bridge's (pods have no default route)."""
        if self.backend == "kubernetes":
            return k8s_cluster.GATEWAY
        out = run(["ip", "-4", "-o", "addr", "show", "dev", "docker0"]).stdout
        return out.split(" inet ")[1].split("/")[0]

    def use_missing_image(self) -> str:
        """Configure an image that is nowhere (and not to be pulled); its name."""
        if self.backend == "docker":
            image = "hatchway/no-such-image:1"
            self.stack.reconfigure({"docker": {"image": image, "pull": "Never"}})
        else:
            image = "local/no-such-image:1"
            cfg = k8s_config(self.cluster, self.stack.tmp)
            cfg["kubernetes"]["image"] = image
            self.stack.reconfigure(cfg)
        return image

    @staticmethod
    def session_pid(session: dict) -> int:
        """The hatchwayd session process that owns it (io.hatchway.process)."""
        return token_pid(session["labels"]["io.hatchway.process"])
