"""Agent forwarding's moving parts without sshd or a container: hatchway-shell's
answers to `agent` frames (shell.py), the relay passing the descriptors on
(daemon/relay.py), the daemon's per-session socket (daemon/agent.py) and the
key helper's decision (keys/).  The real thing is tests/e2e/test_forwarding.py."""

import os
import socket
import stat
import threading

import pytest

from hatchway import shell
from hatchway.daemon import agent
from hatchway.daemon.relay import MAX_FDS
from hatchway.keys import compiled_config
from hatchway.core.switches import switch_allows
from hatchway.keys.main import authorized_line
from hatchway.core.errors import Decision
from hatchway.shell import FrameReader, pack

from .test_relay import FakeProcess, Pipes, relay


class EchoAgent:
    """A unix socket that echoes, standing in for sshd's agent socket."""

    def __init__(self, path):
        self.path = str(path)
        self.s = socket.socket(socket.AF_UNIX)
        self.s.bind(self.path)
        self.s.listen(8)
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.s.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        with c:
            try:
                while data := c.recv(4096):
                    c.sendall(data)
            except OSError:
                pass        # the other end went first


def recv_frame_and_fds(sock):
    data, fds, _, _ = socket.recv_fds(sock, 65536, 4)
    return FrameReader().feed(data), fds


# ---------------------------------------------------------------- hatchway-shell

def test_the_shell_answers_with_a_fresh_connection_to_its_agent(tmp_path, monkeypatch):
    echo = EchoAgent(tmp_path / "agent")
    ours, daemon = socket.socketpair()
    monkeypatch.setenv("SSH_AUTH_SOCK", echo.path)
    shell.answer_agent(ours, {"type": "agent", "id": 7})
    frames, fds = recv_frame_and_fds(daemon)
    assert frames == [{"type": "agent", "id": 7, "ok": True}] and len(fds) == 1
    with socket.socket(fileno=fds[0]) as conn:
        assert os.get_blocking(conn.fileno())      # the daemon's pumps block
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"              # it really is the agent
    assert echo.accepted == 1


def test_no_agent_or_an_unreachable_one_is_a_no_without_a_descriptor(tmp_path):
    reply, conn = shell.agent_reply({"type": "agent", "id": 1}, None)
    assert reply == {"type": "agent", "id": 1, "ok": False, "error": "no agent"} and conn is None
    reply, conn = shell.agent_reply({"type": "agent", "id": 2}, str(tmp_path / "gone"))
    assert reply["ok"] is False and reply["id"] == 2 and conn is None


@pytest.mark.parametrize("rid", [None, "1", True, 1.5])
def test_a_request_without_an_integer_id_gets_no_answer(rid):
    assert shell.agent_reply({"type": "agent", "id": rid}, "/nonexistent") == (None, None)


def test_the_hello_says_agent_and_never_carries_the_host_path(monkeypatch):
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/ssh-XXXX/agent.1")
    h = shell.hello()
    assert h["agent"] is True and "SSH_AUTH_SOCK" not in h["env"]
    monkeypatch.delenv("SSH_AUTH_SOCK")
    assert shell.hello()["agent"] is False
    monkeypatch.setenv("SSH_AUTH_SOCK", "relative")        # not something sshd makes
    assert shell.hello()["agent"] is False


# ---------------------------------------------------------------- daemon side

class AgentProcess(FakeProcess):
    def __init__(self, allowed=True):
        super().__init__()
        self.allowed = allowed
        self.asked = []

    def agent_peer_ok(self, pid, uid):
        self.asked.append((pid, uid))
        return self.allowed


def session_with_agent(tmp_path, proc, answer=True):
    """A relay with an AgentServer wired as daemon/session.py wires it, and a
    thread playing hatchway-shell on the other end of the control socket."""
    d = agent.container_dir(str(tmp_path), "c1")
    p = Pipes()
    r, control, t, result = relay(proc, p.fds)
    server = agent.AgentServer(d, "0123456789abcdef0123", lambda rid: control_send(rid),
                               proc.agent_peer_ok)
    lock = threading.Lock()

    def control_send(rid):
        with lock:
            r.control.sendall(pack({"type": "agent", "id": rid}))
    r.agent = server
    server.start()
    echo = EchoAgent(tmp_path / "sshd-agent.sock")

    def play_shell():
        reader = FrameReader()
        while data := control.recv(65536):
            for frame in reader.feed(data):
                if answer:
                    reply, conn = shell.agent_reply(frame, echo.path)
                    socket.send_fds(control, [pack(reply)], [conn.fileno()])
                    conn.close()
    threading.Thread(target=play_shell, daemon=True).start()
    return server, p, r, control, t, result


