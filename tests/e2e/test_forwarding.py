"""Agent forwarding (`ssh -A`) landing in the container (issue #16), through
the real OpenSSH client and sshd, the shipped drop-in, the installed .deb and
real containers of the tools image with an ssh client and git in it.

The client's agent is a real ssh-agent on the host holding a key of its own;
the push target is a second, plain sshd (its own config, no Hatchway) that
listens on the docker bridge's host address, because a container's 127.0.0.1
is its own: that is the host as a container reaches it.
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from . import tools_image
from .stack import run, wait_for

AGENT_ON = {"docker": {"image": tools_image.SSH_IMAGE}, "session": {"agent_forwarding": True}}
AGENT_OFF = {"docker": {"image": tools_image.SSH_IMAGE}}
GIT_USER = "hwgit"
GIT_PORT = 2224
AGENT_SOCKETS = "/run/hatchway/ctr/*/agent-*.sock"


@pytest.fixture(scope="module", autouse=True)
def ssh_image():
    return tools_image.ensure(tools_image.SSH_PACKAGES)


@pytest.fixture(scope="module")
def agent(stack):
    """A running ssh-agent holding `agentkey`: (environment for the client,
    the key's fingerprint line as `ssh-add -l` prints it)."""
    key = stack.tmp / "agentkey"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agentkey@test",
             "-f", str(key)])
    sock = stack.tmp / "agent.sock"
    p = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(sock.exists, 10, what="ssh-agent's socket")
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        run(["ssh-add", str(key)], env=env)
        listed = run(["ssh-add", "-l"], env=env).stdout.strip()
        assert "agentkey@test" in listed
        yield env, listed, key
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)


def ssh_a(hw, user, command, env, forward=True, **kw):
    argv = hw.ssh_argv(user, command, options=("-A",) if forward else ("-o", "ForwardAgent=no"))
    return subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=120, **kw)


def agent_sockets() -> list[str]:
    return glob.glob(AGENT_SOCKETS)


@pytest.mark.config(AGENT_ON)
def test_ssh_add_in_the_container_lists_the_clients_key(hw, agent):
    env, listed, _ = agent
    p = ssh_a(hw, "alice", 'echo "SOCK=$SSH_AUTH_SOCK"; ssh-add -l', env)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "SOCK=/run/hatchway/agent-" in out
    assert listed in out                        # the same key, same fingerprint
    # the container's socket and directory are gone with the session
    assert agent_sockets() == []


@pytest.mark.config(AGENT_ON)
def test_the_agent_signs_for_a_git_push_from_the_container(hw, agent, git_server):
    env, _, _ = agent
    gateway, repo = git_server
    ssh = f"ssh -p {GIT_PORT} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    script = (f"set -e; cd /tmp; git init -q w; cd w; "
              f"git -c user.email=a@test -c user.name=alice commit -q --allow-empty -m pushed-by-agent; "
              f"GIT_SSH_COMMAND='{ssh}' git push -q {GIT_USER}@{gateway}:{repo} HEAD:refs/heads/main")
    p = ssh_a(hw, "alice", script, env)
    assert p.returncode == 0, p.stderr
    log = run(["git", "--git-dir", repo, "log", "--format=%s", "main"]).stdout
    assert log.split() == ["pushed-by-agent"]
    # and the same push without the agent is refused by that sshd: the key
    # really came through the forwarded agent
    p = ssh_a(hw, "alice", script.replace("pushed-by-agent", "no-agent"), env, forward=False)
    assert p.returncode != 0
    assert b"Permission denied" in p.stderr


@pytest.mark.config(AGENT_ON)
def test_only_this_containers_user_and_root_may_use_it(hw, agent):
    env, listed, _ = agent
    # the same container, a uid that is neither root nor its user: refused
    p = ssh_a(hw, "alice", "ssh-add -l; echo root=$?; "
                           "setpriv --reuid=4242 --regid=4242 --clear-groups ssh-add -l; "
                           "echo other=$?", env)
    out = p.stdout.decode()
    assert listed in out and "root=0" in out, (out, p.stderr)
    assert "other=0" not in out and "other=" in out, out
    assert "refused pid=" in hw.daemon_log()


@pytest.mark.config(AGENT_ON)
def test_another_user_cannot_reach_the_socket(hw, agent):
    env, _, _ = agent
    alice = subprocess.Popen(hw.ssh_argv("alice", "echo ready; sleep 60", options=("-A",)),
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert alice.stdout.readline() == b"ready\n"
        (sock,) = agent_sockets()
        # bob on the host: the per-container directories are the daemon's alone
        probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
                 "try:\n s.connect(sys.argv[1]); print('connected')\n"
                 "except OSError as e: print(type(e).__name__)\n")
        p = run(["setpriv", "--reuid=bob", "--regid=bob", "--init-groups", "/usr/bin/python3",
                 "-c", probe, sock])
        assert p.stdout.strip() == "PermissionError"
        # bob's own session (forwarding his agent too): his container has his
        # socket only, never alice's
        p = ssh_a(hw, "bob", "ls /run/hatchway; echo SOCK=$SSH_AUTH_SOCK", env)
        assert p.returncode == 0, p.stderr
        names = p.stdout.decode().split()
        assert os.path.basename(sock) not in names
        assert [n for n in names if n.startswith("agent-")] == \
            [p.stdout.decode().split("SOCK=/run/hatchway/")[1].strip()]
    finally:
        alice.kill()
        alice.wait()


