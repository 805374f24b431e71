"""ContainerSSH config-webhook answers, translated into Hatchway's config."""

import pytest

from hatchway.core import config
from hatchway.daemon.containerssh import Unsupported, translate
from tests import containerssh_schema as schema


def test_the_documented_example_answer():
    # ContainerSSH's config webhook reference: the documented reply, verbatim
    reply = {"config": {"backend": "docker", "docker": {"execution": {
        "container": {"image": "registry.example/guest:1"}, "mode": "connection"}}}}
    out = config.validate(translate(reply["config"]))
    assert out == {"backend": "docker", "docker": {"image": "registry.example/guest:1"},
                   "session": {"mode": "connection"}}


def test_the_test_servers_busybox_answer():
    # ContainerSSH's own test config server, for user busybox
    reply = {"docker": {"execution": {"container": {"image": "busybox"}, "mode": "session",
                                      "disableAgent": True, "shellCommand": ["/bin/sh"]}}}
    assert config.validate(translate(reply)) == {
        "docker": {"image": "busybox"}, "session": {"mode": "session", "shell": ["/bin/sh"]}}


@pytest.mark.parametrize("mode", ["session", "connection", "persistent"])
def test_every_containerssh_mode_is_a_hatchway_mode(mode):
    assert translate({"docker": {"execution": {"mode": mode}}}) == {"session": {"mode": mode}}
    out = translate({"kubernetes": {"pod": {"mode": mode, "createMissingPods": True}}})
    assert config.validate(out) == {"session": {"mode": mode}}


def test_keys_are_case_insensitive_like_go():
    a = translate({"Docker": {"Execution": {"Container": {"Image": "x", "Env": ["A=1"]},
                                            "Host": {"ReadonlyRootfs": True}}}})
    b = translate({"docker": {"execution": {"container": {"image": "x", "env": ["A=1"]},
                                            "host": {"readonlyrootfs": True}}}})
    assert a == b == {"docker": {"image": "x", "env": {"A": "1"}, "read_only": True}}


def test_host_settings_translate():
    out = config.validate(translate({"docker": {"execution": {"host": {
        "binds": ["/srv/a:/a:ro"],
        "mounts": [{"Type": "bind", "Source": "/srv/b", "Target": "/b", "ReadOnly": False}],
        "tmpfs": {"/tmp": "size=64m"},
        "resources": {"memory": 268435456, "cpuquota": 50000, "cpuperiod": 100000,
                      "pidslimit": 100}}}}}))
    d = out["docker"]
    assert d["mounts"] == [{"Type": "bind", "Source": "/srv/a", "Target": "/a", "ReadOnly": True},
                           {"Type": "bind", "Source": "/srv/b", "Target": "/b", "ReadOnly": False}]
    assert (d["memory"], d["cpus"], d["pids_limit"]) == (268435456, 0.5, 100)
    assert d["tmpfs"] == {"/tmp": "size=64m"}


@pytest.mark.parametrize("reply,field", [
    ({"security": {"command": {"mode": "disable"}}}, "config.security"),
    ({"docker": {"connection": {"host": "tcp://evil:2375"}}}, "docker.connection"),
    ({"docker": {"execution": {"host": {"securityopt": ["seccomp=unconfined"]}}}},
     "docker.execution.host.securityopt"),
    ({"docker": {"execution": {"container": {"entrypoint": ["/bin/evil"]}}}},
     "docker.execution.container.entrypoint"),
    ({"docker": {"execution": {"mode": "forever"}}}, "docker.execution.mode"),
])
def test_fields_that_would_not_be_honoured_are_refused(reply, field):
    with pytest.raises(Unsupported, match=field.replace(".", r"\.")):
        translate(reply)


@pytest.mark.parametrize("answer", [
    {"docker": {"execution": {"container": {"image": "x", "env": ["A=1"], "user": "u",
                                            "workingdir": "/w", "networkdisabled": True},
                              "host": {"binds": ["/a:/b"], "readonlyrootfs": True,
                                       "tmpfs": {"/tmp": ""}, "memory": 1000,
                                       "pidslimit": 5, "nanocpus": 500000000},
                              "shellCommand": ["/bin/bash"],
                              "subsystems": {"sftp": "/usr/lib/sftp-server"},
                              "imagePullPolicy": "Never", "mode": "session"}}},
])
def test_what_is_translated_is_valid_containerssh_config(answer):
    """Every key translated here exists, with that type, in ContainerSSH's schema."""
    schema.check(answer, "AppConfig")
    assert schema.unknown_keys(answer, "AppConfig") == []
    assert translate(answer)


def test_kubernetes_pod_shape():
    from hatchway.daemon.containerssh import translate
    spec = {"containers": [{"name": "side", "image": "x"}, {"name": "shell", "image": "y"}],
            "nodeSelector": {"disk": "ssd"}}
    out = translate({"backend": "kubernetes", "kubernetes": {
        "pod": {"metadata": {"name": "x"}, "spec": spec, "consoleContainerNumber": 1,
                "mode": "session", "subsystems": {"sftp": "/usr/lib/sftp-server"}},
        "timeouts": {"podStart": "30s"}}})
    assert out == {"backend": "kubernetes",
                   "kubernetes": {"start_timeout": "30s", "pod": spec, "container": "shell"},
                   "session": {"mode": "session",
                               "subsystems": {"sftp": ["/usr/lib/sftp-server"]}}}


def test_kubernetes_connection_is_not_the_webhooks_to_set():
    import pytest
    from hatchway.daemon.containerssh import Unsupported, translate
    with pytest.raises(Unsupported, match="kubernetes.connection"):
        translate({"kubernetes": {"connection": {"host": "evil:6443"}}})
    with pytest.raises(Unsupported, match="kubernetes.pod.metadata.namespace"):
        translate({"kubernetes": {"pod": {"metadata": {"namespace": "elsewhere"}}}})
