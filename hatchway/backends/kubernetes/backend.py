"""Kubernetes backend: one pod per SSH session (`session` mode).

How a session runs, and why:

1. A pod is created from the configured PodSpec template (after the admin
   policy, backends/kubernetes/policy.py), labelled like Docker containers (labels.py;
   values Kubernetes cannot hold as labels, e.g. the owner process token, go
   in annotations), `restartPolicy: Never`, no service-account token unless
   configured.  Its session container runs only an idle command.
2. We wait for the container to run, with a deadline; image errors and the
   like end the wait at once with the kubelet's reason, an unschedulable pod
   at the deadline with the scheduler's message.
3. The session's command is *exec'd* into that waiting container.  The exec
   stream is connected before the command starts (the kubelet starts the
   process only once the streams are attached), so no early output is lost;
   attaching to a pod's main process instead would race its first writes.
4. The command runs under a tiny /bin/sh wrapper that first prints its pid
   (the command then replaces the shell, keeping that pid; exec_wrapper.py).
   We strip that line and use the pid for signals: Kubernetes has no signal
   API, so HUP and TERM are a second exec of `kill` inside the container.
   (The image therefore needs /bin/sh with `kill`, `mkfifo`, `dd` and `stty`,
   which every distribution and busybox image has.)
5. stdin EOF: `v4.channel.k8s.io` (every server before 1.29/1.30) cannot
   half-close a stream; closing the websocket would lose the remaining output
   and the exit status.  So a non-pty command reads its stdin from a FIFO fed
   by a second exec that carries only stdin, in chunks framed as
   "<length>\n<bytes>"; EOF is the chunk "0\n", after which the feeder ends,
   the FIFO closes and the command sees EOF, while its output and exit status
   still arrive on the first stream.  In-band, because closing even the
   feeder's websocket is no ordered EOF: stdin still in flight in the
   kubelet/runtime is dropped.  v5's close frame would do the same for servers
   >= 1.30; the in-band EOF is one path that is correct on every server.
6. Exit status from the channel-3 status frame (k8s_channel.parse_status):
   a command killed by signal N reports 128+N.
7. At the end the pod is deleted with gracePeriodSeconds=0 and waited for;
   the reaper deletes pods whose owning session process is gone.
8. The API server going away: every exec stream runs through it (client ->
   kube-apiserver -> kubelet), so a stopped or restarted API server ends
   every live session's stream, without a status frame, while the kubelet
   keeps the pod and the command running.  A stream that ends so, with an
   API server that then does not answer, ends the session with CLUSTER_GONE;
   the session process keeps deleting its pod until the API server is back
   (REMOVE_FOR, then the reaper).  An API server that hangs (but keeps its
   connections) holds the streams until it answers again: the session
   resumes, nothing is lost.  At login a cluster that does not answer is
   CLUSTER_DOWN, within the request timeout.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time

from .. import labels as L
from .. import workspaces as W
from ..base import SIGNALS, Backend, BackendError, ExitStatus, Found, Process, SessionSpec
from ..exec_wrapper import FIFO_FAILED, read_pid, signal_argv, wrap
from . import channel as ch
from . import rbac
from .api import CLUSTER_DOWN, CLUSTER_GONE, REQUEST_TIMEOUT, Api, KubernetesError, unreachable

log = logging.getLogger("hatchwayd")

RUN_DIR = "/.hatchway"          # an emptyDir in the session container, for the stdin FIFO
# The stdin feeder: chunks framed as "<length>\n<bytes>", "0\n" is EOF.  EOF is
# in-band because closing the exec's websocket is not an ordered EOF: the
# kubelet/runtime drop stdin still in flight when the connection closes (a
# 100 kB write followed by a close arrived as 32 KiB on the 1.20 cluster).
# `dd iflag=count_bytes,fullblock` reads exactly N bytes with read(2), in
# busybox and coreutils alike (busybox `head -c` reads ahead through stdio and
# would swallow the next length line).
FEED = ('exec 3>"$1" && rm -f "$1" || exit 125; '
        'while IFS= read -r n && [ "$n" -gt 0 ]; do '
        'dd bs=65536 count="$n" iflag=count_bytes,fullblock 2>/dev/null >&3 || exit 1; done')
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                "CrashLoopBackOff"}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# How long a session process keeps trying to delete its pod while the API
# server does not answer (restarting): the client already has its answer;
# past this the daemon's reaper deletes it.
REMOVE_FOR = 60.0
# Asking the API server whether it is there, after an exec stream ended
# without a status: it has just refused or reset, or it answers at once.
PROBE_TIMEOUT = 3.0


def pod_name(spec: SessionSpec) -> str:
    user = re.sub(r"[^a-z0-9-]", "-", spec.user.lower()).strip("-")[:30] or "user"
    return f"hatchway-{user}-{spec.session_id[:12]}"


def pod_manifest(spec: SessionSpec) -> tuple[dict, str]:
    """The pod for one session, and the name of the container it runs in."""
    k = spec.config.kubernetes
    podspec = copy.deepcopy(k.pod or {})
    containers = podspec.setdefault("containers", [])
    if not containers:
        containers.append({"name": "session"})
    wanted = k.container
    c = next((c for c in containers if c.get("name") == wanted), None) if wanted else containers[0]
    if c is None:
        raise BackendError(f"the pod template has no container named {wanted}")
    c.setdefault("name", "session")
    if k.image:
        c["image"] = k.image
    if not c.get("image"):
        raise BackendError("no image configured for the session container (kubernetes.image)")
    c["command"] = list(k.idle_command)
    c.pop("args", None)
    c["stdin"] = c["tty"] = False
    env = [e for e in c.get("env") or [] if e.get("name") not in spec.env]
    env += [{"name": n, "value": v} for n, v in spec.env.items()]
    if spec.pty and spec.term:
        env = [e for e in env if e.get("name") != "TERM"] + [{"name": "TERM", "value": spec.term}]
    c["env"] = env
    c["volumeMounts"] = list(c.get("volumeMounts") or []) + [
        {"name": "hatchway-run", "mountPath": RUN_DIR}]
    podspec["volumes"] = list(podspec.get("volumes") or []) + [
        {"name": "hatchway-run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]
    podspec["restartPolicy"] = "Never"
    podspec["automountServiceAccountToken"] = bool(k.service_account_token)
    podspec.setdefault("enableServiceLinks", False)
    podspec.setdefault("terminationGracePeriodSeconds", 0)
    return ({"apiVersion": "v1", "kind": "Pod", "metadata": pod_metadata(pod_name(spec), spec.labels),
             "spec": podspec}, c["name"])


def pod_metadata(name: str, labels: dict[str, str]) -> dict:
    """Every label as an annotation too: values a label cannot hold (the
    owner token) are only there, and the reaper reads annotations."""
    return {"name": name,
            "labels": {key: v for key, v in labels.items()
                       if len(v) <= 63 and _LABEL_VALUE.match(v)},
            "annotations": dict(labels)}


class KubernetesBackend(Backend):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.api = Api(cfg.kubernetes)
        self.ns = cfg.kubernetes.namespace

    def start(self, spec: SessionSpec) -> Process:
        if spec.config.session.mode in W.SHARED:
            return workspace.exec_into(self, spec)
        manifest, container = pod_manifest(spec)
        name = manifest["metadata"]["name"]
        try:
            self.api.call("POST", f"/api/v1/namespaces/{self.ns}/pods", manifest)
        except KubernetesError as e:
            if unreachable(e):
                raise BackendError(CLUSTER_DOWN, f"cannot create the pod: {e}") from None
            raise BackendError(f"cannot create the pod: {e}") from None
        proc = None
        try:
            self._wait_running(name, container, spec.config.kubernetes.start_timeout)
            proc = KubernetesProcess(self.api, self.ns, name, container, spec)
            proc.start(spec.argv)
            return proc
        except BaseException:
            if proc is not None:
                proc.destroy()
            else:
                delete_pod(self.api, self.ns, name)
            raise

    def _wait_running(self, name: str, container: str, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        why = "the pod was not scheduled (is a scheduler running? does a node fit it?)"
        delay = 0.05
        down = False
        while True:
            try:
                # a hung API server must not hold the wait long past its
                # deadline (the client tries a GET that timed out 4 times)
                left = deadline - time.monotonic()
                pod = self.api.call("GET", f"/api/v1/namespaces/{self.ns}/pods/{name}",
                                    timeout=max(1.0, min(REQUEST_TIMEOUT, left / 4)))
                down = False
            except KubernetesError as e:
                if e.status == 404:
                    raise BackendError("the session's pod was deleted while starting") from None
                pod, why, down = None, f"cannot read the pod: {e}", unreachable(e)
            if pod:
                status = pod.get("status") or {}
                for cond in status.get("conditions") or []:
                    if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                        why = f"the pod cannot be scheduled: {cond.get('message') or cond.get('reason')}"
                for cs in status.get("containerStatuses") or []:
                    if cs.get("name") != container:
                        continue
                    state = cs.get("state") or {}
                    if "running" in state:
                        return
                    waiting = state.get("waiting") or {}
                    if waiting.get("reason") in IMAGE_ERRORS:
                        raise BackendError(f"the session container cannot start: "
                                           f"{waiting['reason']}: {waiting.get('message', '')}"
                                           .rstrip(": "))
                    if waiting.get("reason"):
                        why = f"the session container is still waiting: {waiting['reason']}"
                    if "terminated" in state:
                        t = state["terminated"]
                        raise BackendError(f"the session container exited at once "
                                           f"({t.get('reason')}, exit {t.get('exitCode')})")
                if status.get("phase") in ("Failed", "Succeeded"):
                    raise BackendError(f"the pod ended before the session started "
                                       f"({status.get('reason') or status.get('phase')})")
            if time.monotonic() >= deadline:
                if down:
                    raise BackendError(CLUSTER_DOWN, f"the session's pod did not start within "
                                       f"{timeout:g}s: {why}")
                raise BackendError(f"the session's pod did not start within {timeout:g}s: {why}")
            time.sleep(delay)
            # A pod usually runs within a second: a poll late by up to half a
            # second was a third of the start (make bench, k8s rows), one
            # late by up to 0.2 s still ~100 ms of it.  So every 50 ms for the
            # first 2 s (a GET costs the API server a few ms), then backing off
            # for a pod that pulls an image or waits for a node.
            if time.monotonic() - started > 2.0:
                delay = min(delay * 2, 0.5)

    def list(self, user: str | None = None) -> list[Found]:
        selector = ",".join(f"{k}={v}" for k, v in L.selector(user).items())
        try:
            pods = self.api.call("GET", f"/api/v1/namespaces/{self.ns}/pods",
                                 query={"labelSelector": selector})["items"]
        except (KubernetesError, TypeError, KeyError) as e:
            raise BackendError(f"cannot list session pods: {e}") from None
        out = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            # the owner token is an annotation: no valid label value (pod_manifest)
            phase = (pod.get("status") or {}).get("phase") or ""
            going = meta.get("deletionTimestamp") is not None
            out.append(Found(meta.get("name", ""), meta.get("annotations") or {}, phase,
                             going=going, running=phase == "Running" and not going,
                             created=_epoch(meta.get("creationTimestamp"))))
        return out

    def remove(self, found: Found) -> bool:
        # a workspace's name comes back: let the kubelet finish (delete_pod)
        return delete_pod(self.api, self.ns, found.name, wait=0,
                          grace=1 if W.is_workspace(found.labels) else 0)

    def stop(self, found: Found) -> bool:
        """A pod cannot be stopped and started again: stopping a workspace
        deletes its pod (its file system goes too, unless the pod template
        mounts a volume that outlives it)."""
        return delete_pod(self.api, self.ns, found.name, wait=0, grace=1)

    def kill_session(self, found: Found, pid: int, start: int | None) -> bool:
        container = found.labels.get(workspace.CONTAINER)
        if not container:
            return False
        return run_inside(self.api, self.ns, found.name, container,
                          signal_argv("KILL", pid, start))

    def check(self) -> tuple[list[str], list[str]]:
        try:
            self.api.call("GET", f"/api/v1/namespaces/{self.ns}/pods", query={"limit": "1"})
        except KubernetesError as e:
            if e.status != 403:     # forbidden: the permissions below say which
                return [f"kubernetes: cannot list pods in namespace {self.ns}: {e}"], []
        problems, notes = self.permission_problems(rbac.SESSIONS, "no session can start")
        return problems, [f"kubernetes: reachable at {self.api.conf.host}, "
                          f"namespace {self.ns}"] + notes

    def permission_problems(self, needs, otherwise: str) -> tuple[list[str], list[str]]:
        """For `hatchway check`: which of `needs` (rbac.py) the daemon's
        credentials lack, as the API server's authorizer answers."""
        try:
            lacking = rbac.missing(self.api, self.ns, needs)
        except KubernetesError as e:
            return [], [f"kubernetes: permissions not checked ({e})"]
        if not lacking:
            return [], []
        return [f"kubernetes: the credentials may not {', '.join(lacking)} in namespace "
                f"{self.ns}, so {otherwise} (grant them with a Role and RoleBinding)"], []


