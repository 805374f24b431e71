"""ContainerSSH's config-webhook answer, in Hatchway's config shape.

A ContainerSSH config server answers `{"config": {...}}` with a partial
ContainerSSH AppConfig (notes/containerssh.md §2.2, §3.1).  Go decodes it
case-insensitively, so `readonlyrootfs`, `ReadonlyRootfs` and `readOnlyRootFS`
are the same key here too.  Every field is either translated, ignored because
it means nothing under Hatchway (agent settings, ContainerSSH's own timeouts),
or refused: a field Hatchway would silently not honour could be a restriction
the server meant to impose.
"""

from __future__ import annotations


class Unsupported(ValueError):
    """A field that cannot be honoured; the message names it."""


IGNORED_EXECUTION = {"idlecommand", "agentpath", "disableagent", "exposeauthmetadataasenv",
                     "containername", "auth", "platform", "network"}
IGNORED_CONTAINER = {"cmd", "tty", "openstdin", "stdinonce", "attachstdin", "attachstdout",
                     "attachstderr", "labels", "stopsignal", "stoptimeout"}
IGNORED_HOST = {"autoremove", "init", "logconfig", "restartpolicy"}


def _lower(d: dict, where: str) -> dict:
    if not isinstance(d, dict):
        raise Unsupported(f"{where}: expected an object")
    out = {}
    for k, v in d.items():
        lk = str(k).lower()
        if lk in out:
            raise Unsupported(f"{where}.{k}: given twice (keys are case-insensitive)")
        out[lk] = v
    return out


def _refuse_rest(d: dict, done: set, where: str) -> None:
    rest = sorted(set(d) - done)
    if rest:
        raise Unsupported(f"{where}.{rest[0]}: not supported by Hatchway")


def translate(reply_config: dict) -> dict:
    """ContainerSSH `config` object -> Hatchway partial config (unvalidated)."""
    top = _lower(reply_config, "config")
    out: dict = {}
    done = set()
    if "backend" in top:
        done.add("backend")
        out["backend"] = top["backend"]
    if "docker" in top:
        done.add("docker")
        _docker(_lower(top["docker"], "docker"), out)
    if "kubernetes" in top:
        done.add("kubernetes")
        _kubernetes(_lower(top["kubernetes"], "kubernetes"), out)
    _refuse_rest(top, done, "config")
    return out


def _docker(d: dict, out: dict) -> None:
    done = set()
    if "execution" in d:
        done.add("execution")
        _execution(_lower(d["execution"], "docker.execution"), out)
    if "timeouts" in d:
        done.add("timeouts")        # ContainerSSH's own; Hatchway has its own bounds
    _refuse_rest(d, done, "docker")


def _kubernetes(k: dict, out: dict) -> None:
    """ContainerSSH's `kubernetes` section: `pod` is {metadata, spec,
    consoleContainerNumber, mode, subsystems, shellCommand, ...}.  The PodSpec is
    taken as is (Kubernetes' own field names, so not lower-cased); where the
    daemon connects (`connection`) is never a webhook's to change."""
    done = set()
    if "timeouts" in k:
        done.add("timeouts")
        t = _lower(k["timeouts"], "kubernetes.timeouts")
        if "podstart" in t:
            out.setdefault("kubernetes", {})["start_timeout"] = t["podstart"]
    if "pod" in k:
        done.add("pod")
        _pod(_lower(k["pod"], "kubernetes.pod"), out)
    _refuse_rest(k, done, "kubernetes")


def _pod(p: dict, out: dict) -> None:
    where = "kubernetes.pod"
    kube = out.setdefault("kubernetes", {})
    session = out.setdefault("session", {})
    done = {"disableagent", "agentpath", "idlecommand", "exposeauthmetadataasenv",
            "exposeauthmetadataasannotations", "exposeauthmetadataaslabels"} & set(p)
    if "spec" in p:
        done.add("spec")
        if not isinstance(p["spec"], dict):
            raise Unsupported(f"{where}.spec: expected an object")
        kube["pod"] = p["spec"]
    if "metadata" in p:
        done.add("metadata")
        meta = _lower(p["metadata"], f"{where}.metadata")
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
    if "mode" in p:
        done.add("mode")
        if p["mode"] not in ("session", "connection"):
            raise Unsupported(f"{where}.mode: {p['mode']!r} is not supported")
    if "shellcommand" in p:
        done.add("shellcommand")
        session["shell"] = p["shellcommand"]
    if "subsystems" in p:
        done.add("subsystems")
        subs = _lower(p["subsystems"], f"{where}.subsystems")
        if "sftp" in subs:
            sftp = subs["sftp"]
            session["subsystems"] = {"sftp": [sftp] if isinstance(sftp, str) else sftp}
    _refuse_rest(p, done, where)
    for key in [key for key, v in out.items() if v == {}]:
        del out[key]


