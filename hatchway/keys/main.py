"""hatchway-keys: sshd's AuthorizedKeysCommand.

    AuthorizedKeysCommand /usr/lib/hatchway/hatchway-keys %u %t %k [%C]

sshd trusts whatever this prints, runs it twice per successful login (the key
query, then the signed attempt) plus once per other offered key, gives it no
timeout of its own and throws its stderr away.  So: a hard total deadline
(SIGALRM → exit with nothing printed), stdout written once, at the very end,
and only for a yes; every decision logged to syslog (authpriv); exit status 0
always, because sshd ignores keys from a failing command anyway and a non-zero
status only adds noise to its log.

It never creates containers: authentication is not finished when it runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import syslog
import time

# Only what every call needs: the HTTP client (with socket, threading,
# urllib) is imported on a cache miss only, the config schema (and PyYAML)
# only when the config changed (compiled_config.py).
from hatchway.core import connection, fsutil, sshkeys
from hatchway.core.digest import sha256
from hatchway.core.switches import list_for, switch_allows
from hatchway.core.errors import ConfigError, Decision

from . import compiled_config

# What sshd's NSS lookup can hand us as %u for a Debian account.
# (\Z, not $: `$` also matches before a trailing newline.)
USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?\Z")
UNKNOWN_REMOTE = "0.0.0.0:0"
OPTIONS = "restrict,pty"


def log(msg: str, prio: int = syslog.LOG_INFO) -> None:
    syslog.syslog(prio, msg)


def remote_address(client: str | None) -> str:
    """sshd >= 9.4 expands %C to 'addr port laddr lport'.  Older sshd has no way
    to tell an AuthorizedKeysCommand the client address; the webhook then gets
    0.0.0.0:0, which ContainerSSH servers still parse."""
    if not client:
        return UNKNOWN_REMOTE
    parts = client.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return UNKNOWN_REMOTE
    addr = parts[0]
    if not re.fullmatch(r"[0-9A-Fa-f.:%a-z]+", addr):
        return UNKNOWN_REMOTE
    return f"[{addr}]:{parts[1]}" if ":" in addr else f"{addr}:{parts[1]}"


class Cache:
    """Positive answers per (user, key fingerprint), one small file each, in a
    directory only this helper's user may read.  Denials are never stored, and a
    fresh denial deletes the entry, so a "no" is never overridden by an old "yes"."""

    def __init__(self, conf: dict):
        self.dir = conf["dir"]
        self.ttl = conf["ttl"]
        self.stale = conf["stale_if_error"]
        self.usable = self.ttl > 0 and self._dir_ok()

    def _dir_ok(self) -> bool:
        try:
            st = os.stat(self.dir)
        except OSError:
            return False
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            log(f"cache directory {self.dir} is not private to uid {os.geteuid()}; cache off",
                syslog.LOG_WARNING)
            return False
        return True

    def _path(self, user: str, fp: str) -> str:
        return os.path.join(self.dir, sha256(f"{user}\0{fp}".encode()).hexdigest())

    def get(self, user: str, fp: str, max_age: float) -> list[str] | None:
        if not self.usable:
            return None
        try:
            with open(self._path(user, fp), encoding="utf-8") as f:
                entry = json.load(f)
            age = time.time() - float(entry["t"])
            if entry["user"] != user or entry["fp"] != fp or not (0 <= age <= max_age):
                return None
            opts = entry["options"]
            if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
                return None
            return opts
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None

    def put(self, user: str, fp: str, options: list[str]) -> None:
        if not self.usable:
            return
        entry = {"t": time.time(), "user": user, "fp": fp, "options": options}
        try:
            fsutil.atomic_write(self._path(user, fp), json.dumps(entry).encode(), 0o600)
        except OSError:
            pass

    def drop(self, user: str, fp: str) -> None:
        if not self.usable:
            return
        try:
            os.unlink(self._path(user, fp))
        except OSError:
            pass


def decide(argv: list[str], conf: dict) -> tuple[Decision, dict]:
    """Everything but the printing.  Returns the decision and log fields."""
    info: dict = {"cache": "off"}
    if len(argv) not in (3, 4):
        return Decision(False, f"expected arguments %u %t %k [%C], got {len(argv)}"), info
    user, key_type, key_b64 = argv[0], argv[1], argv[2]
    if not USERNAME.match(user):
        return Decision(False, "refusing a malformed username"), info
    info["user"] = user
    try:
        key = sshkeys.from_parts(key_type, key_b64)
    except sshkeys.BadKey as e:
        return Decision(False, str(e)), info
    info["key"] = key.fingerprint
    remote = remote_address(argv[3] if len(argv) == 4 else None)
    info["remote"] = remote

    cache = Cache(conf["auth"]["cache"])
    if cache.usable:
        info["cache"] = "miss"
        hit = cache.get(user, key.fingerprint, cache.ttl)
        if hit is not None:
            info["cache"] = "hit"
            return Decision(True, "cached yes", hit), info

    from hatchway.core import http11
    from hatchway.core.webhook_client import WebhookError, check_pubkey
    wh = conf["auth"]["webhook"]
    try:
        conn_id = connection.connection_id_for(os.getppid())
    except (OSError, ValueError, IndexError):
        conn_id = sha256(os.urandom(16)).hexdigest()[:32]
    info["conn"] = conn_id
    try:
        decision = check_pubkey(wh, username=user, public_key=key.line(), remote_address=remote,
                                connection_id=conn_id,
                                deadline=http11.Deadline(wh["timeout"]))
    except (WebhookError, http11.HTTPError) as e:
        stale = cache.get(user, key.fingerprint, cache.ttl + cache.stale) if cache.stale else None
        if stale is not None:
            info["cache"] = "stale"
            return Decision(True, f"webhook error ({e}); stale cached yes", stale), info
        return Decision(False, f"webhook error: {e}"), info
    if decision.allowed:
        cache.put(user, key.fingerprint, decision.options)
    else:
        cache.drop(user, key.fingerprint)
    return decision, info


def _groups(user: str) -> list[str] | None:
    """The names of the user's groups, or None when there is no such account."""
    import pwd

    from hatchway.core.identity import user_groups
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    return user_groups(user, pw.pw_gid)