def run_inside(api: Api, ns: str, pod: str, container: str, argv: list[str]) -> bool:
    """Run a helper exec to its end (at most a few seconds); True if it ran."""
    try:
        ws = api.exec_socket(ns, pod, container, argv, stdin=False, stdout=True, stderr=True,
                             tty=False, timeout=5)
    except KubernetesError as e:
        log.warning("cannot run a helper in pod %s: %s", pod, e)
        return False
    try:
        ws.settimeout(5)
        frames = ch.Frames(ws)
        while frames.next() is not None:
            pass
        return frames.status is not None
    finally:
        ws.shutdown()


def _epoch(stamp) -> float | None:
    """RFC 3339 as the API writes it (2026-12-03T10:00:00Z) -> seconds."""
    import calendar
    try:
        return float(calendar.timegm(time.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def delete_pod(api: Api, ns: str, name: str, wait: float = 20.0, grace: int = 0,
               retry_for: float = 0.0) -> bool:
    """Delete (at once with grace 0) and, when `wait`, until the API no longer
    has it.  True when it is gone or going.  While the API server does not
    answer, the delete is tried again for `retry_for` seconds (backing off
    to one try in 2 s); an error it does answer is not tried again.

    Grace 0 removes the API object at once, while the kubelet still tears the
    pod down for a second or two; a pod created meanwhile under the same name
    (a workspace's) can then get an exec meant for it routed into the old,
    dying one (the 1.20 kubelet finds a pod by name among the running ones).
    With grace 1 the object stays until the kubelet has stopped the pod, so
    waiting for it to go means the old pod is really gone."""
    end, pause = time.monotonic() + retry_for, 0.2
    while True:
        try:
            api.call("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}",
                     query={"gracePeriodSeconds": str(grace)})
            break
        except KubernetesError as e:
            if e.status == 404:
                break
            if not unreachable(e) or time.monotonic() + pause > end:
                return False
        time.sleep(pause)
        pause = min(pause * 2, 2.0)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            api.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}", timeout=5)
        except KubernetesError as e:
            if e.status == 404:
                return True
        time.sleep(0.1)
    return True


class KubernetesProcess(Process):
    def __init__(self, api: Api, ns: str, pod: str, container: str, spec: SessionSpec):
        self.api = api
        self.ns = ns
        self.id = pod
        self.pod = pod
        self.container = container
        self.tty = spec.pty
        self.size = spec.size
        self.session_id = spec.session_id
        self.ws = self.feed = None
        self.frames: ch.Frames | None = None
        self.pid: int | None = None
        self.start_time: int | None = None
        self.pending: list[tuple[int, bytes]] = []
        self._gone = False
        self._lock = threading.Lock()

    def _exec(self, argv, **kw):
        try:
            return self.api.exec_socket(self.ns, self.pod, self.container, argv, **kw)
        except KubernetesError as e:
            if unreachable(e):
                raise BackendError(CLUSTER_DOWN, f"cannot run the command in the pod: {e}") \
                    from None
            raise BackendError(f"cannot run the command in the pod: {e}") from None

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """`env`: what the exec must export itself (a workspace's sessions; a
        session's own pod has it in its spec already)."""
        from websocket import ABNF
        if self.tty:
            self.ws = self._exec(wrap(argv, self.size or (24, 80), env),
                                 stdin=True, stdout=True, stderr=False, tty=True)
            if self.size:
                self.ws.send(ch.resize_frame(*self.size), opcode=ABNF.OPCODE_BINARY)
        else:
            fifo = f"{RUN_DIR}/stdin-{self.session_id}"
            self.ws = self._exec(wrap(argv, None, env, fifo),
                                 stdin=False, stdout=True, stderr=True, tty=False)
        self.frames = ch.Frames(self.ws)
        self._read_pid()
        if not self.tty and self.pid is not None:
            self.feed = self._exec(["/bin/sh", "-c", FEED, "hatchway",
                                    f"{RUN_DIR}/stdin-{self.session_id}"],
                                   stdin=True, stdout=False, stderr=False, tty=False)

    def _read_pid(self) -> None:
        """Consume the wrapper's pid line (the first output there is), bounded."""
        self.ws.settimeout(30)
        try:
            self.pid, self.start_time, pending = read_pid(self.frames.next)
        finally:
            if self.ws is not None:
                self.ws.settimeout(None)
        self.pending += pending
        if self.pid is None and self.frames.status is not None:
            st = self.frames.status
            if st.message:
                raise BackendError(f"cannot run the command in the pod: {st.message}")
            if st.code == FIFO_FAILED:
                raise BackendError("cannot make the stdin FIFO in the session container")

    # -- bytes

    def send(self, data: bytes) -> None:
        from websocket import ABNF, WebSocketException
        sock = self.ws if self.tty else self.feed
        if sock is None:
            raise OSError("no stdin")
        if not self.tty:
            data = b"%d\n%s" % (len(data), data)
        try:
            sock.send(ch.stdin_frame(data), opcode=ABNF.OPCODE_BINARY)
        except (WebSocketException, AttributeError) as e:
            raise OSError(str(e)) from None

    def close_stdin(self) -> None:
        """In-band EOF for the feeder (see FEED); its websocket stays open until
        the session ends, so nothing in flight is dropped."""
        from websocket import ABNF
        if self.tty or self.feed is None:
            return
        try:
            self.feed.send(ch.stdin_frame(b"0\n"), opcode=ABNF.OPCODE_BINARY)
        except Exception:
            pass

    def recv(self) -> tuple[int, bytes] | None:
        if self.pending:
            return self.pending.pop(0)
        return self.frames.next() if self.frames else None

    # -- control

    def resize(self, rows: int, cols: int) -> None:
        from websocket import ABNF
        if self.tty and self.ws is not None:
            try:
                self.ws.send(ch.resize_frame(rows, cols), opcode=ABNF.OPCODE_BINARY)
            except Exception:
                pass

    def signal(self, name: str) -> None:
        """`kill` inside the container: Kubernetes has no API for signals."""
        if self.pid is None or self._gone or name not in SIGNALS:
            return
        self.run_inside(signal_argv(name, self.pid, self.start_time))

    def run_inside(self, argv: list[str]) -> bool:
        """A helper exec in the session's container, waited for (bounded)."""
        return run_inside(self.api, self.ns, self.pod, self.container, argv)

    def exit_status(self, timeout: float | None = None) -> ExitStatus:
        st = self.frames.status if self.frames else None
        if st is None:
            if not self._gone and self._cluster_gone():
                return ExitStatus(255, CLUSTER_GONE)
            return ExitStatus(255, "lost the exit status of the command")
        return ExitStatus(st.code, st.message)

    def _cluster_gone(self) -> bool:
        """The stream ended without a status: was it the API server going
        away (stopped, restarting), rather than the kubelet or the pod?"""
        try:
            self.api.call("GET", f"/api/v1/namespaces/{self.ns}/pods/{self.pod}",
                          timeout=PROBE_TIMEOUT)
        except KubernetesError as e:
            if unreachable(e):
                log.warning("the exec stream of pod %s ended and the API server does not "
                            "answer: %s", self.pod, e)
                return True
        return False

    def destroy(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
        for sock in (self.feed, self.ws):
            if sock is not None:
                try:
                    sock.shutdown()
                except Exception:
                    pass
        try:
            if not delete_pod(self.api, self.ns, self.pod, retry_for=REMOVE_FOR):
                log.warning("could not delete pod %s (the API server refuses or does not "
                            "answer); the reaper will", self.pod)
        except Exception as e:
            log.warning("cannot delete pod %s: %s", self.pod, e)


from . import workspace  # noqa: E402  (it builds on this module's pods and processes)

BACKEND = KubernetesBackend
