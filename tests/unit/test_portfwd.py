"""Port forwarding's pure parts (issue #16): the original destination and
owner-uid lookups, the key line, the policy, the container choice, the exec
stream demultiplexer and the guard's ruleset."""

import os
import shutil
import socket
import struct
import subprocess

import pytest

from hatchway.core import portfwd as P
from hatchway.core import switches
from hatchway.core.errors import Decision
from hatchway.daemon import netguard, portfwd
from hatchway.keys import compiled_config
from hatchway.keys.main import authorized_line, port_forwarding

# ---------------------------------------------------------------- SO_ORIGINAL_DST


def test_original_destination_of_ipv4():
    raw = struct.pack("!HH", socket.AF_INET, 8080) + socket.inet_aton("127.0.0.1") + b"\0" * 8
    assert P.parse_original_dst(socket.AF_INET, raw) == ("127.0.0.1", 8080)


def test_original_destination_of_ipv6_reads_the_address_at_offset_8():
    raw = (struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 3000) + b"\0" * 4
           + socket.inet_pton(socket.AF_INET6, "::1") + b"\0" * 4)
    assert P.parse_original_dst(socket.AF_INET6, raw) == ("::1", 3000)


@pytest.mark.parametrize("family,raw", [(socket.AF_INET, b"\0" * 7),
                                        (socket.AF_INET6, b"\0" * 23),
                                        (socket.AF_UNIX, b"\0" * 32)])
def test_a_short_or_foreign_address_is_an_error(family, raw):
    with pytest.raises(ValueError):
        P.parse_original_dst(family, raw)


# ---------------------------------------------------------------- sock_diag


def _reply(src, dst, uid, typ=P.SOCK_DIAG_BY_FAMILY):
    sockid = (struct.pack("!HH", src[1], dst[1]) + P._addr16(src[0]) + P._addr16(dst[0])
              + b"\0" * 12)
    msg = struct.pack("=BBBB", socket.AF_INET, 1, 0, 0) + sockid + struct.pack(
        "=IIIII", 0, 0, 0, uid, 4242)
    return struct.pack("=IHHII", 16 + len(msg), typ, 0, 1, 0) + msg


def test_the_uid_comes_from_the_answer_about_that_socket_only():
    src, dst = ("127.0.0.1", 40000), ("127.0.0.1", 8080)
    assert P.parse_sockdiag_reply(_reply(src, dst, 1014), src, dst) == 1014
    # an answer about another socket, an error, a short answer: no uid
    assert P.parse_sockdiag_reply(_reply(src, ("127.0.0.1", 8081), 1014), src, dst) is None
    assert P.parse_sockdiag_reply(_reply(("127.0.0.2", 40000), dst, 1014), src, dst) is None
    assert P.parse_sockdiag_reply(_reply(src, dst, 1014, typ=P.NLMSG_ERROR), src, dst) is None
    assert P.parse_sockdiag_reply(_reply(src, dst, 1014)[:60], src, dst) is None


def test_the_request_asks_for_exactly_one_tcp_socket():
    req = P.sockdiag_request(socket.AF_INET6, ("::1", 5), ("::1", 6))
    length, typ, flags = struct.unpack_from("=IHH", req)
    assert (length, typ, flags) == (len(req), P.SOCK_DIAG_BY_FAMILY, P.NLM_F_REQUEST)
    assert req[16] == socket.AF_INET6 and req[17] == socket.IPPROTO_TCP
    assert struct.unpack_from("!HH", req, 24) == (5, 6)


@pytest.mark.parametrize("family,addr", [(socket.AF_INET, "127.0.0.1"),
                                         (socket.AF_INET6, "::1")])
