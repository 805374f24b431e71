"""The Kubernetes API as this backend uses it: a connection from the config,
a few JSON calls, and the websocket handshake for exec and portforward.

The official client (Debian's python3-kubernetes) does the parts it does well:
reading kubeconfig files (contexts, inline or file certificates, exec/token
plugins), the in-cluster service account, and authenticated REST calls.  It
is imported only here, and this module only when `backend: kubernetes`
(importing the client costs ~250 ms and ~40 MiB).  Responses are read as raw
JSON (`_preload_content=False`): plain dicts, no model classes.

The websocket is opened with websocket-client directly, with the client's
credentials, so that (unlike the client's own `stream()` in 22.6) it offers
v5 before v4, has a connect deadline, and hands over a socket whose frames we
read ourselves (k8s_channel.py says why).
"""

from __future__ import annotations

import json
import logging
import ssl
from urllib.parse import quote, urlencode

from ..base import BackendError, EngineError
from .channel import PROTOCOLS
from .portforward import PROTOCOLS as PF_PROTOCOLS

REQUEST_TIMEOUT = 15.0
# What a user is told when the API server does not answer: at login, and when
# it went away under a live session (its exec streams run through the API
# server, so they end with it; the kubelet keeps the pod running).
CLUSTER_DOWN = "the Kubernetes cluster is not reachable; try again later"
CLUSTER_GONE = "the Kubernetes cluster became unreachable; this session has ended"
# Statuses that say the API server is not serving, not that the request was
# wrong: 502/504 from a proxy or load balancer in front of it, 503 while it
# starts or has lost etcd.
_NOT_SERVING = (502, 503, 504)


class KubernetesError(EngineError):
    """The Kubernetes API's answer was an error."""


def unreachable(e: KubernetesError) -> bool:
    """Did the API server not answer (connection refused or reset, timeout,
    TLS handshake) or answer only that it cannot serve now?"""
    return e.status == 0 or e.status in _NOT_SERVING


_CONNECTION_KEYS = ("kubeconfig", "context", "in_cluster", "server", "ca_file", "token_file",
                    "cert_file", "key_file")
_cache: dict = {}


def configuration(k):
    """A kubernetes.client.Configuration from the `kubernetes:` config section.

    Kept per connection settings: the daemon's main process loads it once and
    every forked session process inherits it.  That matters beyond speed: the
    client writes inline kubeconfig certificates to temporary files and removes
    them only at interpreter exit, which session processes (os._exit) skip."""
    key = tuple(getattr(k, n) for n in _CONNECTION_KEYS)
    if key not in _cache or k.token_file:
        _cache[key] = _load(k)
    return _cache[key]


def _load(k):
    from kubernetes import client, config as kconfig
    c = client.Configuration()
    try:
        if k.server:
            c.host = k.server
            c.ssl_ca_cert = k.ca_file
            c.cert_file, c.key_file = k.cert_file, k.key_file
            if k.token_file:
                # read at every session start: service-account tokens rotate
                with open(k.token_file, encoding="utf-8") as f:
                    c.api_key = {"authorization": f.read().strip()}
                c.api_key_prefix = {"authorization": "Bearer"}
        elif k.in_cluster:
            kconfig.load_incluster_config(client_configuration=c)
        else:
            kconfig.load_kube_config(config_file=k.kubeconfig, context=k.context,
                                     client_configuration=c, persist_config=False)
    except (OSError, kconfig.ConfigException) as e:
        raise BackendError(f"cannot read the Kubernetes connection settings: {e}") from None
    return c