@pytest.mark.config(AGENT_ON)
def test_the_socket_goes_when_the_connection_ends(hw, agent):
    env, _, _ = agent
    alice = subprocess.Popen(hw.ssh_argv("alice", "echo ready; sleep 60", options=("-A",)),
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert alice.stdout.readline() == b"ready\n"
        (sock,) = agent_sockets()
        directory = os.path.dirname(sock)
    finally:
        alice.kill()            # the client drops the connection
        alice.wait()
    wait_for(lambda: not os.path.exists(sock) and not os.path.exists(directory), 30,
             what="the agent socket and its directory to go")


@pytest.mark.config(AGENT_OFF)
def test_without_the_policy_there_is_no_agent(hw, agent):
    env, _, _ = agent
    p = ssh_a(hw, "alice", 'echo "SOCK=${SSH_AUTH_SOCK:-none}"; ls /run/hatchway 2>&1; '
                           'ssh-add -l; echo rc=$?', env)
    out = p.stdout.decode()
    assert "SOCK=none" in out, out
    assert "rc=2" in out            # ssh-add: cannot connect to an agent
    # sshd itself was not allowed to forward it: the key line had no agent-forwarding
    assert agent_sockets() == []


@pytest.mark.config({**AGENT_OFF, "groups": {"hwagent": {"session": {"agent_forwarding": True}}}})
def test_a_group_entry_can_turn_it_on_for_its_members(hw, agent):
    env, listed, _ = agent
    run(["groupadd", "-f", "hwagent"])
    run(["gpasswd", "-a", "alice", "hwagent"])
    try:
        a = ssh_a(hw, "alice", "ssh-add -l", env)
        b = ssh_a(hw, "bob", 'echo "SOCK=${SSH_AUTH_SOCK:-none}"', env)
    finally:
        run(["gpasswd", "-d", "alice", "hwagent"], check=False)
    assert a.returncode == 0 and listed in a.stdout.decode(), a.stderr
    assert b"SOCK=none" in b.stdout


@pytest.mark.config({**AGENT_ON, "session": {"agent_forwarding": True, "mode": "persistent"}})
def test_a_persistent_workspace_gets_each_sessions_agent(hw, agent):
    """Editors keep one environment: the workspace is made once (its agent
    directory mounted then) and every later session's agent appears in it."""
    env, listed, _ = agent
    run(["hatchway", "workspaces", "rm", "alice"], check=False)
    try:
        first = ssh_a(hw, "alice", 'echo "SOCK=$SSH_AUTH_SOCK"; ssh-add -l; '
                                   'echo made > /root/mark', env)
        assert first.returncode == 0, first.stderr
        assert listed in first.stdout.decode()
        # the session's socket went with it; the workspace and its directory stay
        assert agent_sockets() == []
        assert len(glob.glob("/run/hatchway/ctr/hatchway-ws-alice-*/")) == 1
        second = ssh_a(hw, "alice", 'cat /root/mark; echo "SOCK=$SSH_AUTH_SOCK"; ssh-add -l',
                       env)
        assert second.returncode == 0, second.stderr
        out = second.stdout.decode()
        assert out.startswith("made\n")            # the same workspace
        assert listed in out
        assert out.split("SOCK=")[1].split()[0] != first.stdout.decode().split("SOCK=")[1].split()[0]
        # a session that does not forward gets no agent, in the same workspace
        third = ssh_a(hw, "alice", 'echo "SOCK=${SSH_AUTH_SOCK:-none}"; ssh-add -l; echo rc=$?',
                      env, forward=False)
        assert b"SOCK=none" in third.stdout and b"rc=2" in third.stdout
    finally:
        run(["hatchway", "workspaces", "rm", "alice"], check=False)
    assert agent_sockets() == []


@pytest.fixture(scope="module")
def git_server(stack, agent):
    """A second sshd, no Hatchway in its config, on the bridge's host address:
    user hwgit, who accepts only the agent's key, with a bare repository."""
    _, _, key = agent
    gateway = run(["docker", "network", "inspect", "bridge", "-f",
                   "{{(index .IPAM.Config 0).Gateway}}"]).stdout.strip()
    try:
        pwd.getpwnam(GIT_USER)
    except KeyError:
        run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", GIT_USER])
    home = Path(pwd.getpwnam(GIT_USER).pw_dir)
    repo = home / "repo.git"
    shutil.rmtree(repo, ignore_errors=True)
    run(["setpriv", "--reuid", GIT_USER, "--regid", GIT_USER, "--init-groups",
         "git", "init", "-q", "--bare", str(repo)])
    d = stack.tmp / "gitd"
    d.mkdir(exist_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")],
        check=not (d / "host_key").exists())
    shutil.copy(f"{key}.pub", d / "authorized_keys")
    (d / "sshd_config").write_text(
        f"Port {GIT_PORT}\nListenAddress {gateway}\nHostKey {d}/host_key\n"
        f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        f"AllowUsers {GIT_USER}\nDisableForwarding yes\nLogLevel VERBOSE\n")
    p = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(d / "sshd_config"),
                          "-E", str(d / "sshd.log")], start_new_session=True)
    try:
        import socket

        def listening():
            s = socket.socket()
            try:
                s.connect((gateway, GIT_PORT))
                return True
            except OSError:
                return False
            finally:
                s.close()
        wait_for(listening, 15, what="the git sshd")
        yield gateway, str(repo)
    finally:
        p.terminate()
        p.wait(10)
