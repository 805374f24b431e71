"""The admin policy, on real paths and symlinks in a temporary directory."""

import os

import pytest

from hatchway.core import config
from hatchway.daemon import policy
def cfg(docker=None, pol=None):
    c = config.defaults()
    c["docker"].update(config.validate(docker or {}, config.schema().fields["docker"], "docker"))
    c["policy"].update(config.validate(pol or {}, config.schema().fields["policy"], "policy"))
    return c


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "sites" / "alice").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", tmp_path / "sites" / "sneaky")
    return tmp_path


def test_mounts_under_a_prefix_are_resolved_to_real_paths(tree):
    c = cfg({"mounts": [f"{tree}/sites/../sites/alice:/www"]}, {"mount_prefixes": [f"{tree}/sites"]})
    out = policy.check(c)
    assert out["docker"]["mounts"][0]["Source"] == f"{tree}/sites/alice"


@pytest.mark.parametrize("source", ["{t}/secret", "{t}/sites/../secret", "{t}/sites/sneaky"])
def test_escapes_from_the_prefixes_are_refused(tree, source):
    c = cfg({"mounts": [f"{source.format(t=tree)}:/www"]}, {"mount_prefixes": [f"{tree}/sites"]})
    with pytest.raises(policy.Violation, match="docker.mounts: .* is not under an allowed prefix"):
        policy.check(c)


def test_webhook_mounts_need_a_prefix_even_when_none_is_configured(tree):
    c = cfg({"mounts": [f"{tree}/sites/alice:/www"]})
    policy.check(cfg({"mounts": [f"{tree}/sites/alice:/www"]}))     # the admin's own: trusted
    with pytest.raises(policy.Violation, match="not under an allowed prefix"):
        policy.check(c, webhook_mounts=c["docker"]["mounts"])


@pytest.mark.parametrize("source", ["/", "/var/run/docker.sock", "/run"])
def test_some_sources_are_never_mounted(source):
    if not os.path.exists(source):
        pytest.skip(f"{source} does not exist here")
    c = cfg({"mounts": [f"{source}:/x"]}, {"mount_prefixes": ["/"]})
    if source == "/run":
        # /run itself is fine; the docker socket inside it is not
        policy.check(c)
    else:
        with pytest.raises(policy.Violation, match="may never be mounted"):
            policy.check(c)


def test_a_missing_source_is_refused(tree):
    c = cfg({"mounts": [f"{tree}/nope:/x"]})
    with pytest.raises(policy.Violation, match="cannot be used"):
        policy.check(c)


@pytest.mark.parametrize("docker,field", [
    ({"privileged": True}, "docker.privileged"),
    ({"network": "host"}, "docker.network"),
    ({"pid_mode": "host"}, "docker.pid_mode"),
    ({"ipc_mode": "host"}, "docker.ipc_mode"),
    ({"network": "container:abc"}, "docker.network"),
    ({"cap_add": ["SYS_ADMIN"]}, "docker.cap_add"),
    ({"devices": ["/dev/fuse"]}, "docker.devices"),
])
def test_dangerous_settings_are_refused_by_default(docker, field):
    with pytest.raises(policy.Violation, match=f"policy refuses {field}"):
        policy.check(cfg(docker))


def test_the_admin_may_allow_them():
    c = cfg({"privileged": True, "network": "host", "cap_add": ["CAP_NET_ADMIN"],
             "devices": ["/dev/fuse"]},
            {"allow_privileged": True, "allow_host_namespaces": True,
             "allow_capabilities": ["net_admin"], "allow_devices": True})
    policy.check(c)


def test_container_namespaces_are_never_joined_even_when_host_is_allowed():
    with pytest.raises(policy.Violation):
        policy.check(cfg({"pid_mode": "container:x"}, {"allow_host_namespaces": True}))


def test_limits_are_capped_and_defaulted():
    with pytest.raises(policy.Violation, match=r"docker.memory: 4000000000 exceeds policy.max_memory"):
        policy.check(cfg({"memory": "4g"}, {"max_memory": "1g"}))
    out = policy.check(cfg({}, {"max_memory": "1g", "max_cpus": 2, "max_pids": 100}))
    assert (out["docker"]["memory"], out["docker"]["cpus"], out["docker"]["pids_limit"]) == \
        (1_000_000_000, 2.0, 100)


def test_webhook_fields_outside_the_allowlist_are_named():
    with pytest.raises(policy.Violation, match="docker.privileged: the config webhook may not set"):
        policy.check_webhook_fields({"docker": {"image": "x", "privileged": True}},
                                    ["docker.image"])
    policy.check_webhook_fields({"docker": {"image": "x", "env": {"A": "1"}}},
                                ["docker.image", "docker.env"])
    policy.check_webhook_fields({"session": {"subsystems": {"sftp": ["/x"]}}},
                                ["session.subsystems"])
