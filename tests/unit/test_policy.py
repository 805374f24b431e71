"""The admin policy, on real paths and symlinks in a temporary directory."""

import os
import subprocess

import pytest

from hatchway.core import config
from hatchway.daemon import policy

# the limits that hold when the admin sets none (hatchway.yaml(5))
DEFAULTS = (1 << 30, 1.0, 1024)


def cfg(docker=None, pol=None):
    c = config.defaults()
    c["docker"].update(config.validate(docker or {}, config.schema().fields["docker"], "docker"))
    c["policy"].update(config.validate(pol or {}, config.schema().fields["policy"], "policy"))
    return c


def check(c, webhook=None, user="alice"):
    return policy.check(c, user, webhook)


@pytest.fixture
def tree(tmp_path):
    """A nosuid tmpfs (writable mounts need one), with a symlink out of sites/."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,mode=0755", "tmpfs",
                    str(tmp_path)], check=True)
    (tmp_path / "sites" / "alice").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", tmp_path / "sites" / "sneaky")
    yield tmp_path
    subprocess.run(["umount", "-l", str(tmp_path)], check=True)


def test_mounts_under_a_prefix_are_resolved_to_real_paths(tree):
    c = cfg({"mounts": [f"{tree}/sites/../sites/alice:/www"]}, {"mount_prefixes": [f"{tree}/sites"]})
    out = check(c)
    assert out["docker"]["mounts"][0]["Source"] == f"{tree}/sites/alice"


@pytest.mark.parametrize("source", ["{t}/secret", "{t}/sites/../secret", "{t}/sites/sneaky"])
def test_escapes_from_the_prefixes_are_refused(tree, source):
    c = cfg({"mounts": [f"{source.format(t=tree)}:/www"]}, {"mount_prefixes": [f"{tree}/sites"]})
    with pytest.raises(policy.Violation, match="docker.mounts: .* is not under an allowed prefix"):
        check(c)


def test_webhook_mounts_need_a_prefix_even_when_none_is_configured(tree):
    c = cfg({"mounts": [f"{tree}/sites/alice:/www"]})
    check(cfg({"mounts": [f"{tree}/sites/alice:/www"]}))     # the admin's own: trusted
    with pytest.raises(policy.Violation, match="not under an allowed prefix"):
        check(c, {"docker": {"mounts": c["docker"]["mounts"]}})


@pytest.mark.parametrize("source", ["/", "/var/run/docker.sock", "/run", "/var/run", "/var",
                                    "/proc", "/sys/kernel", "/etc", "/var/lib/docker"])
def test_some_sources_are_never_mounted(source):
    # /run and /var/run hold the Docker socket: a parent is as bad as the socket
    c = cfg({"mounts": [f"{source}:/x:ro"]}, {"mount_prefixes": ["/"]})
    with pytest.raises(policy.Violation, match="may never be mounted"):
        check(c)


def test_a_missing_source_is_refused(tree):
    c = cfg({"mounts": [f"{tree}/nope:/x"]})
    with pytest.raises(policy.Violation, match="cannot be used"):
        check(c)


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
        check(cfg(docker))


def test_the_admin_may_allow_them():
    c = cfg({"privileged": True, "network": "host", "cap_add": ["CAP_NET_ADMIN"],
             "devices": ["/dev/fuse"]},
            {"allow_privileged": True, "allow_host_namespaces": True,
             "allow_capabilities": ["net_admin"], "allow_devices": True})
    check(c)


def test_container_namespaces_are_never_joined_even_when_host_is_allowed():
    with pytest.raises(policy.Violation):
        check(cfg({"pid_mode": "container:x"}, {"allow_host_namespaces": True}))


# ------------------------------------------------------------------ limits

def limits(out):
    return out["docker"]["memory"], out["docker"]["cpus"], out["docker"]["pids_limit"]


def test_limits_are_capped_and_defaulted():
    with pytest.raises(policy.Violation, match=r"docker.memory: 4000000000 exceeds policy.max_memory"):
        check(cfg({"memory": "4g"}, {"max_memory": "1g"}))
    out = check(cfg({}, {"max_memory": "1g", "max_cpus": 2, "max_pids": 100}))
    assert limits(out) == (1_000_000_000, 2.0, 100)


@pytest.mark.parametrize("docker", [
    {"memory": 0, "cpus": 0, "pids_limit": 0},
    {"memory": 0, "cpus": -1, "pids_limit": -1},
])
def test_zero_or_negative_limits_mean_unlimited_and_are_capped(docker):
    # what a config webhook answering memory: 0, nanoCPUs: 0, pidsLimit: -1 gives
    out = check(cfg(docker, {"max_memory": "1g", "max_cpus": 2, "max_pids": 100}))
    assert limits(out) == (1_000_000_000, 2.0, 100)


def test_sessions_are_limited_by_default():
    assert limits(check(cfg())) == DEFAULTS
    assert limits(check(cfg({"memory": "512m", "pids_limit": 64}))) == (512_000_000, 1.0, 64)
    # 0 in the policy: no maximum, and nothing imposed
    assert limits(check(cfg({}, {"max_memory": 0, "max_cpus": 0, "max_pids": 0}))) == \
        (None, None, None)


# ------------------------------------------------------------------ capabilities, privileges

def test_baseline_capabilities_are_dropped_whatever_cap_drop_says():
    assert check(cfg())["docker"]["cap_drop"] == ["NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"]
    assert check(cfg({"cap_drop": ["ALL"]}))["docker"]["cap_drop"] == ["ALL"]
    assert check(cfg({"cap_drop": ["chown"]}))["docker"]["cap_drop"] == \
        ["CHOWN", "NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"]
    # what the admin allows by name stays
    assert check(cfg({}, {"allow_capabilities": ["NET_RAW"]}))["docker"]["cap_drop"] == \
        ["MKNOD", "AUDIT_WRITE", "SETFCAP"]


def test_new_privileges_need_the_policy():
    with pytest.raises(policy.Violation, match="docker.no_new_privileges"):
        check(cfg({"no_new_privileges": False}))
    check(cfg({"no_new_privileges": False}, {"allow_new_privileges": True}))


def test_refusals_show_the_rule_and_log_the_paths(tree):
    c = cfg({"mounts": [f"{tree}/sites/sneaky:/www"]}, {"mount_prefixes": [f"{tree}/sites"]})
    with pytest.raises(policy.Violation) as e:
        check(c)
    assert str(tree) not in e.value.message
    assert f"{tree}/secret" in e.value.log_reason


# ------------------------------------------------------------------ mounts: setuid files

@pytest.fixture
def plain(tmp_path_factory):
    """A directory on a file system without nosuid (the test's /tmp or /)."""
    d = tmp_path_factory.mktemp("plain")
    (d / "alice").mkdir()
    if os.statvfs(d).f_flag & os.ST_NOSUID:
        pytest.skip("the temporary directory is on a nosuid file system")
    return d


def test_a_writable_mount_needs_a_nosuid_source(plain, tree):
    with pytest.raises(policy.Violation, match="must be on a nosuid file system"):
        check(cfg({"mounts": [f"{plain}/alice:/home"]}))
    check(cfg({"mounts": [f"{plain}/alice:/home:ro"]}))                # read-only: fine
    check(cfg({"mounts": [f"{tree}/sites/alice:/home"]}))              # nosuid: fine
    # a container user that can never be root (nor group root)
    check(cfg({"mounts": [f"{plain}/alice:/home"], "user": "1000:1000"}))
    for user in ("1000", "0:1000", "1000:0", "alice"):
        with pytest.raises(policy.Violation, match="nosuid"):
            check(cfg({"mounts": [f"{plain}/alice:/home"], "user": user}))
    check(cfg({"mounts": [f"{plain}/alice:/home"]}, {"allow_suid_mounts": True}))


# ------------------------------------------------------------------ mounts: who can change the path

def test_a_symlink_below_a_users_directory_is_refused(tree):
    """/srv/x/{user}/data, where the user owns /srv/x/alice and makes data a
    symlink to bob's directory (inside the prefix) or anywhere else."""
    bob = tree / "sites" / "bob"
    bob.mkdir()
    home = tree / "sites" / "alice"
    os.chown(home, 1000, 1000)
    os.symlink(bob, home / "data")
    with pytest.raises(policy.Violation, match="may be changed by someone other than root") as e:
        check(cfg({"mounts": [f"{home}/data:/data"]}, {"mount_prefixes": [f"{tree}/sites"]}))
    assert "uid 1000" in e.value.log_reason and "uid 1000" not in e.value.message
    # a real directory there is refused just the same: alice could swap it
    # for a symlink between this check and Docker's mount
    os.unlink(home / "data")
    (home / "data").mkdir()
    with pytest.raises(policy.Violation, match="may be changed"):
        check(cfg({"mounts": [f"{home}/data:/data"]}, {"mount_prefixes": [f"{tree}/sites"]}))


def test_a_world_writable_directory_on_the_way_is_refused(tree):
    os.chmod(tree / "sites", 0o777)
    with pytest.raises(policy.Violation, match="may be changed"):
        check(cfg({"mounts": [f"{tree}/sites/alice:/www"]}))


def test_the_prefix_owner_may_own_directories_below_it(tree):
    os.chown(tree / "sites", 900, 900)
    (tree / "sites" / "alice" / "data").mkdir()
    os.chown(tree / "sites" / "alice", 900, 900)
    check(cfg({"mounts": [f"{tree}/sites/alice/data:/www"]},
              {"mount_prefixes": [f"{tree}/sites"]}))
    with pytest.raises(policy.Violation, match="may be changed"):   # no prefix: root only
        check(cfg({"mounts": [f"{tree}/sites/alice/data:/www"]}))


def test_a_mount_inside_another_writable_mount_of_the_session_is_refused(tree):
    (tree / "sites" / "alice" / "data").mkdir()
    mounts = [f"{tree}/sites/alice:/home", f"{tree}/sites/alice/data:/data"]
    with pytest.raises(policy.Violation, match="inside another writable mount"):
        check(cfg({"mounts": mounts}))
    check(cfg({"mounts": [f"{tree}/sites/alice:/home:ro", f"{tree}/sites/alice/data:/data"]}))


# ------------------------------------------------------------------ named volumes

def test_only_hatchways_named_volumes():
    check(cfg({"mounts": [{"type": "volume", "source": "hatchway-alice-home", "target": "/h"}]}))
    for name in ("pgdata", "alice-home", "hatchway-"):
        with pytest.raises(policy.Violation, match="only Hatchway's own volumes"):
            check(cfg({"mounts": [{"type": "volume", "source": name, "target": "/h"}]}))


def test_webhook_fields_outside_the_allowlist_are_named():
    with pytest.raises(policy.Violation, match="docker.privileged: the config webhook may not set"):
        policy.check_webhook_fields({"docker": {"image": "x", "privileged": True}},
                                    ["docker.image"])
    policy.check_webhook_fields({"docker": {"image": "x", "env": {"A": "1"}}},
                                ["docker.image", "docker.env"])
    policy.check_webhook_fields({"session": {"subsystems": {"sftp": ["/x"]}}},
                                ["session.subsystems"])
