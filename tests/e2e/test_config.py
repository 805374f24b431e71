"""Per-user containers: the config file, groups and templates, ContainerSSH's
config webhook, and the admin policy — checked with `docker inspect` of the
real session containers and through the real sshd."""

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import containerssh_schema as schema

from .stack import IMAGE, run, wait_for
from .webhook_servers import ContainerSSHServer

ALT_IMAGE = "hatchway/demo-alt:latest"
TREE = Path("/srv/hatchway-test")


@pytest.fixture(scope="module", autouse=True)
def alt_image():
    run(["docker", "tag", IMAGE, ALT_IMAGE])
    yield
    run(["docker", "rmi", ALT_IMAGE], check=False)


@pytest.fixture
def tree():
    """Host directories to mount, with a symlink pointing out of the allowed
    tree, on a nosuid file system (as writable mounts must be)."""
    shutil.rmtree(TREE, ignore_errors=True)
    TREE.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,mode=0755", "tmpfs", str(TREE)])
    for user in ("alice", "bob"):
        (TREE / "sites" / user).mkdir(parents=True)
        (TREE / "sites" / user / "owner").write_text(f"{user}\n")
    (TREE / "outside").mkdir()
    (TREE / "outside" / "secret").write_text("secret\n")
    os.symlink(TREE / "outside", TREE / "sites" / "sneaky")
    yield TREE
    run(["umount", "-l", str(TREE)], check=False)
    shutil.rmtree(TREE, ignore_errors=True)


@pytest.fixture
def webhook(hw):
    srv = ContainerSSHServer()
    yield srv
    srv.close()


def use_webhook(hw, srv, **extra):
    hw.reconfigure({"config_webhook": {"url": f"{srv.url}/config", "timeout": "3s"}, **extra})