def test_a_container_connection_reaches_the_clients_agent_and_goes_at_the_end(tmp_path):
    proc = AgentProcess()
    server, p, r, control, t, result = session_with_agent(tmp_path, proc)
    assert server.container_path == "/run/hatchway/agent-0123456789abcdef.sock"
    assert stat.S_ISSOCK(os.stat(server.path).st_mode)
    for _ in range(3):                  # one agent connection per client connection
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(server.path)
            c.sendall(b"\0\0\0\1\x0b")  # SSH2_AGENTC_REQUEST_IDENTITIES, as bytes
            assert c.recv(5) == b"\0\0\0\1\x0b"
    assert proc.asked and all(uid == os.getuid() for _, uid in proc.asked)
    server.close()
    assert not os.path.exists(server.path)
    proc.out.put(None)
    t.join(5)
    r.close()


def test_a_refused_peer_never_causes_a_request(tmp_path):
    proc = AgentProcess(allowed=False)
    server, p, r, control, t, result = session_with_agent(tmp_path, proc)
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(server.path)
        assert c.recv(10) == b""        # closed, no answer
    assert server.next_id == 1           # hatchway-shell was never asked
    server.close()
    proc.out.put(None)
    t.join(5)


def test_descriptors_without_frames_end_the_session(tmp_path):
    p, proc = Pipes(), FakeProcess()
    r, control, t, result = relay(proc, p.fds)
    a, b = socket.socketpair()
    for _ in range(MAX_FDS + 1):        # no agent frame claims them
        socket.send_fds(control, [b"\0\0"], [a.fileno()])
    t.join(5)
    assert result["outcome"].hangup and r.hangup_reason == "garbled control stream"
    r.close()
    assert r.fds_in == []


def test_an_answer_nobody_asked_for_is_closed_not_kept(tmp_path):
    p, proc = Pipes(), FakeProcess()
    r, control, t, result = relay(proc, p.fds)
    a, b = socket.socketpair()
    socket.send_fds(control, [pack({"type": "agent", "id": 1, "ok": True})], [a.fileno()])
    a.close()
    b.settimeout(5)
    assert b.recv(1) == b""             # the relay's copy is closed: EOF on the other end
    proc.out.put(None)
    t.join(5)
    assert not result["outcome"].hangup


def test_the_per_container_directory_and_its_sweep(tmp_path):
    d = agent.container_dir(str(tmp_path), "abc")
    assert stat.S_IMODE(os.stat(tmp_path / "ctr").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o711
    never = lambda key: False       # noqa: E731 (no workspace is on record)
    assert agent.sweep(str(tmp_path), never) == []     # its owner (this process) lives
    with open(os.path.join(d, agent.OWNER), "w") as f:
        f.write("other-boot:1:1")
    assert agent.sweep(str(tmp_path), never) == ["abc"] and not os.path.exists(d)
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError):
            agent.container_dir(str(tmp_path), bad)


def test_a_workspaces_directory_stays_while_the_workspace_does(tmp_path):
    d = agent.container_dir(str(tmp_path), "hatchway-ws-alice-0123456789",
                            owner=agent.WORKSPACE)
    on_record = {"hatchway-ws-alice-0123456789"}
    # no session process owns it: the one that made it may be long gone
    assert agent.sweep(str(tmp_path), on_record.__contains__) == []
    # off the record but just made (a first login before its record exists)
    assert agent.sweep(str(tmp_path), lambda key: False) == []
    old = os.stat(d).st_mtime - agent.FRESH - 1
    os.utime(os.path.join(d, agent.OWNER), (old, old))
    assert agent.sweep(str(tmp_path), on_record.__contains__) == []
    assert agent.sweep(str(tmp_path), lambda key: False) == ["hatchway-ws-alice-0123456789"]
    assert not os.path.exists(d)


def test_the_reaper_asks_the_workspace_records(tmp_path):
    from hatchway.backends import workspaces as W
    from hatchway.daemon.main import workspace_on_record
    cfg = SimpleNamespace(daemon=SimpleNamespace(socket=str(tmp_path / "hatchwayd.sock")))
    rec = W.Record("hatchway-ws-bob-0123456789", W.root_for(cfg))
    assert not workspace_on_record(cfg, rec.name)
    rec.set_meta(user="bob")
    assert workspace_on_record(cfg, rec.name)
    rec.forget()
    assert not workspace_on_record(cfg, rec.name)
    assert not workspace_on_record(cfg, "../etc")       # not a workspace name at all


# ---------------------------------------------------------------- hatchway-keys

@pytest.mark.parametrize("policy,groups,allowed", [
    ({"default": False, "groups": []}, ["dev"], False),
    ({"default": True, "groups": []}, [], True),
    ({"default": False, "groups": [["dev", True]]}, ["dev"], True),
    ({"default": False, "groups": [["dev", True]]}, ["ops"], False),
    # groups merge in file order: the later entry wins, as in the daemon
    ({"default": False, "groups": [["dev", True], ["contractors", False]]},
     ["dev", "contractors"], False),
    ({"default": True, "groups": [["contractors", False]]}, ["contractors"], False),
])
def test_who_the_key_helper_lets_sshd_forward_the_agent_for(policy, groups, allowed):
    assert switch_allows(policy, groups) is allowed


