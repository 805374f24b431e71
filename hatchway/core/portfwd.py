"""Port forwarding (`ssh -L/-D/-W localhost:PORT`): what hatchway-keys, the
root guard (daemon/netguard.py) and the relay (daemon/portfwd.py) share.

How a forward reaches the container: sshd's per-connection child runs as the
user and connects from the host's network namespace.  The guard's nftables
table redirects every TCP connect that a covered uid makes to loopback to
RELAY_PORT (privileged, so no user can listen there).  The relay asks the
kernel who made the connection (sock_diag: the owner uid of the socket at the
other end) and where it was going (SO_ORIGINAL_DST), and joins it to
127.0.0.1:PORT inside that user's container.

The canary proves, at login, that the table and the genuine relay are both
there: a connect to 127.0.0.1:CANARY_PORT (privileged, nothing listens on it)
by a canary uid is redirected to the relay, which answers CANARY_BANNER.
Without the table the connect is refused, so hatchway-keys prints no
forwarding option: a missing table never means a forward to the host.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

RELAY_PORT = 870
CANARY_PORT = 1
CANARY_BANNER = b"HATCHWAY-FWD-CANARY v1\n"
TABLE = "hatchway"                          # nft: table inet hatchway
STATE_DIR = "/run/hatchway-netguard"        # root's, world-readable
UIDS_FILE = STATE_DIR + "/uids"             # the uids the loaded table covers
RPORTS_FILE = STATE_DIR + "/rports"         # the -R ports the loaded table reserves
USERS_GROUP = "hatchway-users"
# sshd's key option list: `restrict` has turned everything off; these turn TCP
# forwarding back on, for loopback destinations only (the drop-in's PermitOpen
# is the same list: sshd allows what both allow, and matches them as text).
KEY_OPTIONS = ("port-forwarding", 'permitopen="localhost:*"', 'permitopen="127.0.0.1:*"',
               'permitopen="[::1]:*"')
# `port-forwarding` turns on both directions; a list that matches nothing
# keeps the one the policy does not give shut (sshd has no "none" for key
# options; port 1 is privileged, so sshd would not listen there anyway, and
# the relay refuses it as a destination).
NO_OPEN = 'permitopen="127.0.0.1:1"'
NO_LISTEN = 'permitlisten="127.0.0.1:1"'


def key_options(local: bool, remote: list[int]) -> tuple[str, ...]:
    """What hatchway-keys adds after `restrict` for TCP forwarding: -L/-D/-W
    to loopback when `local`, -R on exactly the ports in `remote` (a bare
    port: any listen address, which sshd binds to loopback only under
    GatewayPorts no)."""
    if not local and not remote:
        return ()
    return (*(KEY_OPTIONS if local else ("port-forwarding", NO_OPEN)),
            *([f'permitlisten="{p}"' for p in remote] or [NO_LISTEN]))

SO_ORIGINAL_DST = 80        # linux/netfilter_ipv4.h, level SOL_IP
IP6T_SO_ORIGINAL_DST = 80   # linux/netfilter_ipv6/ip6_tables.h, level SOL_IPV6
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF


def parse_original_dst(family: int, raw: bytes) -> tuple[str, int]:
    """(address, port) from the sockaddr_in / sockaddr_in6 that
    SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST return."""
    if family == socket.AF_INET:
        if len(raw) < 8:
            raise ValueError("short sockaddr_in")
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        if len(raw) < 24:
            raise ValueError("short sockaddr_in6")
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack_from("!H", raw, 2)[0]
    raise ValueError(f"not an inet family: {family}")


def original_dst(conn: socket.socket) -> tuple[str, int]:
    """Where a redirected connection was going before the nat rule."""
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    else:
        # Python 3.11 has no socket.SOL_IPV6; the level is IPPROTO_IPV6
        raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
    return parse_original_dst(conn.family, raw)


def _addr16(ip: str) -> bytes:
    b = ipaddress.ip_address(ip).packed
    return b + b"\0" * (16 - len(b))


def sockdiag_request(family: int, src: tuple[str, int], dst: tuple[str, int],
                     seq: int = 1) -> bytes:
    """A netlink inet_diag_req_v2 for exactly one TCP socket, src -> dst (an
    exact lookup, not a dump: the kernel answers for that socket only)."""
    sockid = (struct.pack("!HH", src[1], dst[1]) + _addr16(src[0]) + _addr16(dst[0])
              + struct.pack("=I", 0) + struct.pack("=II", INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    return struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + req


def parse_sockdiag_reply(data: bytes, src: tuple[str, int],
                         dst: tuple[str, int]) -> int | None:
    """The owner uid from the kernel's inet_diag_msg, or None (an error
    answer, a short one, or one about another socket)."""
    found = parse_sockdiag_owner(data, src, dst)
    return found[0] if found else None


def parse_sockdiag_owner(data: bytes, src: tuple[str, int],
                         dst: tuple[str, int]) -> tuple[int, int] | None:
    """(uid, inode) from the kernel's inet_diag_msg, or None.  The inode is
    0 once no process holds the socket any more (closed, the kernel still
    finishing the TCP close): how a shut-down write side is told from a
    closed connection."""
    if len(data) < 16:
        return None
    length, typ = struct.unpack_from("=IH", data, 0)
    if typ != SOCK_DIAG_BY_FAMILY or length < 16 + 72 or len(data) < 16 + 72:
        return None         # NLMSG_ERROR: no such socket (or not allowed)
    off = 16
    sport, dport = struct.unpack_from("!HH", data, off + 4)
    saddr, daddr = data[off + 8:off + 24], data[off + 24:off + 40]
    if (sport, dport) != (src[1], dst[1]) or saddr != _addr16(src[0]) \
            or daddr != _addr16(dst[0]):
        return None
    # inet_diag_msg: 4 bytes, the 48-byte id, expires, rqueue, wqueue, uid, inode
    return struct.unpack_from("=II", data, off + 4 + 48 + 12)


def _sockdiag(family: int, src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    try:
        s.settimeout(2)
        s.sendto(sockdiag_request(family, src, dst), (0, 0))
        return s.recv(65536)
    finally:
        s.close()


def peer_uid(family: int, src: tuple[str, int], dst: tuple[str, int]) -> int | None:
    """The uid owning the TCP socket src -> dst in this network namespace.
    `src` is the relay's peer address, `dst` the *original* destination: the
    connecting socket still sees the address it asked for, not the relay's."""
    return parse_sockdiag_reply(_sockdiag(family, src, dst), src, dst)


