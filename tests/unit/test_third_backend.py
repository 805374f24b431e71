"""A third backend takes its own folder plus one registry line: the FAKE
backend in tests/unit/dummy_backend/ (sessions as host processes) is added to
the registry here, at run time, and then the config file, the policy, the
ContainerSSH translation, a whole session through the daemon's own Session
code, and the admin command's sessions/gc all work with it, untouched."""

import os
import socket
import threading

import pytest
import yaml
from click.testing import CliRunner

from hatchway.admin.main import cli
from hatchway.backends import labels, registry
from hatchway.core import config
from hatchway.daemon import containerssh, peer, policy, resolve
from hatchway.daemon.session import Session
from hatchway.shell import FrameReader, pack


@pytest.fixture
def dummy(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.BACKENDS, "dummy", "tests.unit.dummy_backend")
    monkeypatch.setattr(config, "_SCHEMA", [])      # the schema is built once per process
    state = tmp_path / "state"
    path = tmp_path / "hatchway.yaml"
    # the daemon's run directory too: `sessions kill` ends live sessions that
    # are recorded there, and this machine's real ones are none of our business
    path.write_text(yaml.safe_dump({"backend": "dummy",
                                    "dummy": {"state_dir": str(state), "greeting": "hello"},
                                    "daemon": {"hello_timeout": "5s",
                                               "socket": str(tmp_path / "hatchwayd.sock")},
                                    "metrics": {"listen": None}}))
    return path


def test_its_section_is_part_of_the_config_file(dummy):
    cfg = config.typed(config.load(str(dummy)))
    assert cfg.backend == "dummy" and cfg.dummy.greeting == "hello"
    with pytest.raises(config.ConfigError, match=r":1: dummy.colour: unknown key"):
        config.load_text("dummy: {colour: red}\n", "x.yaml")
    # groups may change what its sessions look like, never where its state lives
    config.load_text("groups: {g: {dummy: {greeting: hi}}}\n")
    with pytest.raises(config.ConfigError, match="groups.g.dummy.state_dir: unknown key"):
        config.load_text("groups: {g: {dummy: {state_dir: /x}}}\n")
    assert "dummy.greeting" in config.defaults()["policy"]["webhook_may_set"]


def test_its_policy_and_containerssh_section_are_its_own(dummy):
    cfg = config.load(str(dummy))
    cfg["dummy"]["greeting"] = "forbidden"
    with pytest.raises(policy.Violation, match="dummy.greeting"):
        policy.check(cfg, "alice")
    assert containerssh.translate({"Dummy": {"greeting": "yo"}}) == {"dummy": {"greeting": "yo"}}


def run_session(cfg, command: bytes, stdin: bytes = b""):
    """What hatchway-shell does, over a socketpair: three pipes and a hello;
    the daemon's Session runs in a thread.  Returns (exit frame, stdout, stderr)."""
    client, server = socket.socketpair()
    (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
    hello = {"type": "hello", "v": 1, "command_b64": __import__("base64").b64encode(command)
             .decode(), "pty": False, "term": None, "size": None, "env": {"LANG": "C"},
             "ssh_connection": "127.0.0.1 5555 127.0.0.1 22"}
    socket.send_fds(client, [pack(hello)], [in_r, out_w, err_w])
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    t = threading.Thread(target=lambda: Session(server, cfg).run(), daemon=True)
    t.start()
    os.write(in_w, stdin)
    os.close(in_w)
    out, err = b"", b""
    while chunk := os.read(out_r, 65536):
        out += chunk
    while chunk := os.read(err_r, 65536):
        err += chunk
    reader, frames = FrameReader(), []
    while not frames and (data := client.recv(65536)):
        frames = reader.feed(data)
    t.join(10)
    for fd in (out_r, err_r):
        os.close(fd)
    client.close()
    return frames[0], out, err


def test_a_session_runs_through_the_daemon_untouched(dummy, monkeypatch):
    # identity is the kernel's (SO_PEERCRED); membership of hatchway-users is
    # the host's business, not this backend's
    monkeypatch.setattr(peer, "account", lambda uid: __import__("pwd").getpwuid(uid))
    cfg = config.typed(config.load(str(dummy)))
    frame, out, err = run_session(cfg, b"cat; echo oops >&2; exit 7", b"data\n")
    assert frame == {"type": "exit", "code": 7}
    assert out == b"hello\ndata\n" and err == b"oops\n"
    assert registry.make(cfg).list() == []          # destroyed at the end


def test_the_admin_command_lists_ends_and_reaps_its_sessions(dummy):
    cfg = config.typed(config.load(str(dummy)))
    from hatchway.backends.base import SessionSpec
    b = registry.make(cfg)
    specs = []
    for user, owner in (("alice", os.getpid()), ("bob", None)):
        s = SessionSpec(user=user, uid=1000, session_id=os.urandom(16).hex(), connection_id="c",
                        kind="exec", argv=["sleep", "60"], pty=False, term=None, size=None,
                        env={}, remote_address="127.0.0.1:1", config=cfg)
        s.labels = labels.for_session(user, s.session_id, "c", "session", os.getpid())
        if owner is None:                   # its session process is gone
            s.labels[labels.PROCESS] = "boot:1:1"
        specs.append(b.start(s))
    runner = CliRunner()
    listed = runner.invoke(cli, ["sessions", "list", "--config", str(dummy)])
    assert listed.exit_code == 0 and "alice" in listed.output and "bob" in listed.output
    gc = runner.invoke(cli, ["gc", "--config", str(dummy)])
    assert gc.exit_code == 0 and "removed 1 orphaned" in gc.output
    assert [f.labels[labels.USER] for f in b.list()] == ["alice"]
    kill = runner.invoke(cli, ["sessions", "kill", "alice", "--config", str(dummy)])
    assert kill.exit_code == 0 and b.list() == []
    for p in specs:
        p.destroy()


def test_resolve_fills_templates_in_its_section(dummy, monkeypatch):
    text = dummy.read_text().replace("greeting: hello", "greeting: hi-{user}")
    dummy.write_text(text)
    cfg = config.typed(config.load(str(dummy)))
    out = resolve.effective_config(cfg, user="root", uid=0, remote_address="127.0.0.1:1",
                                   connection_id="c")
    assert out.dummy.greeting == "hi-root"