def test_the_kernel_names_the_owner_of_a_real_connection(family, addr):
    """The real lookup, unprivileged: this process owns the client end."""
    srv = socket.socket(family)
    try:
        srv.bind((addr, 0))
    except OSError:
        pytest.skip(f"no {addr}")
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname()[:2])
    conn, peer = srv.accept()
    try:
        assert P.peer_uid(family, peer[:2], srv.getsockname()[:2]) == os.getuid()
        # a socket that does not exist has no owner
        assert P.peer_uid(family, (addr, 1), srv.getsockname()[:2]) is None
    finally:
        for s in (cli, conn, srv):
            s.close()


def test_the_kernel_tells_a_shut_down_write_side_from_a_closed_socket():
    """What the Kubernetes way asks while it holds a client's EOF
    (daemon/portfwd_k8s.py): sshd only shut down its write side, or closed."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname())
    conn, peer = srv.accept()
    try:
        assert P.peer_held(socket.AF_INET, peer, srv.getsockname())
        cli.shutdown(socket.SHUT_WR)
        assert conn.recv(1) == b""              # an EOF, as after a close
        assert P.peer_held(socket.AF_INET, peer, srv.getsockname())
        cli.close()
        assert not P.peer_held(socket.AF_INET, peer, srv.getsockname())
    finally:
        for s in (cli, conn, srv):
            s.close()


@pytest.mark.parametrize("addr,port,ok", [
    ("127.0.0.1", 8080, True), ("127.0.0.2", 8080, True), ("::1", 3000, True),
    ("127.0.0.1", 1, False),            # the canary's port
    ("10.0.0.1", 80, False), ("172.17.0.2", 8080, False), ("::ffff:10.0.0.1", 80, False),
    ("not an address", 80, False), ("127.0.0.1", 0, False),
])
def test_only_loopback_ports_reach_a_container(addr, port, ok):
    assert P.destination_ok(addr, port) is ok


def test_the_covered_uids_file(tmp_path):
    f = tmp_path / "uids"
    f.write_text("1014\n1015\nbogus\n")
    assert P.covered(1014, str(f)) and not P.covered(1016, str(f))
    assert not P.covered(1014, str(tmp_path / "missing"))


def test_the_canary_fails_without_a_listener():
    # nothing listens on 127.0.0.1:1 here (no table in a unit test run)
    assert P.canary(timeout=0.5) is False


# ---------------------------------------------------------------- hatchway-keys


def test_the_key_line_adds_port_forwarding_to_loopback_after_restrict_only_when_allowed():
    d = Decision(True, "yes", [])
    argv = ["alice", "ssh-ed25519", "AAAA"]
    assert authorized_line(argv, d) == "restrict,pty ssh-ed25519 AAAA\n"
    assert authorized_line(argv, d, ports=True) == (
        'restrict,pty,port-forwarding,permitopen="localhost:*",permitopen="127.0.0.1:*",'
        'permitopen="[::1]:*",permitlisten="127.0.0.1:1" ssh-ed25519 AAAA\n')
    assert authorized_line(argv, d, agent=True, ports=True).startswith(
        "restrict,pty,agent-forwarding,port-forwarding,")


def test_the_key_line_lists_the_remote_ports_and_shuts_the_direction_not_given():
    d = Decision(True, "yes", [])
    argv = ["alice", "ssh-ed25519", "AAAA"]
    # -L alone: port-forwarding would open -R too, unless a list matching nothing is given
    assert authorized_line(argv, d, ports=True).endswith(
        'permitopen="[::1]:*",permitlisten="127.0.0.1:1" ssh-ed25519 AAAA\n')
    # -R alone: the same for -L
    assert authorized_line(argv, d, remote=[8080, 8081]) == (
        'restrict,pty,port-forwarding,permitopen="127.0.0.1:1",permitlisten="8080",'
        'permitlisten="8081" ssh-ed25519 AAAA\n')
    both = authorized_line(argv, d, ports=True, remote=[9000])
    assert 'permitopen="localhost:*"' in both and 'permitlisten="9000"' in both
    assert "127.0.0.1:1" not in both


def test_keys_fail_closed_without_coverage_or_canary():
    me = __import__("pwd").getpwuid(os.getuid()).pw_name
    on = {"default": True, "groups": []}
    yes, no = (lambda *a: True), (lambda *a: False)
    assert port_forwarding(me, {"default": False, "groups": []}, yes, yes) == (False, [], None)
    ok, _, why = port_forwarding(me, on, canary=yes, covered=no)
    assert not ok and "not covered" in why
    ok, _, why = port_forwarding(me, on, canary=no, covered=yes)
    assert not ok and "canary" in why
    assert port_forwarding(me, on, canary=yes, covered=yes) == (True, [], None)
    assert port_forwarding("no-such-user-here", on, yes, yes)[0] is False


def test_keys_give_only_remote_ports_the_table_reserves():
    me = __import__("pwd").getpwuid(os.getuid()).pw_name
    off = {"default": False, "groups": []}
    rp = {"default": [8080, 8081], "groups": []}
    yes, no = (lambda *a: True), (lambda *a: False)
    assert port_forwarding(me, off, yes, yes, rp, lambda: {8080, 8081, 9}) == \
        (False, [8080, 8081], None)
    local, remote, why = port_forwarding(me, off, yes, yes, rp, lambda: {8081})
    assert (local, remote) == (False, [8081]) and "[8080]" in why
    # no table, no canary: nothing at all, -R included
    assert port_forwarding(me, off, no, yes, rp, lambda: {8080})[:2] == (False, [])
    assert port_forwarding(me, off, yes, no, rp, lambda: {8080})[:2] == (False, [])


@pytest.mark.parametrize("items, ports", [
    ([], []), ([8080], [8080]), (["9000-9002", 8080, "8080"], [8080, 9000, 9001, 9002]),
])
def test_remote_port_lists_parse(items, ports):
    assert switches.parse_ports(items) == ports


@pytest.mark.parametrize("items", [
    [80], [870], [70000], ["9002-9000"], ["a-b"], [True], "8080", ["1-65535"], [None],
])
def test_remote_port_lists_refuse_what_cannot_work(items):
    with pytest.raises(ValueError):
        switches.parse_ports(items)


def test_remote_port_lists_per_group_and_what_the_guard_reserves():
    from hatchway.core import config
    cfg = config.load_text("session:\n  remote_forward_ports: [8080]\n"
                           "groups:\n  dev:\n    session:\n      remote_forward_ports: ['9000-9001']\n"
                           "  ext:\n    session:\n      remote_forward_ports: []\n")
    pol = switches.list_policy(cfg, "remote_forward_ports")
    assert switches.list_for(pol, []) == [8080]
    assert switches.list_for(pol, ["dev"]) == [9000, 9001]
    assert switches.list_for(pol, ["dev", "ext"]) == []
    assert switches.all_listed(pol) == {8080, 9000, 9001}
    with pytest.raises(config.ConfigError, match="remote_forward_ports"):
        config.load_text("session:\n  remote_forward_ports: [22]\n")


def test_the_stored_config_carries_the_port_policy(tmp_path):
    cfg = tmp_path / "hatchway.yaml"
    cfg.write_text("groups:\n  dev:\n    session:\n      port_forwarding: true\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    first, _ = compiled_config.load(str(cfg), str(state))
    again, cached = compiled_config.load(str(cfg), str(state))
    assert cached and first == again
    assert first["ports"] == {"default": False, "groups": [["dev", True]]}
    assert first["agent"] == {"default": False, "groups": []}


# ---------------------------------------------------------------- the relay


@pytest.mark.parametrize("policy,groups,allowed", [
    ({"default": False, "groups": []}, ["dev"], False),
    ({"default": True, "groups": []}, [], True),
    ({"default": False, "groups": [["dev", True]]}, ["dev"], True),
    ({"default": False, "groups": [["dev", True], ["ext", False]]}, ["dev", "ext"], False),
])
def test_the_switch_as_the_key_helper_and_the_relay_read_it(policy, groups, allowed):
    assert switches.switch_allows(policy, groups) is allowed


def test_the_relays_policy_comes_from_the_file_config():
    from hatchway.core import config
    cfg = config.load_text("session:\n  port_forwarding: true\n"
                           "groups:\n  ext:\n    session:\n      port_forwarding: false\n")
    assert switches.switch_policy(cfg, "port_forwarding") == \
        {"default": True, "groups": [["ext", False]]}


def test_a_workspace_is_chosen_before_the_newest_session_container():
    def c(i, mode, created):
        return {"Id": i, "Created": created, "Labels": {"io.hatchway.mode": mode}}
    assert portfwd.pick_container([]) is None
    assert portfwd.pick_container([c("a", "session", 1), c("b", "session", 5)])["Id"] == "b"
    assert portfwd.pick_container([c("a", "session", 9), c("w", "persistent", 1)])["Id"] == "w"
    assert portfwd.pick_container([c("a", "session", 9), c("w", "connection", 1)])["Id"] == "w"


def test_the_exec_stream_is_demultiplexed_across_reads():
    frame = lambda kind, data: bytes([kind, 0, 0, 0]) + struct.pack(">I", len(data)) + data
    stream = frame(1, b"hello ") + frame(2, b"oops") + frame(1, b"world")
    d = portfwd.Demux()
    got = []
    for i in range(0, len(stream), 5):
        got += d.feed(stream[i:i + 5])
    assert got == [(1, b"hello "), (2, b"oops"), (1, b"world")]


def test_listening_sockets_come_from_the_guard_or_systemd():
    s = socket.socket()
    try:
        [got] = portfwd.listen_fds({"HATCHWAY_RELAY_FDS": str(s.fileno())})
        assert got.fileno() == s.fileno()
        got.detach()
        assert portfwd.listen_fds({"LISTEN_FDS": "1", "LISTEN_PID": "1"}) == []
        assert portfwd.listen_fds({}) == []
    finally:
        s.close()


def test_the_busybox_is_mounted_read_only_only_when_the_policy_allows():
    from hatchway.backends.base import SessionSpec
    from hatchway.backends.docker.backend import container_spec
    from .typed import whole

    def spec(on):
        return SessionSpec(user="alice", uid=1000, session_id="ab" * 16, connection_id="c",
                           kind="exec", argv=["id"], pty=False, term=None, size=None, env={},
                           remote_address="127.0.0.1:1",
                           config=whole({"session": {"port_forwarding": on}}))
    assert "Mounts" not in container_spec(spec(False))["HostConfig"]
    assert container_spec(spec(True))["HostConfig"]["Mounts"] == [
        {"Type": "bind", "Source": "/bin/busybox", "Target": portfwd.BUSYBOX, "ReadOnly": True}]


# ---------------------------------------------------------------- the guard


def test_the_ruleset_redirects_covered_uids_loopback_tcp_and_rejects_the_rest():
    text = netguard.ruleset({1015, 1014}, {999, 998})
    assert "flags owner" in text
    assert "elements = { 1014, 1015 }" in text and "elements = { 998, 999 }" in text
    assert "meta skuid @canary ip daddr 127.0.0.1 tcp dport 1 redirect to :870" in text
    assert "meta skuid @users ip daddr 127.0.0.0/8 meta l4proto tcp redirect to :870" in text
    assert "meta skuid @users ip6 daddr ::1 meta l4proto tcp redirect to :870" in text
    assert "meta skuid @users reject\n" in text
    # no users yet: an empty set, not a syntax error
    assert "elements" not in netguard.ruleset(set(), set())


def test_the_ruleset_keeps_reserved_remote_ports_for_the_relay_alone():
    text = netguard.ruleset({1014}, {999}, rports={8080, 9000}, relay_uid=999)
    assert "type inet_service\n        elements = { 8080, 9000 }" in text
    assert "ip daddr 127.0.0.0/8 tcp dport @rports meta skuid != 999 reject with tcp reset" in text
    assert "ip6 daddr ::1 tcp dport @rports meta skuid != 999 reject with tcp reset" in text
    # the users' own -R listeners may answer the relay (a SYN-ACK is the user's packet)
    assert "meta skuid @users ct direction reply ip daddr 127.0.0.0/8 tcp sport @rports accept" \
        in text
    assert text.index("ct direction reply ip daddr") < text.index("meta skuid @users meta l4proto")
    # after the covered users' rules: their connects were redirected to the relay already
    assert text.index("@rports meta") > text.index("meta skuid @users reject")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft", path="/usr/sbin:/usr/bin"),
                    reason="nft --check needs root and nftables")
def test_nft_accepts_the_ruleset(tmp_path):
    for users in ({1014, 1015}, set()):
        f = tmp_path / "r.nft"
        # another name: a running guard's owned table of the real name makes
        # even a --check of one fail (EPERM)
        f.write_text(netguard.ruleset(users, {999}, rports=users and {8080, 9000}, relay_uid=999)
                     .replace("table inet hatchway ", "table inet hatchway_unit_check "))
        p = subprocess.run(["nft", "--check", "-f", str(f)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr


def test_set_updates_add_before_they_remove():
    text = netguard.set_update({3}, {1, 2})
    assert text.index("add element") < text.index("delete element")
    assert netguard.set_update(set(), set()) == ""


def test_stale_sshd_processes_are_found_by_name_and_real_uid(tmp_path):
    def proc(pid, name, uid):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "status").write_text(
            f"Name:\t{name}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    proc(10, "sshd", 1014)
    proc(11, "sshd", 0)
    proc(12, "bash", 1014)
    proc(13, "sshd", 1099)
    (tmp_path / "self").mkdir()
    assert netguard.sshd_pids({1014}, str(tmp_path)) == [10]


def test_check_reports_port_forwarding_where_it_cannot_work(tmp_path):
    from types import SimpleNamespace

    from hatchway.admin.check_cmd import port_problems

    def cfg(on=False, backend="docker", groups=None):
        return SimpleNamespace(session=SimpleNamespace(port_forwarding=on), backend=backend,
                               groups=groups or {})
    uids = tmp_path / "uids"
    uids.write_text("1000\n")
    assert port_problems(cfg(), str(uids)) == []
    assert port_problems(cfg(True), str(uids), busybox="/bin/sh") == []
    [p] = port_problems(cfg(True), str(tmp_path / "none"), busybox="/bin/sh")
    assert "hatchway-netguard is not running" in p
    # Kubernetes forwards through the API server: no busybox, the guard still
    kube = cfg(groups={"dev": {"session": {"port_forwarding": True}}}, backend="kubernetes")
    assert port_problems(kube, str(uids), busybox=str(tmp_path / "nobusybox")) == []
    [p] = port_problems(kube, str(tmp_path / "none"))
    assert "hatchway-netguard is not running" in p
    [p] = port_problems(cfg(True, backend="elsewhere"), str(uids))
    assert "elsewhere backend cannot forward ports" in p
    [p] = port_problems(cfg(True), str(uids), busybox=str(tmp_path / "nobusybox"))
    assert "busybox-static" in p


def test_check_reports_remote_forwarding_where_it_cannot_work(tmp_path):
    from types import SimpleNamespace

    from hatchway.admin.check_cmd import remote_port_problems

    def cfg(ports=(), backend="docker", groups=None):
        return SimpleNamespace(session=SimpleNamespace(remote_forward_ports=list(ports)),
                               backend=backend, groups=groups or {})
    uids = tmp_path / "uids"
    uids.write_text("1000\n")
    assert remote_port_problems(cfg(), str(tmp_path / "none")) == []
    assert remote_port_problems(cfg([8080]), str(uids)) == []
    [p] = remote_port_problems(cfg([8080]), str(tmp_path / "none"))
    assert "hatchway-netguard is not running" in p
    dev = {"dev": {"session": {"remote_forward_ports": [9000]}}}
    [p] = remote_port_problems(cfg(groups=dev, backend="kubernetes"), str(uids))
    assert "Docker only" in p


def test_the_loopback_listener_dump_shows_port_and_owner():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert ("127.0.0.1", port, os.getuid()) in P.loopback_listeners()
    assert all(p != port for _a, p, _u in P.loopback_listeners())


def test_the_guard_makes_listeners_for_reserved_ports_only_and_answers_in_one_line():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    import threading
    t = threading.Thread(target=netguard.serve_listens, args=(ours, lambda: {8080}), daemon=True)
    t.start()
    from hatchway.daemon import rfwd
    chan = rfwd.GuardChannel(theirs)
    with pytest.raises(OSError, match="not a reserved -R port"):
        chan.listen(os.getpid(), "a" * 64, 9999)
    # a reserved port, but this process is no container's
    with pytest.raises(OSError, match="not in container|no such|No such"):
        chan.listen(os.getpid(), "a" * 64, 8080)
    with pytest.raises(OSError, match="not a container id"):
        chan.listen(os.getpid(), "../etc", 8080)
    # garbage on the channel: an error answer, and the server keeps serving
    theirs.send(b"\xff not json")
    assert b"error" in theirs.recv(4096)
    with pytest.raises(OSError, match="not a reserved -R port"):
        chan.listen(os.getpid(), "a" * 64, 1)
    theirs.close()
    t.join(5)
    assert not t.is_alive()


def test_the_guard_never_listens_in_the_hosts_own_network(tmp_path):
    # a fake /proc entry whose cgroup names the container, but whose network
    # namespace is this process's own (the container ran with --network host)
    cid = "b" * 64
    entry = tmp_path / "4242"
    (entry / "ns").mkdir(parents=True)
    (entry / "cgroup").write_text(f"0::/docker/{cid}\n")
    os.symlink("/proc/self/ns/net", entry / "ns" / "net")
    with pytest.raises(ValueError, match="host's network"):
        netguard.listen_in(4242, cid, 8080, proc=str(tmp_path))


def test_a_port_taken_out_of_the_file_stays_reserved_while_a_users_listener_holds_it(tmp_path):
    """The guard's bookkeeping with its nft process replaced by a list of the
    commands it would send (a FAKE: the table itself is the e2e tests')."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    busy = held.getsockname()[1]
    config = tmp_path / "hatchway.yaml"
    config.write_text(f"session:\n  remote_forward_ports: [{busy}, 47999]\n")

    class Recording(netguard.Guard):
        def __init__(self):
            self.args = type("A", (), {"config": str(config)})()
            self.users = {os.getuid()}      # the listener's owner counts as a covered user
            self.rports, self.held, self.sent, self.published = set(), set(), [], []
            self._conf_tag = None

        def _nft(self, text):
            self.sent.append(text)

        def _wait_applied(self, uids, name="users"):
            pass

        def _publish(self):
            self.published.append(set(self.rports))
    g = Recording()
    g._refresh_rports(g._config_changed())
    assert g.rports == g.held == {busy, 47999} and g.published[-1] == {busy, 47999}
    config.write_text("session:\n  remote_forward_ports: [47999]\n")
    g.sent.clear()
    g._refresh_rports(g._config_changed())
    # no longer offered, still reserved: a user's sshd listens there
    assert g.published[-1] == {47999} and g.held == {busy, 47999} and g.sent == []
    held.close()
    g._refresh_rports(g._config_changed())
    assert g.held == {47999}
    assert g.sent == [f"delete element inet hatchway rports {{ {busy} }}\n"]
