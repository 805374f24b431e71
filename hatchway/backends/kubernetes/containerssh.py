"""ContainerSSH's `kubernetes` config section, in Hatchway's `kubernetes`
shape (core/containerssh.py says how fields are treated)."""

from __future__ import annotations

from hatchway.core.containerssh import (Unsupported, drop_empty, lower, refuse_rest,
                                        session_fields)


def translate(k: dict, out: dict) -> None:
    """ContainerSSH's `kubernetes` section: `pod` is {metadata, spec,
    consoleContainerNumber, mode, subsystems, shellCommand, ...}.  The PodSpec is
    taken as is (Kubernetes' own field names, so not lower-cased); where the
    daemon connects (`connection`) is never a webhook's to change."""
    done = set()
    if "timeouts" in k:
        done.add("timeouts")
        t = lower(k["timeouts"], "kubernetes.timeouts")
        if "podstart" in t:
            out.setdefault("kubernetes", {})["start_timeout"] = t["podstart"]
    if "pod" in k:
        done.add("pod")
        _pod(lower(k["pod"], "kubernetes.pod"), out)
    refuse_rest(k, done, "kubernetes")


def _pod(p: dict, out: dict) -> None:
    where = "kubernetes.pod"
    kube = out.setdefault("kubernetes", {})
    done = {"disableagent", "agentpath", "idlecommand", "exposeauthmetadataasenv",
            "exposeauthmetadataasannotations", "exposeauthmetadataaslabels"} & set(p)
    if "createmissingpods" in p:
        # persistent mode: Hatchway always creates a missing workspace pod
        done.add("createmissingpods")
    if "spec" in p:
        done.add("spec")
        if not isinstance(p["spec"], dict):
            raise Unsupported(f"{where}.spec: expected an object")
        kube["pod"] = p["spec"]
    if "metadata" in p:
        done.add("metadata")
        meta = lower(p["metadata"], f"{where}.metadata")
        # labels/annotations/names are Hatchway's own; the namespace is the
        # daemon's (its reaper looks for orphans there), so it is refused
        rest = sorted(set(meta) - {"labels", "annotations", "generatename", "name"})
        if rest:
            raise Unsupported(f"{where}.metadata.{rest[0]}: not supported by Hatchway")
    if "consolecontainernumber" in p:
        done.add("consolecontainernumber")
        n = p["consolecontainernumber"]
        containers = (kube.get("pod") or {}).get("containers") or []
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < max(len(containers), 1):
            raise Unsupported(f"{where}.consoleContainerNumber: no container {n!r} in the spec")
        if containers:
            kube["container"] = containers[n].get("name")
    done |= session_fields(p, where, out)
    refuse_rest(p, done, where)
    drop_empty(out)
