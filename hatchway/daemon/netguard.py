"""hatchway-netguard (root): the only root piece of port forwarding.

It does three things and nothing else:
  - holds the nftables table `inet hatchway` with `flags owner` for its whole
    life, through an `nft -i` child whose netlink socket owns the table: no
    other process, root included, can change or delete it, `nft flush
    ruleset` skips it, and it vanishes when the guard dies (then new logins
    get no forwarding: the canary fails);
  - keeps the table's `users` set equal to the members of hatchway-users
    (primary or supplementary: `meta skgid` would see the primary group only)
    and publishes that list in UIDS_FILE for hatchway-keys;
  - keeps the table's `rports` set equal to every `session.remote_forward_ports`
    port of the file config (ssh -R): no host process but the relay may connect
    to those loopback ports, where sshd listens for a user's -R; it publishes
    them in RPORTS_FILE for hatchway-keys;
  - binds the relay's privileged port (870 on 127.0.0.1 and ::1) and runs the
    relay (daemon/portfwd.py) as the daemon's user with those sockets, and
    makes, when the relay asks, a listening socket on 127.0.0.1:P inside a
    container's network namespace (only root may enter one) for a reserved P
    (daemon/rfwd.py).

On start, before the table exists, it ends the sshd processes of covered
users: they logged in while no table protected them (or under the previous
guard, whose table went with it), so their forwards may have reached the host.
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from hatchway.core import fsutil
from hatchway.core import portfwd as P

RELAY = "/usr/lib/hatchway/hatchway-portrelay"
REFRESH = 2.0           # seconds between membership checks


def ruleset(users: set[int], canary: set[int], port: int = P.RELAY_PORT,
            rports: set[int] = frozenset(), relay_uid: int = 0) -> str:
    """The table.  Every TCP connect by a covered uid to loopback goes to the
    relay; the canary uids' connect to 127.0.0.1:1 too; every other packet a
    covered uid sends is rejected (non-loopback, UDP, ...), except the answers
    of its sshd's -R listener to the relay's connects.  A connect to a
    reserved -R port on loopback by anyone but the relay (root included) is
    reset: sshd's listener for a user's -R is there, and only the container
    may reach it (the covered uids' connects were redirected before this)."""
    def elements(uids):
        return f"elements = {{ {', '.join(str(u) for u in sorted(uids))} }}" if uids else ""
    return f"""table inet {P.TABLE} {{
    flags owner
    set users {{
        type uid
        {elements(users)}
    }}
    set canary {{
        type uid
        {elements(canary)}
    }}
    set rports {{
        type inet_service
        {elements(rports)}
    }}
    chain nat_out {{
        type nat hook output priority -100; policy accept;
        meta skuid @canary ip daddr 127.0.0.1 tcp dport {P.CANARY_PORT} redirect to :{port}
        meta skuid @users ip daddr 127.0.0.0/8 meta l4proto tcp redirect to :{port}
        meta skuid @users ip6 daddr ::1 meta l4proto tcp redirect to :{port}
    }}
    chain filter_out {{
        type filter hook output priority 0; policy accept;
        meta skuid @users ct status dnat ip daddr 127.0.0.1 tcp dport {port} accept
        meta skuid @users ct status dnat ip6 daddr ::1 tcp dport {port} accept
        meta skuid @users ct direction reply ip daddr 127.0.0.0/8 tcp sport @rports accept
        meta skuid @users ct direction reply ip6 daddr ::1 tcp sport @rports accept
        meta skuid @users meta l4proto tcp reject with tcp reset
        meta skuid @users reject
        ip daddr 127.0.0.0/8 tcp dport @rports meta skuid != {relay_uid} reject with tcp reset
        ip6 daddr ::1 tcp dport @rports meta skuid != {relay_uid} reject with tcp reset
    }}
}}
"""


def set_update(add: set[int], remove: set[int], name: str = "users") -> str:
    """Additions first: a user being covered never has a gap."""
    out = ""
    if add:
        out += f"add element inet {P.TABLE} {name} {{ {', '.join(map(str, sorted(add)))} }}\n"
    if remove:
        out += f"delete element inet {P.TABLE} {name} {{ {', '.join(map(str, sorted(remove)))} }}\n"
    return out


def reserved_ports(config_path: str) -> set[int] | None:
    """Every -R port the file config gives anyone, or None when it cannot
    be read (the previous set stays)."""
    from hatchway.core import config as config_mod
    from hatchway.core.switches import all_listed, list_policy
    try:
        return all_listed(list_policy(config_mod.load(config_path), "remote_forward_ports"))
    except Exception as e:      # a broken file: one line, keep what was loaded
        print(f"hatchway-netguard: {config_path}: {e}; -R ports unchanged", file=sys.stderr)
        return None


CLONE_NEWNET = 0x40000000
CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(pid: int, container: str, port: int, proc: str = "/proc") -> list[socket.socket]:
    """Listening sockets on 127.0.0.1:port (and ::1:port when there is IPv6
    loopback) in the network namespace of `pid`, which must be a process of
    Docker container `container` (its cgroup names it) and not in the
    host's namespace.  The /proc/<pid> directory is opened first and
    everything read through it, so a pid reused meanwhile fails instead of
    naming another process.  A socket stays in the namespace it was made in,
    so the thread that enters it makes the sockets and ends."""
    if not CONTAINER_ID.match(container):
        raise ValueError("not a container id")
    dfd = os.open(f"{proc}/{int(pid)}", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(os.open("cgroup", os.O_RDONLY, dir_fd=dfd), encoding="ascii",
                  errors="replace") as f:
            if container not in f.read():
                raise ValueError(f"process {pid} is not in container {container[:12]}")
        nsfd = os.open("ns/net", os.O_RDONLY, dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        if os.fstat(nsfd).st_ino == os.stat("/proc/self/ns/net").st_ino:
            raise ValueError("the container uses the host's network")
        made: list = []
        failed: list = []

        def inside():
            try:
                _setns(nsfd)
                for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                    s = socket.socket(family, socket.SOCK_STREAM)
                    try:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        if family == socket.AF_INET6:
                            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        s.bind((addr, port))
                        s.listen(64)
                        made.append(s)
                    except OSError:
                        s.close()
                        if family == socket.AF_INET:
                            raise
                        # no IPv6 loopback in the container: IPv4 alone
            except OSError as e:
                failed.append(e)
        t = threading.Thread(target=inside, name="netns")
        t.start()
        t.join()
        if failed:
            for s in made:
                s.close()
            raise failed[0]
        return made
    finally:
        os.close(nsfd)


def can_enter_netns() -> str:
    """"" when this process may enter a network namespace (its own, in a
    thread: the same capability, seccomp and RestrictNamespaces checks as a
    container's), else why not: said at start, since without it every -R
    gets no listener."""
    failed: list = []

    def probe():
        try:
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
        except OSError as e:
            failed.append(e)
    t = threading.Thread(target=probe, name="netns-probe")
    t.start()
    t.join()
    return str(failed[0]) if failed else ""


def serve_listens(chan: socket.socket, allowed) -> None:
    """The relay's requests, one datagram each: {"pid", "container", "port"};
    the answer carries the sockets (SCM_RIGHTS) or {"error": ...}.  Only a
    port the table reserves (`allowed()`) is ever made."""
    while True:
        try:
            data = chan.recv(4096)
        except OSError:
            return
        if not data:
            return
        made = []
        try:
            req = json.loads(data)
            port = req["port"]
            if not isinstance(port, int) or port not in allowed():
                raise ValueError(f"port {port!r} is not a reserved -R port")
            made = listen_in(int(req["pid"]), str(req["container"]), port)
            socket.send_fds(chan, [json.dumps({"ok": len(made)}).encode()],
                            [s.fileno() for s in made])
        except (ValueError, KeyError, TypeError, OSError) as e:
            try:
                chan.send(json.dumps({"error": str(e)[:300]}).encode())
            except OSError:
                return
        finally:
            for s in made:
                s.close()


def members(group: str, exclude: set[int]) -> set[int]:
    """uids whose primary or supplementary group is `group` (root never)."""
    try:
        g = grp.getgrnam(group)
    except KeyError:
        return set()
    out = set()
    for name in g.gr_mem:
        try:
            out.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    out.update(p.pw_uid for p in pwd.getpwall() if p.pw_gid == g.gr_gid)
    return out - exclude - {0}


def sshd_pids(uids: set[int], proc: str = "/proc") -> list[int]:
    """sshd processes (the per-connection children) running as these uids."""
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/status", encoding="ascii", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if fields.get("Name", "").strip() != "sshd":
            continue
        try:
            if int(fields["Uid"].split()[0]) in uids:
                found.append(int(entry))
        except (KeyError, ValueError, IndexError):
            pass
    return found


def bind_relay(port: int) -> list[socket.socket]:
    out = []
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((addr, port))
        except OSError as e:
            s.close()
            if family == socket.AF_INET6:
                print(f"hatchway-netguard: no IPv6 loopback ({e}); IPv4 only", file=sys.stderr)
                continue
            raise SystemExit(f"hatchway-netguard: cannot bind {addr}:{port}: {e}") from None
        s.listen(128)
        out.append(s)
    return out


class Guard:
    def __init__(self, args):
        self.args = args
        self.nft = None
        self.relay = None
        self.users: set[int] = set()
        self.rports: set[int] = set()     # offered: published for hatchway-keys
        self.held: set[int] = set()       # in the table: rports and lingering ones
        self._conf_tag = None
        self.chan = None
        self.stopping = False
        self.serial = 0
        os.makedirs(P.STATE_DIR, mode=0o755, exist_ok=True)
        os.chmod(P.STATE_DIR, 0o755)
        try:
            self.relay_pw = pwd.getpwnam(args.relay_user)
        except KeyError:
            raise SystemExit(f"hatchway-netguard: no user {args.relay_user!r}") from None
        self.canary = {self.relay_pw.pw_uid}
        try:
            self.canary.add(pwd.getpwnam(args.keys_user).pw_uid)
        except KeyError:
            pass

    def _nft(self, text: str) -> None:
        """Send commands to the owning nft process, through a root-only file
        (nft -i reads one line at a time; `include` takes a whole file)."""
        self.serial += 1
        path = os.path.join(P.STATE_DIR, f"cmd-{self.serial}.nft")
        fsutil.atomic_write(path, text.encode(), 0o600)
        self.nft.stdin.write(f'include "{path}"\n'.encode())
        self.nft.stdin.flush()

    def _table_has(self, uids: set[int], name: str = "users") -> bool:
        p = subprocess.run([self.args.nft, "list", "set", "inet", P.TABLE, name],
                           capture_output=True, text=True)
        if p.returncode != 0:
            return False
        listed = {int(t) for t in p.stdout.replace(",", " ").replace("}", " ").split()
                  if t.isdigit()}
        return uids <= listed

    def _wait_applied(self, uids: set[int], name: str = "users") -> None:
        end = time.monotonic() + 10
        while not self._table_has(uids, name):
            if self.nft.poll() is not None:
                err = self.nft.stderr.read().decode(errors="replace").strip()[-500:]
                raise SystemExit(f"hatchway-netguard: nft did not load the table: {err}")
            if time.monotonic() > end:
                raise SystemExit("hatchway-netguard: nft did not load the table in 10 s")
            time.sleep(0.05)

    def _publish(self) -> None:
        fsutil.atomic_write(P.UIDS_FILE, "".join(f"{u}\n" for u in sorted(self.users)).encode(),
                            0o644)
        fsutil.atomic_write(P.RPORTS_FILE,
                            "".join(f"{p}\n" for p in sorted(self.rports)).encode(), 0o644)

    def _config_changed(self) -> bool:
        tag = fsutil.stat_tag(self.args.config)
        changed, self._conf_tag = tag != self._conf_tag, tag
        return changed

    def start(self) -> None:
        exclude = self.canary
        self.users = members(self.args.group, exclude)
        self._config_changed()
        self.rports = reserved_ports(self.args.config) or set()
        self.held = set(self.rports)
        # A table of this name that we do not own (left by an admin, or a
        # plain one): ours replaces it.  An owned one belongs to a live guard.
        subprocess.run([self.args.nft, "delete", "table", "inet", P.TABLE],
                       capture_output=True)
        if subprocess.run([self.args.nft, "list", "table", "inet", P.TABLE],
                          capture_output=True).returncode == 0:
            raise SystemExit(f"hatchway-netguard: table inet {P.TABLE} is owned by another "
                             "process (another hatchway-netguard?)")
        for pid in sshd_pids(self.users):
            try:
                os.kill(pid, signal.SIGTERM)
                print(f"hatchway-netguard: ended sshd {pid} (logged in without the table)",
                      file=sys.stderr)
            except OSError:
                pass
        self.listeners = bind_relay(self.args.port)
        self.nft = subprocess.Popen([self.args.nft, "-i"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._nft(ruleset(self.users, self.canary, self.args.port, self.rports,
                          self.relay_pw.pw_uid))
        self._wait_applied(self.users)
        self._wait_applied(self.rports, "rports")
        self.start_relay()
        self._publish()
        why = can_enter_netns()
        print("hatchway-netguard: entering containers' network namespaces (ssh -R): "
              + (f"fails ({why}); no -R gets a listener" if why else "works"),
              file=sys.stderr, flush=True)
        print(f"hatchway-netguard: table inet {P.TABLE} loaded, covering {len(self.users)} "
              f"users, reserving {len(self.rports)} -R ports; relay on port {self.args.port}",
              file=sys.stderr, flush=True)

    def start_relay(self) -> None:
        if self.chan is not None:
            self.chan.close()       # the old relay's: its server thread ends
        # the relay's way to ask for a listener inside a container (ssh -R)
        self.chan, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        threading.Thread(target=serve_listens, args=(self.chan, lambda: self.rports),
                         daemon=True, name="listens").start()
        fds = [s.fileno() for s in self.listeners]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "HATCHWAY_RELAY_FDS": ",".join(map(str, fds)),
               "HATCHWAY_GUARD_FD": str(theirs.fileno())}
        pw = self.relay_pw
        try:
            self.relay = subprocess.Popen(
                [self.args.relay, self.args.config], pass_fds=[*fds, theirs.fileno()], env=env,
                cwd="/", user=pw.pw_uid, group=pw.pw_gid,
                extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid))
        finally:
            theirs.close()

    def refresh(self) -> None:
        now = members(self.args.group, self.canary)
        if now != self.users:
            added, removed = now - self.users, self.users - now
            # hatchway-keys must not see a uid before the table covers it,
            # and must stop seeing one before the table drops it
            if removed:
                self.users -= removed
                self._publish()
            self._nft(set_update(added, removed))
            self._wait_applied(now)
            self.users = now
            self._publish()
        self._refresh_rports(self._config_changed())
        for old in os.listdir(P.STATE_DIR):
            if old.startswith("cmd-") and old != f"cmd-{self.serial}.nft":
                try:
                    os.unlink(os.path.join(P.STATE_DIR, old))
                except OSError:
                    pass

    def _refresh_rports(self, changed: bool) -> None:
        """The same order as for users: hatchway-keys never offers a port
        the table does not reserve.  A port taken out of the file stops
        being offered at once, but stays reserved while a covered user's
        sshd still listens there (a -R made before the change): otherwise
        that listener would be open to every host process until the user
        disconnects."""
        now = reserved_ports(self.args.config) if changed else None
        if now is not None and now != self.rports:
            added = now - self.held
            if added:
                self._nft(set_update(added, set(), "rports"))
                self._wait_applied(self.held | added, "rports")
                self.held |= added
            self.rports = now
            self._publish()
            print(f"hatchway-netguard: -R ports offered: {len(now)}", file=sys.stderr,
                  flush=True)
        lingering = self.held - self.rports
        if lingering:
            busy = {port for _a, port, uid in P.loopback_listeners() if uid in self.users}
            free = lingering - busy
            if free:
                self._nft(set_update(set(), free, "rports"))
                self.held -= free

    def run(self) -> int:
        self.start()
        while not self.stopping:
            time.sleep(REFRESH)
            if self.stopping:
                break
            if self.nft.poll() is not None:
                # the table went with it: new logins fail the canary already
                print("hatchway-netguard: nft exited; the table is gone", file=sys.stderr)
                self.stop()
                return 1
            if self.relay.poll() is not None:
                print(f"hatchway-netguard: relay exited ({self.relay.returncode}); restarting",
                      file=sys.stderr)
                self.start_relay()
            self.refresh()
        self.stop()
        return 0

    def stop(self) -> None:
        for path in (P.UIDS_FILE, P.RPORTS_FILE):
            try:
                os.unlink(path)         # first: hatchway-keys stops printing options
            except OSError:
                pass
        if self.relay and self.relay.poll() is None:
            self.relay.terminate()
            try:
                self.relay.wait(5)
            except subprocess.TimeoutExpired:
                self.relay.kill()
        if self.nft and self.nft.poll() is None:
            self.nft.stdin.close()      # the owning socket closes: the table goes
            try:
                self.nft.wait(5)
            except subprocess.TimeoutExpired:
                self.nft.kill()
        shutil.rmtree(P.STATE_DIR, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hatchway-netguard")
    ap.add_argument("--config", default="/etc/hatchway/hatchway.yaml")
    ap.add_argument("--relay-user", default="hatchway")
    ap.add_argument("--keys-user", default="hatchway-keys")
    ap.add_argument("--group", default=P.USERS_GROUP)
    ap.add_argument("--port", type=int, default=P.RELAY_PORT)
    ap.add_argument("--relay", default=RELAY)
    ap.add_argument("--nft", default=shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin") or "")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("hatchway-netguard: must run as root (it owns an nftables table)", file=sys.stderr)
        return 2
    if not args.nft:
        print("hatchway-netguard: nft not found (install the nftables package)", file=sys.stderr)
        return 2
    guard = Guard(args)

    def on_signal(signum, frame):
        guard.stopping = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return guard.run()
    except SystemExit:
        guard.stop()
        raise