def peer_held(family: int, src: tuple[str, int], dst: tuple[str, int]) -> bool:
    """Does a process still hold the connecting socket (sshd after only
    shutting down its write side), or has it been closed?"""
    try:
        found = parse_sockdiag_owner(_sockdiag(family, src, dst), src, dst)
    except OSError:
        return True         # cannot tell: keep the forward
    return bool(found and found[1])


NLM_F_DUMP = 0x300
NLMSG_DONE = 3
TCP_LISTEN = 10


def listen_dump_request(family: int, seq: int = 1) -> bytes:
    """A netlink dump request for every listening TCP socket of `family`."""
    req = (struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
           + b"\0" * 48)
    return struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY,
                       NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + req


def parse_listen_dump(data: bytes) -> tuple[list[tuple[str, int, int]], bool]:
    """([(address, port, uid)], done) from one recv of a listen dump."""
    out, off, done = [], 0, False
    while off + 16 <= len(data):
        length, typ = struct.unpack_from("=IH", data, off)
        if length < 16 or off + length > len(data):
            break
        if typ in (NLMSG_DONE, NLMSG_ERROR):
            done = True
        elif typ == SOCK_DIAG_BY_FAMILY and length >= 16 + 72:
            m = off + 16
            family = data[m]
            sport = struct.unpack_from("!H", data, m + 4)[0]
            raw = data[m + 8:m + 8 + (4 if family == socket.AF_INET else 16)]
            uid = struct.unpack_from("=I", data, m + 4 + 48 + 12)[0]
            try:
                out.append((socket.inet_ntop(family, raw), sport, uid))
            except (OSError, ValueError):
                pass
        off += (length + 3) & ~3
    return out, done


def loopback_listeners() -> list[tuple[str, int, int]]:
    """(address, port, owner uid) of every TCP socket listening on the host's
    loopback (127.0.0.0/8, ::1): where sshd binds a user's -R."""
    found = []
    for family in (socket.AF_INET, socket.AF_INET6):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        try:
            s.settimeout(2)
            s.sendto(listen_dump_request(family), (0, 0))
            done = False
            while not done:
                part, done = parse_listen_dump(s.recv(1 << 16))
                found += part
        finally:
            s.close()
    return [(a, p, u) for a, p, u in found if ipaddress.ip_address(a).is_loopback]


MODE_ORDER = {"persistent": 0, "connection": 1, "session": 2}


def pick_rank(mode: str, created) -> tuple:
    """The order forwards choose among a user's running containers (Docker)
    or pods (Kubernetes): a workspace first (what an editor expects: one
    environment), else the newest."""
    return MODE_ORDER.get(mode, 3), -float(created or 0)


def destination_ok(addr: str, port: int) -> bool:
    """Only loopback ports reach a container; port 1 is the canary's."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.is_loopback and 0 < port < 65536 and port != CANARY_PORT


def canary(timeout: float = 1.0) -> bool:
    """True only when the redirect table and the genuine relay are both live."""
    try:
        with socket.create_connection(("127.0.0.1", CANARY_PORT), timeout=timeout) as s:
            s.settimeout(timeout)
            got = b""
            while len(got) < len(CANARY_BANNER):
                part = s.recv(len(CANARY_BANNER) - len(got))
                if not part:
                    break
                got += part
    except OSError:
        return False
    return got == CANARY_BANNER


def parse_uids(text: str) -> set[int]:
    """The guard's UIDS_FILE: one uid per line; anything else is ignored."""
    return {int(line) for line in text.split() if line.isdigit()}


def _published(path: str) -> set[int]:
    """One of the guard's lists (UIDS_FILE, RPORTS_FILE); none when the
    guard is not running."""
    try:
        with open(path, encoding="ascii") as f:
            return parse_uids(f.read())
    except (OSError, ValueError):
        return set()


def reserved(path: str | None = None) -> set[int]:
    """The -R ports the loaded table keeps from every host process but the
    relay (written by the guard after loading them)."""
    return _published(path or RPORTS_FILE)


def covered_uids(path: str | None = None) -> set[int]:
    """The uids the loaded table redirects (written by the guard, root,
    after the table with them is loaded)."""
    return _published(path or UIDS_FILE)


def covered(uid: int, path: str | None = None) -> bool:
    """Does the loaded table redirect this uid's connects?"""
    return uid in covered_uids(path)