def agent_forwarding(user: str, policy: dict) -> bool:
    """May sshd forward this user's agent?  Only if the admin's file config
    says so for the user or one of the user's groups; the daemon decides again
    per session (and the webhook cannot widen it: see core/config.py).
    The same rule, with the `ports` policy, for port forwarding."""
    if policy.get("default") is not True and not policy.get("groups"):
        return False        # the usual case: no group lookup at all
    names = _groups(user)
    return names is not None and switch_allows(policy, names)


def remote_ports(user: str, rpolicy: dict | None) -> list[int]:
    """The -R ports the file config gives this user."""
    if not rpolicy or (not rpolicy.get("default") and not rpolicy.get("groups")):
        return []
    names = _groups(user)
    return list_for(rpolicy, names) if names is not None else []


def port_forwarding(user: str, policy: dict, canary=None, covered=None,
                    rpolicy: dict | None = None,
                    reserved=None) -> tuple[bool, list[int], str | None]:
    """May sshd forward this user's TCP connects (-L), and listen on which
    ports (-R)?  Fail closed: the policy must allow it, the guard's table
    must cover the user's uid, and the canary must prove the table and the
    relay are live right now; without them a forward would reach the host's
    own loopback.  A -R port must also be reserved by the loaded table, or a
    host process could reach the user's listener.  Returns (-L, -R ports,
    why not when the policy allowed something)."""
    local = agent_forwarding(user, policy)
    remote = remote_ports(user, rpolicy)
    if not local and not remote:
        return False, [], None
    import pwd

    from hatchway.core import portfwd     # sockets: only for users it may concern
    canary = canary or portfwd.canary
    covered = covered or portfwd.covered
    reserved = reserved or portfwd.reserved
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return False, [], "no such account"
    if not covered(uid):
        return False, [], (f"uid {uid} is not covered by the nftables table "
                           "(is hatchway-netguard running?)")
    if not canary():
        return False, [], ("the forwarding canary got no answer (hatchway-netguard or its "
                           "relay is down)")
    why = None
    if remote:
        held = reserved()
        kept = [p for p in remote if p in held]
        if len(kept) < len(remote):
            why = (f"-R ports {sorted(set(remote) - set(kept))} are not reserved by the "
                   "table yet")
        remote = kept
    return local, remote, why


