"""The `kubernetes:` section of hatchway.yaml: how the daemon reaches the
cluster and what a session's pod looks like.  See hatchway.yaml(5)."""

from __future__ import annotations

from hatchway.core.config import PATH, T, check_argv, check_url, section


def _pod_spec(value: dict) -> dict:
    """A PodSpec as Kubernetes' JSON/YAML spells it (checked by the policy and by
    the apiserver); only its shape is checked here."""
    containers = value.get("containers", [])
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise ValueError("containers: expected a list of container mappings")
    return value



@section
class Settings:
    # connection: a kubeconfig file, the pod's service account (in_cluster), or
    # server + ca_file + token_file / cert_file + key_file
    kubeconfig: str | None = PATH()
    context: str | None = T("str", None)
    in_cluster: bool = T("bool", False)
    server: str | None = T("str", None, check=check_url)
    ca_file: str | None = PATH()
    token_file: str | None = PATH()
    cert_file: str | None = PATH()
    key_file: str | None = PATH()
    namespace: str = T("str", "default")
    image: str | None = T("str", None,
                          doc="the session container's image; overrides the pod template's")
    pod: dict = T("map", {}, item=T("any"), check=_pod_spec, doc="PodSpec template")
    container: str | None = T("str", None,
                              doc="the container sessions run in; default the first")
    idle_command: list = T("list", ["/bin/sh", "-c", "while :; do sleep 3600; done"],
                           item=T("str"), check=check_argv)
    service_account_token: bool = T("bool", False)
    start_timeout: float = T("duration", 60.0)


# The connection and the namespace stay the daemon's: the reaper looks for
# orphans in that namespace.
DAEMON_WIDE = ("kubeconfig", "context", "in_cluster", "server", "ca_file", "token_file",
               "cert_file", "key_file", "namespace")
WEBHOOK_MAY_SET = ["image", "pod"]
