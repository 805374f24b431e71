"""ContainerSSH's `docker` config section, in Hatchway's `docker` shape
(core/containerssh.py says how fields are treated)."""

from __future__ import annotations

from hatchway.core.containerssh import (Unsupported, drop_empty, lower, refuse_rest,
                                        session_fields)

IGNORED_EXECUTION = {"idlecommand", "agentpath", "disableagent", "exposeauthmetadataasenv",
                     "containername", "auth", "platform", "network"}
IGNORED_CONTAINER = {"cmd", "tty", "openstdin", "stdinonce", "attachstdin", "attachstdout",
                     "attachstderr", "labels", "stopsignal", "stoptimeout"}
IGNORED_HOST = {"autoremove", "init", "logconfig", "restartpolicy"}


def translate(d: dict, out: dict) -> None:
    """`d`: the section with its keys lower-cased; the result goes into `out`."""
    done = set()
    if "execution" in d:
        done.add("execution")
        _execution(lower(d["execution"], "docker.execution"), out)
    if "timeouts" in d:
        done.add("timeouts")        # ContainerSSH's own; Hatchway has its own bounds
    refuse_rest(d, done, "docker")


def _execution(e: dict, out: dict) -> None:
    docker = out.setdefault("docker", {})
    done = set(IGNORED_EXECUTION) & set(e)
    if "container" in e:
        done.add("container")
        _container(lower(e["container"], "docker.execution.container"), docker)
    if "host" in e:
        done.add("host")
        _host(lower(e["host"], "docker.execution.host"), docker)
    done |= session_fields(e, "docker.execution", out)
    if "imagepullpolicy" in e:
        done.add("imagepullpolicy")
        docker["pull"] = e["imagepullpolicy"]
    refuse_rest(e, done, "docker.execution")
    drop_empty(out)


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
    refuse_rest(c, done, where)



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
            m = lower(m, f"{where}.mounts[]")
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
            dev = lower(dev, f"{where}.devices[]")
            devs.append(":".join(str(dev.get(k, "")) for k in
                                 ("pathonhost", "pathincontainer", "cgrouppermissions")).rstrip(":"))
        docker["devices"] = devs
    if "resources" in h:
        done.add("resources")
        _resources(lower(h["resources"], f"{where}.resources"), docker)
    # HostConfig's resource fields may also sit directly in `host` (Go embeds them)
    res_here = {k: h[k] for k in ("memory", "nanocpus", "cpuquota", "cpuperiod", "pidslimit")
                if k in h}
    if res_here:
        done |= set(res_here)
        _resources(res_here, docker)
    refuse_rest(h, done, where)



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
    refuse_rest(r, done, where)



def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Unsupported(f"{where}: expected a number")
    return float(v)
