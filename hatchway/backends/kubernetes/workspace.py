"""Kubernetes' `connection` and `persistent` modes: a long-lived pod (the
same pod a session gets, under a name of the workspace's, backends/
workspaces.py) and each session an exec into it, as every Kubernetes session
already is.

Finding the pod (under the workspace's lock):

  none                                  create it, wait for it to run
                                        (a 409: someone else just did)
  made from another pod spec, or ended, delete it and create it again: a
  and no other session uses it          config change applies at the next
                                        login while no session is open
  being deleted                         wait until it is gone, then create
  otherwise                             wait for it to run (at once if it does)

A pod cannot be stopped and started again: stopping a workspace (idle
timeout, `hatchway workspaces stop`) deletes it, so its file system survives
only in a volume the pod template mounts (a PersistentVolumeClaim per user,
say, with {user} in its name).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from hatchway.core.digest import sha256

from .. import labels as L
from .. import workspaces as W
from ..base import BackendError, SessionSpec
from ..exec_wrapper import signal_argv
from .api import CLUSTER_DOWN, KubernetesError, unreachable
from .backend import KubernetesProcess, delete_pod, pod_manifest, pod_metadata

log = logging.getLogger("hatchwayd")

CONTAINER = L.PREFIX + "container"      # annotation: the container sessions are exec'd into


def workspace_manifest(spec: SessionSpec, name: str) -> tuple[dict, str]:
    """The session pod's manifest without the session's environment (each
    exec brings its own), named and labelled as the workspace."""
    manifest, container = pod_manifest(dataclasses.replace(spec, env={}, pty=False))
    digest = sha256(json.dumps(manifest["spec"], sort_keys=True).encode()).hexdigest()[:16]
    labels = L.for_workspace(spec.user, spec.config.session.mode, name, spec.connection_id,
                             digest)
    labels[CONTAINER] = container
    manifest["metadata"] = pod_metadata(name, labels)
    return manifest, container


def exec_into(backend, spec: SessionSpec):
    name = W.name_for(spec.config.session.mode, spec.user, spec.connection_id)
    rec = W.Record(name, W.root_for(spec.config))
    manifest, container = workspace_manifest(spec, name)
    with rec.lock():
        rec.attach(spec.session_id, L.process_token(os.getpid()), kind=spec.kind, pty=spec.pty)
        try:
            ensure(backend, spec, manifest, container, rec)
        except BaseException:
            rec.drop(spec.session_id)
            raise
        rec.set_meta(user=spec.user, mode=spec.config.session.mode, sshd=spec.sshd,
                     **W.settings_of(spec.config))
    proc = KubernetesExecProcess(backend.api, backend.ns, name, container, spec, rec)
    try:
        proc.start(spec.argv)
    except BaseException:
        proc.destroy()
        raise
    return proc


def ensure(backend, spec: SessionSpec, manifest: dict, container: str, rec: W.Record) -> None:
    api, ns, name = backend.api, backend.ns, rec.name
    timeout = spec.config.kubernetes.start_timeout
    want = manifest["metadata"]["annotations"]
    for _ in range(3):
        try:
            pod = api.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        except KubernetesError as e:
            if e.status != 404:
                raise BackendError(CLUSTER_DOWN if unreachable(e) else
                                   "cannot look for your workspace",
                                   f"cannot look for workspace pod {name}: {e}") from None
            pod = None
        if pod is None:
            try:
                api.call("POST", f"/api/v1/namespaces/{ns}/pods", manifest)
            except KubernetesError as e:
                if e.status == 409:
                    continue
                raise BackendError(CLUSTER_DOWN if unreachable(e) else
                                   "cannot create your workspace",
                                   f"cannot create workspace pod {name}: {e}") from None
            rec.set_meta(started=time.time())
            log.info("workspace %s created for %s", name, spec.user)
            try:
                backend._wait_running(name, container, timeout)
            except BackendError:
                if not rec.live(exclude=spec.session_id):
                    delete_pod(api, ns, name, wait=0, grace=1)
                raise
            return
        meta = pod.get("metadata") or {}
        have = meta.get("annotations") or {}
        if have.get(L.WORKSPACE) != name or have.get(L.USER) != spec.user \
                or have.get(L.HOST) != L.host_id():
            raise BackendError(f"a pod named {name} exists that is not your workspace")
        phase = (pod.get("status") or {}).get("phase")
        stale = have.get(L.SPEC) != want[L.SPEC] or phase in ("Failed", "Succeeded")
        if meta.get("deletionTimestamp") or (stale and not rec.live(exclude=spec.session_id)):
            if stale:
                log.info("workspace %s: its pod spec changed or it ended; making it again", name)
            # gracefully, and until it is gone: see delete_pod
            delete_pod(api, ns, name, wait=timeout, grace=1)
            continue
        if not _running(pod, have.get(CONTAINER, container)):
            backend._wait_running(name, have.get(CONTAINER, container), timeout)
        return
    raise BackendError("cannot settle on a workspace pod (it keeps changing)")


def _running(pod: dict, container: str) -> bool:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return "running" in (cs.get("state") or {})
    return False


class KubernetesExecProcess(KubernetesProcess):
    """A session exec'd into a workspace pod: as any Kubernetes session,
    except that its end leaves the pod (exec_wrapper's sweep ends what the
    session started) and that the environment travels with the exec."""

    def __init__(self, api, ns: str, pod: str, container: str, spec: SessionSpec,
                 rec: W.Record):
        super().__init__(api, ns, pod, container, spec)
        self.spec = spec
        self.rec = rec

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        env = dict(self.spec.env)
        if self.spec.pty and self.spec.term:
            env["TERM"] = self.spec.term
        super().start(argv, env)
        if self.pid is None:
            raise BackendError("cannot run the command in your workspace (does its image "
                               "have /bin/sh?)")
        self.rec.update(self.spec.session_id, pid=self.pid, start=self.start_time)

    def destroy(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
        if self.pid is not None:
            self.run_inside(signal_argv("KILL", self.pid, self.start_time))
        for sock in (self.feed, self.ws):
            if sock is not None:
                try:
                    sock.shutdown()
                except Exception:
                    pass
        try:
            self.rec.detach(self.spec.session_id)
        except OSError as e:
            log.warning("workspace %s: cannot update its record: %s", self.rec.name, e)

    def release(self) -> None:
        if self.spec.config.session.mode != "connection":
            return
        if W.release_connection(self.rec, self.spec.config.workspace.connection_grace,
                                self.spec.sshd,
                                lambda: delete_pod(self.api, self.ns, self.pod, wait=0,
                                                   grace=1)):
            log.info("workspace %s removed (the last session of its connection ended)",
                     self.rec.name)