def authorized_line(argv: list[str], decision: Decision, agent: bool = False,
                    ports: bool = False, remote: list[int] = ()) -> str:
    # `restrict` turns every forwarding off; `agent-forwarding` after it turns
    # the agent back on, `port-forwarding` TCP forwarding to the loopback
    # destinations listed (permitopen) and listening on the ports listed
    # (permitlisten), and nothing else.
    if ports or remote:
        from hatchway.core.portfwd import key_options
    opts = ",".join([OPTIONS, *(["agent-forwarding"] if agent else []),
                     *(key_options(ports, list(remote)) if ports or remote else ()),
                     *decision.options])
    return f"{opts} {argv[1]} {argv[2]}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    started = time.monotonic()
    # LOG_PERROR: the same line on stderr too.  sshd sends the helper's stderr to
    # /dev/null, so this costs nothing there; run by hand (or by the tests) the
    # decision and its reason show up without a syslog daemon.
    syslog.openlog("hatchway-keys", syslog.LOG_PID | syslog.LOG_PERROR, syslog.LOG_AUTHPRIV)

    def too_late(signum, frame):
        log("decision=deny reason=\"total deadline exceeded\"", syslog.LOG_WARNING)
        os._exit(0)

    signal.signal(signal.SIGALRM, too_late)
    signal.setitimer(signal.ITIMER_REAL, 5.5)   # until the config says otherwise
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    # sshd gives this process a fixed environment (PATH, USER, HOME, LANG); the
    # variables are for running the helper by hand against another config.
    try:
        conf, _ = compiled_config.load(
            os.environ.get("HATCHWAY_CONFIG") or compiled_config.CONFIG_PATH,
            os.environ.get("HATCHWAY_KEYS_DIR") or compiled_config.DEFAULT_DIR)
    except ConfigError as e:
        log(f"decision=deny reason=\"config: {e}\"", syslog.LOG_ERR)
        return 0
    signal.setitimer(signal.ITIMER_REAL,
                     max(0.1, conf["auth"]["webhook"]["timeout"] + 0.5 - (time.monotonic() - started)))

    try:
        decision, info = decide(argv, conf)
    except Exception as e:  # never a traceback, never a yes by accident
        decision, info = Decision(False, f"internal error: {type(e).__name__}: {e}"), {}
    signal.setitimer(signal.ITIMER_REAL, 0)

    fields = " ".join(f"{k}={v}" for k, v in info.items() if k in ("user", "key", "remote",
                                                                     "conn", "cache"))
    ms = int((time.monotonic() - started) * 1000)
    verdict = "allow" if decision.allowed else "deny"
    reason = decision.reason.replace('"', "'")
    log(f"{fields} decision={verdict} reason=\"{reason}\" latency_ms={ms}",
        syslog.LOG_INFO if decision.allowed else syslog.LOG_NOTICE)
    if decision.allowed:
        try:
            agent = agent_forwarding(argv[0], conf["agent"])
        except Exception as e:     # a broken NSS answer: no agent, still a yes
            log(f"user={argv[0]} agent forwarding off: {type(e).__name__}: {e}",
                syslog.LOG_WARNING)
            agent = False
        try:
            ports, remote, why = port_forwarding(argv[0], conf["ports"],
                                                 rpolicy=conf.get("rports"))
        except Exception as e:
            ports, remote, why = False, [], f"{type(e).__name__}: {e}"
        if why:
            log(f"user={argv[0]} port forwarding {'limited' if ports or remote else 'off'}: "
                f"{why}", syslog.LOG_WARNING)
        try:
            os.write(1, authorized_line(argv, decision, agent, ports, remote).encode())
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