def _execution(e: dict, out: dict) -> None:
    docker = out.setdefault("docker", {})
    session = out.setdefault("session", {})
    done = set(IGNORED_EXECUTION) & set(e)
    if "container" in e:
        done.add("container")
        _container(_lower(e["container"], "docker.execution.container"), docker)
    if "host" in e:
        done.add("host")
        _host(_lower(e["host"], "docker.execution.host"), docker)
    if "mode" in e:
        done.add("mode")
        # ContainerSSH's `connection` mode (one container per connection) is not
        # implemented; each session gets its own container, which is what users
        # of either mode see for a single session.
        if e["mode"] not in ("session", "connection"):
            raise Unsupported(f"docker.execution.mode: {e['mode']!r} is not supported")
    if "shellcommand" in e:
        done.add("shellcommand")
        session["shell"] = e["shellcommand"]
    if "subsystems" in e:
        done.add("subsystems")
        subs = _lower(e["subsystems"], "docker.execution.subsystems")
        if "sftp" in subs:
            sftp = subs["sftp"]
            session["subsystems"] = {"sftp": [sftp] if isinstance(sftp, str) else sftp}
    if "imagepullpolicy" in e:
        done.add("imagepullpolicy")
        docker["pull"] = e["imagepullpolicy"]
    _refuse_rest(e, done, "docker.execution")
    for k in [k for k, v in out.items() if v == {}]:
        del out[k]


def _container(c: dict, docker: dict) -> None:
    where = "docker.execution.container"
    done = set(IGNORED_CONTAINER) & set(c)
    simple = {"image": "image", "user": "user", "workingdir": "workdir", "hostname": "hostname"}
    for src, dst in simple.items():
        if src in c:
            done.add(src)
            docker[dst] = c[src]
    if "env" in c:
        done.add("env")
        env = {}
        if not isinstance(c["env"], list):
            raise Unsupported(f"{where}.env: expected a list of NAME=value")
        for item in c["env"]:
            if not isinstance(item, str) or "=" not in item:
                raise Unsupported(f"{where}.env: expected NAME=value, got {item!r}")
            k, _, v = item.partition("=")
            env[k] = v
        docker["env"] = env
    if "networkdisabled" in c:
        done.add("networkdisabled")
        if c["networkdisabled"] is True:
            docker["network"] = "none"
    _refuse_rest(c, done, where)


def _host(h: dict, docker: dict) -> None:
    where = "docker.execution.host"
    done = set(IGNORED_HOST) & set(h)
    mounts = []
    if "binds" in h:
        done.add("binds")
        if not isinstance(h["binds"], list):
            raise Unsupported(f"{where}.binds: expected a list")
        mounts += h["binds"]
    if "mounts" in h:
        done.add("mounts")
        if not isinstance(h["mounts"], list):
            raise Unsupported(f"{where}.mounts: expected a list")
        for m in h["mounts"]:
            m = _lower(m, f"{where}.mounts[]")
            extra = set(m) - {"type", "source", "target", "readonly"}
            if extra:
                raise Unsupported(f"{where}.mounts[].{sorted(extra)[0]}: not supported")
            mounts.append({"type": m.get("type", "bind"), "source": m.get("source"),
                           "target": m.get("target"), "read_only": m.get("readonly", False)})
    if mounts:
        docker["mounts"] = mounts
    simple = {"tmpfs": "tmpfs", "readonlyrootfs": "read_only", "privileged": "privileged",
              "capadd": "cap_add", "capdrop": "cap_drop", "networkmode": "network",
              "pidmode": "pid_mode", "ipcmode": "ipc_mode"}
    for src, dst in simple.items():
        if src in h:
            done.add(src)
            docker[dst] = h[src]
    if "devices" in h:
        done.add("devices")
        if not isinstance(h["devices"], list):
            raise Unsupported(f"{where}.devices: expected a list")
        devs = []
        for dev in h["devices"]:
            dev = _lower(dev, f"{where}.devices[]")
            devs.append(":".join(str(dev.get(k, "")) for k in
                                 ("pathonhost", "pathincontainer", "cgrouppermissions")).rstrip(":"))
        docker["devices"] = devs
    if "resources" in h:
        done.add("resources")
        _resources(_lower(h["resources"], f"{where}.resources"), docker)
    # HostConfig's resource fields may also sit directly in `host` (Go embeds them)
    res_here = {k: h[k] for k in ("memory", "nanocpus", "cpuquota", "cpuperiod", "pidslimit")
                if k in h}
    if res_here:
        done |= set(res_here)
        _resources(res_here, docker)
    _refuse_rest(h, done, where)


def _resources(r: dict, docker: dict) -> None:
    where = "docker.execution.host.resources"
    done = set()
    if "memory" in r:
        done.add("memory")
        docker["memory"] = r["memory"]
    if "nanocpus" in r:
        done.add("nanocpus")
        docker["cpus"] = _number(r["nanocpus"], f"{where}.nanocpus") / 1e9
    if "cpuquota" in r or "cpuperiod" in r:
        done |= {"cpuquota", "cpuperiod"}
        quota = _number(r.get("cpuquota"), f"{where}.cpuquota")
        period = _number(r.get("cpuperiod", 100000), f"{where}.cpuperiod")
        if period <= 0:
            raise Unsupported(f"{where}.cpuperiod: must be positive")
        docker["cpus"] = quota / period
    if "pidslimit" in r:
        done.add("pidslimit")
        docker["pids_limit"] = r["pidslimit"]
    _refuse_rest(r, done, where)


def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Unsupported(f"{where}: expected a number")
    return float(v)

