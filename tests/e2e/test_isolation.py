"""What a session's container is when the admin says nothing, on the real
dockerd: limited, on Hatchway's own network where sessions cannot reach
each other, without raw sockets or new privileges; how many sessions a user
and the host may have at once; and which host directories and volumes may
be mounted, judged on real mounts, symlinks and setuid files."""

import json
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .stack import run, wait_for
from .test_config import inspect_session, no_container_created

TREE = Path("/srv/hatchway-isolation")
CAP_NET_RAW, CAP_MKNOD = 13, 27


def caps_of(status: str) -> dict[str, str]:
    return dict(line.split(":\t") for line in status.splitlines() if ":\t" in line)


# ------------------------------------------------------------------ the defaults

def test_a_session_is_limited_and_unprivileged_by_default(hw):
    host = inspect_session(hw, "alice")["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (1 << 30, 10**9, 1024)
    assert {"NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"} <= set(host["CapDrop"])
    assert host["SecurityOpt"] == ["no-new-privileges"]
    p = hw.ssh("alice", "grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status")
    status = caps_of(p.stdout.decode())
    assert status["NoNewPrivs"] == "1", status
    for field in ("CapEff", "CapBnd"):
        caps = int(status[field], 16)
        assert not caps & (1 << CAP_NET_RAW) and not caps & (1 << CAP_MKNOD), status


def test_sessions_cannot_reach_each_other(hw):
    """Hatchway's network has no traffic between containers: bob's session
    cannot connect to a port alice's session listens on, though the host can."""
    listener = subprocess.Popen(hw.ssh_argv("alice", "echo listening; "
                                                     "while :; do echo hi | nc -l -p 7000; done"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        assert listener.stdout.readline() == b"listening\n"
        ctr = hw.one_container(user="alice")
        info = json.loads(run(["docker", "inspect", ctr["ID"]]).stdout)[0]
        assert info["HostConfig"]["NetworkMode"] == "hatchway"
        ip = info["NetworkSettings"]["Networks"]["hatchway"]["IPAddress"]
        net = json.loads(run(["docker", "network", "inspect", "hatchway"]).stdout)[0]
        assert net["Options"]["com.docker.network.bridge.enable_icc"] == "false"
        assert net["Options"]["com.docker.network.bridge.name"] == "hatchway0"

        def host_gets_hi():
            try:
                with socket.create_connection((ip, 7000), timeout=5) as s:
                    return s.recv(10) == b"hi\n"
            except OSError:
                return False
        wait_for(host_gets_hi, 20, 0.2, what="alice's listener, from the host")
        p = hw.ssh("bob", f"timeout 5 nc {ip} 7000 </dev/null; echo rc=$?")
        assert p.stdout.decode().strip().endswith("rc=143") and b"hi" not in p.stdout, p
    finally:
        listener.kill()
        listener.wait()


@pytest.mark.config({"docker": {"user": "{uid}:{gid}"}})
def test_the_container_user_can_be_the_hosts_user(hw):
    pw = pwd.getpwnam("alice")
    p = hw.ssh("alice", "id -u; id -g")
    assert p.stdout.decode().split() == [str(pw.pw_uid), str(pw.pw_gid)], p.stderr


# ------------------------------------------------------------------ how many sessions

PER_USER = b"hatchway: you have 2 sessions open, the most allowed; end one and try again\n"


@pytest.fixture
def hold(hw):
    """hold(user): a session of `user` that stays open until the test ends."""
    held = []

    def start(user):
        p = subprocess.Popen(hw.ssh_argv(user, "echo up; sleep 120"), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        held.append(p)
        assert p.stdout.readline() == b"up\n", p.stderr.read()
        return p
    yield start
    for p in held:
        p.kill()
        p.wait()


@pytest.mark.config({"limits": {"max_sessions_per_user": 2, "max_sessions": 3}})
def test_sessions_per_user_and_per_host_are_capped(hw, hold):
    first = hold("alice")
    hold("alice")
    t0 = time.time()
    p = hw.ssh("alice", "echo should not run")
    assert (p.returncode, p.stdout) == (255, b"")
    assert p.stderr == PER_USER
    hold("bob")                                     # bob has his own share ...
    p = hw.ssh("bob", "echo should not run")        # ... of a host that is now full
    assert p.stderr == b"hatchway: this host is at its limit of 3 sessions; " \
                       b"try again later\n"
    assert no_container_created(hw, "alice", t0)
    first.kill()
    wait_for(lambda: hw.ssh("alice", "echo again").stdout == b"again\n", 30, 0.5,
             what="a session slot for alice")


@pytest.mark.config({"limits": {"max_sessions_per_user": 2}})
def test_sessions_outliving_a_daemon_restart_still_count(hw, hold):
    """The new main process did not fork them: it counts them from their live
    records (/run/hatchway/sessions) while their session process lives."""
    first = hold("alice")
    hold("alice")
    hw.restart_daemon()
    p = hw.ssh("alice", "echo should not run")
    assert (p.returncode, p.stdout, p.stderr) == (255, b"", PER_USER)
    first.kill()
    wait_for(lambda: hw.ssh("alice", "echo again").stdout == b"again\n", 30, 0.5,
             what="a session slot for alice")


@pytest.mark.config({"limits": {"max_starts_per_user": 3, "starts_window": "1h"}})
def test_a_user_starts_only_so_many_sessions_within_the_window(hw):
    # a new config: a new main process, so a fresh window
    for i in range(3):
        p = hw.ssh("alice", f"echo {i}")
        assert p.stdout == f"{i}\n".encode(), p.stderr
    t0 = time.time()
    p = hw.ssh("alice", "echo should not run")
    assert (p.returncode, p.stdout) == (255, b"")
    assert p.stderr == b"hatchway: you started 3 sessions within 1h, the most allowed; " \
                       b"try again later\n"
    assert no_container_created(hw, "alice", t0)
    assert hw.ssh("bob", "echo bob").stdout == b"bob\n"     # his own count


# ------------------------------------------------------------------ mounts

@pytest.fixture
def tree():
    """A nosuid tmpfs and a plain directory on / (ext4, suid allowed), each
    with a directory per user, and a copy of the host's `id` for alice's
    container to make setuid."""
    shutil.rmtree(TREE, ignore_errors=True)
    (TREE / "nosuid").mkdir(parents=True)
    run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,mode=0755", "tmpfs", str(TREE / "nosuid")])
    for kind in ("nosuid", "plain"):
        for user in ("alice", "bob"):
            d = TREE / kind / user
            d.mkdir(parents=True)
            (d / "owner").write_text(f"{user}\n")
        shutil.copy("/usr/bin/id", TREE / kind / "alice" / "id")
    yield TREE
    run(["umount", "-l", str(TREE / "nosuid")], check=False)
    shutil.rmtree(TREE, ignore_errors=True)


def euid_of_setuid_id(path: Path) -> str:
    """What the host's `id -u` says, run by nobody from `path` after the
    container made it setuid."""
    return run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                str(path), "-u"], check=False).stdout.strip()


def test_container_root_cannot_leave_a_setuid_root_program_on_the_host(hw, tree):
    hw.reconfigure({"docker": {"mounts": [f"{tree}/plain/{{user}}:/home"]}})
    p = hw.ssh("alice", "chmod 4755 /home/id && echo done")
    assert p.returncode == 255 and p.stdout == b"", p.stdout
    assert p.stderr == b"hatchway: policy refuses docker.mounts: a writable host directory " \
                       b"must be on a nosuid file system (or the container user non-root)\n"
    assert euid_of_setuid_id(tree / "plain/alice/id") == "65534"
    # on a nosuid file system it is allowed: the bit is set, and means nothing
    hw.reconfigure({"docker": {"mounts": [f"{tree}/nosuid/{{user}}:/home"]}})
    p = hw.ssh("alice", "chmod 4755 /home/id && grep ' /home ' /proc/self/mountinfo")
    assert p.returncode == 0, p.stderr
    assert "nosuid" in p.stdout.decode().split()[5].split(","), p.stdout
    assert (tree / "nosuid/alice/id").stat().st_mode & 0o4000
    assert euid_of_setuid_id(tree / "nosuid/alice/id") == "65534"
    # read-only is fine anywhere
    hw.reconfigure({"docker": {"mounts": [f"{tree}/plain/{{user}}:/home:ro"]}})
    assert hw.ssh("alice", "cat /home/owner").stdout == b"alice\n"


@pytest.mark.parametrize("source", ["/run", "/var/run"])
def test_the_parents_of_the_docker_socket_are_never_mounted(hw, source):
    hw.reconfigure({"docker": {"mounts": [f"{source}:/hostrun:ro"]},
                    "policy": {"mount_prefixes": ["/"]}})
    t0 = time.time()
    p = hw.ssh("alice", "ls -l /hostrun/docker.sock")
    assert p.returncode == 255 and b"docker.sock" not in p.stdout
    assert p.stderr == b"hatchway: policy refuses docker.mounts: a mount source may never " \
                       b"be mounted\n"
    assert no_container_created(hw, "alice", t0)


def test_a_symlink_planted_below_a_users_directory_reaches_nothing(hw, tree):
    """`/srv/x/{user}/data` where alice owns /srv/x/alice: she turns `data`
    into a symlink to bob's directory (inside the prefix) and logs in again."""
    sites = tree / "nosuid"
    shutil.chown(sites / "alice", "alice", "alice")
    prefixes = {"mount_prefixes": [str(sites)]}
    hw.reconfigure({"docker": {"mounts": [f"{sites}/{{user}}:/home"]}, "policy": prefixes})
    p = hw.ssh("alice", f"ln -s {sites}/bob /home/data && echo planted")
    assert p.stdout == b"planted\n", p.stderr
    hw.reconfigure({"docker": {"mounts": [f"{sites}/{{user}}:/home",
                                          f"{sites}/{{user}}/data:/data"]}, "policy": prefixes})
    p = hw.ssh("alice", "cat /data/owner")
    assert p.returncode == 255 and b"bob" not in p.stdout
    assert p.stderr == b"hatchway: policy refuses docker.mounts: a directory on the way to a " \
                       b"mount source may be changed by someone other than root\n"
    # the user is told the rule; the log has the paths
    wait_for(lambda: f"{sites}/alice is owned by uid" in hw.daemon_log(), 10, what="the log line")


# ------------------------------------------------------------------ named volumes

@pytest.fixture
def volumes():
    yield
    for v in ("hatchway-alice-data", "hatchway-bob-data", "hatchway-evil"):
        run(["docker", "volume", "rm", "-f", v], check=False)


def test_named_volumes_belong_to_one_user(hw, volumes):
    hw.reconfigure({"docker": {"mounts": [
        {"type": "volume", "source": "hatchway-{user}-data", "target": "/data"}]}})
    assert hw.ssh("alice", "echo alice > /data/owner && echo ok").stdout == b"ok\n"
    vol = json.loads(run(["docker", "volume", "inspect", "hatchway-alice-data"]).stdout)[0]
    assert vol["Labels"]["io.hatchway.user"] == "alice"
    assert hw.ssh("alice", "cat /data/owner").stdout == b"alice\n"      # it persists
    assert hw.ssh("bob", "ls /data").stdout == b""                      # bob's is his own
    # a volume of the right name that someone else made (here: a bind of /etc)
    run(["docker", "volume", "create", "--opt", "type=none", "--opt", "device=/etc",
         "--opt", "o=bind", "hatchway-evil"])
    hw.reconfigure({"docker": {"mounts": [
        {"type": "volume", "source": "hatchway-evil", "target": "/data"}]}})
    p = hw.ssh("alice", "ls /data/shadow")
    assert p.returncode == 255 and b"shadow" not in p.stdout
    assert p.stderr == b"hatchway: policy refuses docker.mounts: that volume is not yours\n"
    # and a volume not named as Hatchway's, never
    hw.reconfigure({"docker": {"mounts": [{"type": "volume", "source": "pgdata",
                                           "target": "/data"}]}})
    p = hw.ssh("alice", "true")
    assert p.stderr == b"hatchway: policy refuses docker.mounts: only Hatchway's own volumes " \
                       b"(hatchway-\xe2\x80\xa6) may be mounted\n"


# ------------------------------------------------------------------ what users are told

def test_docker_errors_reach_the_log_not_the_user(hw):
    hw.reconfigure({"docker": {"workdir": "relative/dir"}})
    p = hw.ssh("alice", "true")
    assert p.returncode == 255
    assert p.stderr == b"hatchway: cannot create the session's container\n"
    wait_for(lambda: "relative/dir" in hw.daemon_log(), 10, what="Docker's words in the log")