class Api:
    def __init__(self, k):
        """`k`: the typed `kubernetes` settings."""
        from kubernetes import client
        # urllib3 logs a warning for each of its retries of a refused
        # connection; what failed is in the one line our caller logs
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        self.conf = configuration(k)
        self.client = client.ApiClient(self.conf)

    def call(self, method: str, path: str, body=None, query: dict | None = None,
             timeout: float = REQUEST_TIMEOUT):
        """One REST call; the decoded JSON answer, or KubernetesError."""
        from kubernetes.client.rest import ApiException
        try:
            resp = self.client.call_api(
                path, method, query_params=list((query or {}).items()),
                header_params={"Accept": "application/json",
                               "Content-Type": "application/json"},
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                # a pair: the client takes a single number only if it is an
                # int, and silently drops a float (no timeout at all: a hung
                # API server held a login for ever)
                _request_timeout=(timeout, timeout), _return_http_data_only=True)
            data = resp.data
        except ApiException as e:
            raise KubernetesError(e.status or 0, _message(e.body) or e.reason or str(e)) from None
        except Exception as e:      # urllib3: connection refused, TLS, timeout
            raise KubernetesError(0, str(e)) from None
        return json.loads(data) if data else None

    def exec_socket(self, ns: str, pod: str, container: str, argv: list[str], *, stdin: bool,
                    stdout: bool, stderr: bool, tty: bool, timeout: float = REQUEST_TIMEOUT):
        """A connected websocket for one exec (subprotocol in `.subprotocol`)."""
        query = [("command", a) for a in argv] + [("container", container)]
        for name, on in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr), ("tty", tty)):
            if on:
                query.append((name, "true"))
        return self.websocket(f"/api/v1/namespaces/{quote(ns)}/pods/{quote(pod)}/exec", query,
                              PROTOCOLS, timeout)

    def portforward_socket(self, ns: str, pod: str, port: int,
                           timeout: float = REQUEST_TIMEOUT):
        """A connected websocket forwarding to `port` of the pod
        (backends/kubernetes/portforward.py has the protocol)."""
        return self.websocket(f"/api/v1/namespaces/{quote(ns)}/pods/{quote(pod)}/portforward",
                              [("ports", str(int(port)))], PF_PROTOCOLS, timeout)

    def websocket(self, path: str, query: list, protocols, timeout: float):
        """A websocket to the API server, with the REST client's credentials,
        TLS settings and proxy; a connect deadline of `timeout`, no read
        deadline after it."""
        import websocket
        url = (self.conf.host.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
               + path + "?" + urlencode(query))
        header = []
        token = self.conf.get_api_key_with_prefix("authorization")
        if token:
            header.append(f"Authorization: {token}")
        sslopt = {"cert_reqs": ssl.CERT_REQUIRED if self.conf.verify_ssl else ssl.CERT_NONE}
        if self.conf.ssl_ca_cert:
            sslopt["ca_certs"] = self.conf.ssl_ca_cert
        if self.conf.cert_file:
            sslopt["certfile"] = self.conf.cert_file
        if self.conf.key_file:
            sslopt["keyfile"] = self.conf.key_file
        if not self.conf.verify_ssl:
            sslopt["check_hostname"] = False
        # The same proxy as the client's REST calls: the configured one, never
        # one from the environment (websocket-client would read http_proxy;
        # the REST client does not, and Debian's package builds set it to a
        # dead port on purpose).
        # (websocket-client 1.2 honours http_no_proxy only next to a proxy host)
        proxy = {"http_proxy_host": "no-proxy.invalid", "http_no_proxy": ["*"]}
        if self.conf.proxy:
            from urllib.parse import urlparse
            u = urlparse(self.conf.proxy)
            proxy = {"http_proxy_host": u.hostname, "http_proxy_port": u.port}
        ws = websocket.WebSocket(sslopt=sslopt, skip_utf8_validation=True)
        try:
            ws.connect(url, header=header, subprotocols=list(protocols), timeout=timeout,
                       **proxy)
        except websocket.WebSocketBadStatusException as e:
            raise KubernetesError(getattr(e, "status_code", 0) or 0, str(e)) from None
        except (websocket.WebSocketException, OSError) as e:
            raise KubernetesError(0, str(e)) from None
        ws.settimeout(None)     # output may legitimately pause for as long as the command likes
        return ws


def _message(body) -> str:
    try:
        return json.loads(body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return ""