def inspect_session(hw, user, command="sleep 30"):
    """Start a session, `docker inspect` its container, end the session."""
    p = subprocess.Popen(hw.ssh_argv(user, command), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ctr = hw.one_container(user=user)
        return json.loads(run(["docker", "inspect", ctr["ID"]]).stdout)[0]
    finally:
        p.kill()
        p.wait()


def no_container_created(hw, user, since):
    out = run(["docker", "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
               "--filter", "event=create", "--filter", f"label=io.hatchway.user={user}",
               "--format", "{{.ID}}"]).stdout
    return out.strip() == ""


# ------------------------------------------------------------------ config webhook

def test_webhook_sets_image_env_mounts_and_limits(hw, webhook, tree):
    webhook.configs["alice"] = {"docker": {"execution": {
        "container": {"image": ALT_IMAGE, "env": ["GREETING=hello from the webhook"]},
        "host": {"binds": [f"{tree}/sites/alice:/site:ro"],
                 "resources": {"memory": 268435456, "nanocpus": 500000000, "pidslimit": 64}}}}}
    use_webhook(hw, webhook, policy={"mount_prefixes": [str(tree / "sites")]})
    info = inspect_session(hw, "alice")
    assert info["Config"]["Image"] == ALT_IMAGE
    assert "GREETING=hello from the webhook" in info["Config"]["Env"]
    host = info["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (268435456, 500000000, 64)
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in host["Mounts"]] == \
        [(f"{tree}/sites/alice", "/site", True)]
    p = hw.ssh("alice", "cat /site/owner; echo $GREETING")
    assert p.stdout == b"alice\nhello from the webhook\n", p.stderr
    # what Hatchway sent, and what it accepted, fit ContainerSSH's published schemas
    route, req = webhook.requests[-1]
    assert route == "config"
    schema.check(req, "ConfigRequest")
    assert req["username"] == req["authenticatedUsername"] == "alice"
    assert req["remoteAddress"].startswith("127.0.0.1:")
    schema.check(webhook.replies[-1][1], "ConfigResponseBody")


def test_zero_or_negative_limits_from_the_webhook_are_capped(hw, webhook):
    # 0 and -1 mean "unlimited" to Docker: they must not slip under the maximum
    webhook.configs["alice"] = {"docker": {"execution": {"host": {
        "resources": {"memory": 0, "nanocpus": 0, "pidslimit": -1}}}}}
    use_webhook(hw, webhook, policy={"max_memory": "256m", "max_cpus": 0.5, "max_pids": 64})
    host = inspect_session(hw, "alice")["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (256_000_000, 500000000, 64)


def test_refusals_name_the_rule_not_the_host_paths(hw, webhook, tree):
    webhook.configs["alice"] = {"docker": {"execution": {"host": {
        "binds": [f"{tree}/sites/sneaky:/x"]}}}}
    use_webhook(hw, webhook, policy={"mount_prefixes": [str(tree / "sites")]})
    p = hw.ssh("alice", "true")
    assert p.stderr == b"hatchway: policy refuses docker.mounts: a mount source is not under " \
                       b"an allowed prefix (policy.mount_prefixes)\n"
    wait_for(lambda: f"really {tree}/outside" in hw.daemon_log(), 10, what="the log line")


def test_containerssh_documented_answer_works_unchanged(hw, webhook):
    # the reply exactly as ContainerSSH documents it (its config webhook reference)
    webhook.configs["alice"] = {"backend": "docker", "docker": {"execution": {
        "container": {"image": ALT_IMAGE}, "mode": "connection"}}}
    use_webhook(hw, webhook)
    assert inspect_session(hw, "alice")["Config"]["Image"] == ALT_IMAGE
    assert hw.ssh("alice", "cat /etc/hatchway-demo").returncode == 0


def test_users_without_an_answer_get_the_file_config(hw, webhook):
    use_webhook(hw, webhook)
    assert inspect_session(hw, "bob")["Config"]["Image"] == IMAGE


def test_the_connection_id_matches_the_key_helpers(hw, webhook):
    use_webhook(hw, webhook, auth={"cache": {"ttl": "0s"}})   # the helper logs conn= on a miss
    assert hw.ssh("alice", "true").returncode == 0
    conn = webhook.requests[-1][1]["connectionId"]
    assert f"conn={conn}" in hw.auth_log()


@pytest.mark.parametrize("behaviour,message", [
    ("down", "hatchway: cannot get this session's configuration: cannot connect"),
    ("slow", "hatchway: cannot get this session's configuration: "),
    ("garbage", "hatchway: cannot get this session's configuration: config webhook reply is not a JSON object"),
    ("http500", "hatchway: cannot get this session's configuration: config webhook answered HTTP 500"),
])
def test_a_failing_webhook_refuses_within_the_deadline(hw, webhook, behaviour, message):
    if behaviour == "down":
        hw.reconfigure({"config_webhook": {"url": "http://127.0.0.1:9/config", "timeout": "3s"}})
    else:
        webhook.behaviour = behaviour
        use_webhook(hw, webhook)
    t0 = time.time()
    p = hw.ssh("alice", "echo should not run")
    took = time.time() - t0
    assert p.returncode == 255 and p.stdout == b""
    assert p.stderr.decode().startswith(message), p.stderr
    assert took < 3 + 10, f"refused only after {took:.1f}s"     # deadline 3 s, slack for the machine
    assert no_container_created(hw, "alice", t0)


# ------------------------------------------------------------------ policy

@pytest.mark.parametrize("host,field", [
    ({"binds": ["/etc:/hostetc"]}, "docker.mounts"),
    ({"binds": ["/srv/hatchway-test/sites/../outside:/x"]}, "docker.mounts"),
    ({"binds": ["/srv/hatchway-test/sites/sneaky:/x"]}, "docker.mounts"),
    ({"binds": ["/var/run/docker.sock:/var/run/docker.sock"]}, "docker.mounts"),
    ({"privileged": True}, "docker.privileged"),
    ({"networkmode": "host"}, "docker.network"),
    ({"resources": {"memory": 64 << 30}}, "docker.memory"),
])
def test_policy_refuses_and_nothing_starts(hw, webhook, tree, host, field):
    webhook.configs["alice"] = {"docker": {"execution": {"host": host}}}
    use_webhook(hw, webhook, policy={
        "mount_prefixes": [str(tree / "sites")], "max_memory": "1g",
        "webhook_may_set": ["docker"]})
    t0 = time.time()
    p = hw.ssh("alice", "echo should not run")
    assert p.returncode == 255 and p.stdout == b""
    assert p.stderr.decode().startswith(f"hatchway: policy refuses {field}"), p.stderr
    assert no_container_created(hw, "alice", t0)
    wait_for(lambda: f"policy refuses {field}" in hw.daemon_log(), 5, what="the log line")


def test_webhook_may_only_set_allowed_fields(hw, webhook):
    webhook.configs["alice"] = {"docker": {"execution": {"host": {"readonlyrootfs": True}}}}
    use_webhook(hw, webhook, policy={"webhook_may_set": ["docker.image"]})
    p = hw.ssh("alice", "true")
    assert p.returncode == 255
    assert b"policy refuses docker.read_only: the config webhook may not set it" in p.stderr


def test_unsupported_containerssh_fields_refuse_rather_than_being_ignored(hw, webhook):
    webhook.configs["alice"] = {"security": {"command": {"mode": "disable"}}}
    use_webhook(hw, webhook)
    p = hw.ssh("alice", "true")
    assert p.returncode == 255
    assert b"unusable answer: config.security: not supported by Hatchway" in p.stderr


# ------------------------------------------------------------------ file config

def test_templated_mounts_give_each_user_their_own_directory(hw, tree):
    hw.reconfigure({"docker": {"mounts": [f"{tree}/sites/{{user}}:/site"]},
                    "policy": {"mount_prefixes": [str(tree / "sites")]}})
    for user in ("alice", "bob"):
        p = hw.ssh(user, "cat /site/owner; ls /site")
        assert p.stdout == f"{user}\nowner\n".encode(), p.stderr


@pytest.fixture
def students():
    run(["groupadd", "-f", "hw-students"])
    run(["usermod", "-aG", "hw-students", "bob"])
    yield "hw-students"
    run(["gpasswd", "-d", "bob", "hw-students"], check=False)
    run(["groupdel", "hw-students"], check=False)


def test_a_group_gets_its_own_image_and_limits(hw, students):
    hw.reconfigure({"groups": {students: {"docker": {"image": ALT_IMAGE, "pids_limit": 77}}}})
    info = inspect_session(hw, "bob")
    assert (info["Config"]["Image"], info["HostConfig"]["PidsLimit"]) == (ALT_IMAGE, 77)
    assert inspect_session(hw, "alice")["Config"]["Image"] == IMAGE


@pytest.fixture
def silent_registry():
    """A registry on loopback that accepts connections and never answers
    (dockerd speaks plain HTTP to 127.0.0.0/8 registries)."""
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held = []
    stop = threading.Event()

    def hold():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=hold, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_a_slow_pull_holds_up_only_its_own_session(hw, students, silent_registry):
    # bob's image comes from a registry that never answers: his pull hangs
    # until its deadline while alice logs in as usual
    image = f"{silent_registry}/nothing:1"
    hw.reconfigure({"groups": {students: {"docker": {"image": image, "start_timeout": "8s"}}}})
    slow = subprocess.Popen(hw.ssh_argv("bob", "true"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    t0 = time.time()
    fast = hw.ssh("alice", "echo quick")
    assert fast.stdout == b"quick\n"
    assert slow.poll() is None, "the slow pull ended before the other session was served"
    _, err = slow.communicate(timeout=60)
    assert slow.returncode == 255
    assert err.startswith(f"hatchway: image {image} is not available here and cannot be "
                          "pulled".encode()), err
    print(f"alice served in {time.time() - t0:.2f}s while bob's pull was hanging")


# ------------------------------------------------------------------ validation

def test_check_and_the_daemon_report_schema_errors_with_lines(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("docker:\n  image: x\n  memry: 1g\nsession:\n  stop_grace: soon\n")
    p = run(["hatchway", "check", "--config", str(bad)], check=False)
    assert p.returncode == 1
    assert f"FAIL {bad}:3: docker.memry: unknown key" in p.stdout
    d = run(["hatchwayd", "--config", str(bad)], check=False)
    assert d.returncode == 2
    assert d.stderr.startswith(f"hatchwayd: {bad}:3: docker.memry: unknown key")
    bad.write_text("session:\n  stop_grace: soon\n")
    p = run(["hatchway", "check", "--config", str(bad)], check=False)
    assert f"FAIL {bad}:2: session.stop_grace: expected a duration like 5s or 500ms, got 'soon'" \
        in p.stdout