def test_the_key_line_adds_agent_forwarding_after_restrict_only_when_allowed():
    d = Decision(True, "yes", ['from="10.0.0.0/8"'])
    argv = ["alice", "ssh-ed25519", "AAAA"]
    assert authorized_line(argv, d) == 'restrict,pty,from="10.0.0.0/8" ssh-ed25519 AAAA\n'
    assert authorized_line(argv, d, agent=True) == \
        'restrict,pty,agent-forwarding,from="10.0.0.0/8" ssh-ed25519 AAAA\n'


def test_the_stored_config_carries_the_agent_policy(tmp_path):
    cfg = tmp_path / "hatchway.yaml"
    cfg.write_text("session:\n  agent_forwarding: false\n"
                   "groups:\n  dev:\n    session:\n      agent_forwarding: true\n  ops: {}\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    first, cached = compiled_config.load(str(cfg), str(state))
    again, cached_again = compiled_config.load(str(cfg), str(state))
    assert (cached, cached_again) == (False, True) and first == again
    assert first["agent"] == {"default": False, "groups": [["dev", True]]}


# ---------------------------------------------------------------- the container

def test_the_directory_is_mounted_read_only_and_only_when_given():
    from hatchway.backends.base import SessionSpec
    from hatchway.backends.docker.backend import container_spec
    from .typed import whole

    def spec(agent_dir):
        return SessionSpec(user="alice", uid=1000, session_id="ab" * 16, connection_id="c",
                           kind="exec", argv=["id"], pty=False, term=None, size=None,
                           env={"SSH_AUTH_SOCK": "/run/hatchway/agent-abab.sock"},
                           remote_address="127.0.0.1:1", config=whole(), agent_dir=agent_dir)
    host = container_spec(spec(None))["HostConfig"]
    assert "Mounts" not in host
    body = container_spec(spec("/run/hatchway/ctr/abab"))
    assert body["HostConfig"]["Mounts"] == [{"Type": "bind", "Source": "/run/hatchway/ctr/abab",
                                             "Target": "/run/hatchway", "ReadOnly": True}]
    assert "SSH_AUTH_SOCK=/run/hatchway/agent-abab.sock" in body["Env"]


def test_the_clients_host_path_never_reaches_the_container():
    from hatchway.daemon.session import filter_env
    env = {"SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1", "LANG": "C"}
    assert filter_env(env, ["*"]) == {"LANG": "C"}      # whatever the allowlist says


# -- every mode of a backend that forwards agents

from types import SimpleNamespace  # noqa: E402

from hatchway.admin.check_cmd import agent_problems  # noqa: E402
from hatchway.daemon.session import agent_plan  # noqa: E402


def test_the_policy_and_the_backend_decide():
    assert agent_plan(True, True, "docker", wanted=True) == (True, None)
    assert agent_plan(True, True, "docker", wanted=False) == (True, None)
    assert agent_plan(False, True, "docker", wanted=True) == (False, None)
    on, note = agent_plan(True, False, "kubernetes", wanted=True)
    assert not on and note == ("agent forwarding is not supported on the kubernetes backend "
                               "yet; this session has no agent")
    # nothing forwarded: nothing to say
    assert agent_plan(True, False, "kubernetes", wanted=False) == (False, None)


def test_the_docker_backend_says_it_forwards_agents():
    # The merge into main once lost this one attribute, and every e2e agent
    # test then failed with "not supported on the docker backend".
    from hatchway.backends import registry
    assert registry.backend_class("docker").agent_forwarding is True
    assert registry.backend_class("kubernetes").agent_forwarding is False


def _cfg(agent=False, mode="session", groups=None, backend="docker"):
    return SimpleNamespace(session=SimpleNamespace(agent_forwarding=agent, mode=mode),
                           groups=groups or {}, backend=backend)


def test_check_reports_agent_forwarding_only_where_the_backend_cannot():
    assert agent_problems(_cfg(agent=True), True) == []
    assert agent_problems(_cfg(agent=True, mode="persistent"), True) == []
    assert agent_problems(_cfg(agent=False, backend="kubernetes"), False) == []
    [p] = agent_problems(_cfg(agent=True, backend="kubernetes"), False)
    assert "kubernetes backend cannot forward agents" in p
    [p] = agent_problems(_cfg(groups={"devs": {"session": {"agent_forwarding": True}}},
                              backend="kubernetes"), False)
    assert "kubernetes backend cannot forward agents" in p
