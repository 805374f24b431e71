"""The real thing, on loopback: the installed .deb, Debian's sshd with the
shipped drop-in, dockerd, the bundled webhook and hatchwayd.

Everything here drives installed binaries (/usr/sbin/hatchwayd,
/usr/lib/hatchway/*, /usr/bin/hatchway) and real clients; nothing imports the
work tree.  Ports and paths are fixed, so only one stack runs per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path("/etc/hatchway/hatchway.yaml")
# The admin's config while a stack runs with its own.  On disk, not only in
# memory: a run killed before stop() (a timeout, ^C twice) left the tests'
# config in /etc for good, and the next run saved that as "the admin's".
SAVED_CONFIG = CONFIG.with_name("hatchway.yaml.before-tests")
SSHD_PORT = 2222
WEBHOOK_PORT = 18642
IMAGE = "hatchway/demo:latest"
MEMBERS = ("alice", "bob")
HOST_ID = (Path("/etc/machine-id").read_text().strip()
           if Path("/etc/machine-id").exists() else "") or os.uname().nodename
OUTSIDER = "carol"


def run(argv, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run(argv, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{argv} failed ({p.returncode}): {p.stderr or p.stdout}")
    return p


def token_pid(token: str) -> int:
    """The pid in an owner token (labels.process_token: pid:starttime; an
    earlier daemon's boot:pid:starttime)."""
    return int(token.split(":")[-2])


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def memory_kb(pid: int) -> dict[str, int] | None:
    """Rss and Pss of a process (kB), from the kernel's own accounting; None
    once it has exited."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss"):
                    out[name] = int(rest.split()[0])
    except (ProcessLookupError, FileNotFoundError):
        return None
    return out



def assert_200_mb_out(stack, timeout: float) -> None:
    """The container makes 200 MB of random data, keeps its hash on stderr and
    streams it out: the client must get every byte (any backend)."""
    p = subprocess.Popen(stack.ssh_argv("alice", "head -c 209715200 /dev/urandom > /tmp/d; "
                                                 "sha256sum /tmp/d >&2; cat /tmp/d"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    digest, size = hashlib.sha256(), 0
    while chunk := p.stdout.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    err = p.stderr.read()
    assert p.wait(timeout) == 0, err
    assert size == 200 << 20
    assert err.split()[0].decode() == digest.hexdigest()

def client_env(stack) -> dict[str, str]:
    """The environment a command sees when the client sends LANG, LC_TIME,
    GIT_PROTOCOL and FOO (SendEnv): what the allowlists let through."""
    env = dict(os.environ, LANG="C.UTF-8", LC_TIME="POSIX", GIT_PROTOCOL="version=2",
               FOO="bar")
    argv = stack.ssh_argv("alice", "env | sort", options=(
        "-o", "SendEnv=LANG LC_* GIT_PROTOCOL FOO"))
    p = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0, p.stderr
    return dict(line.split("=", 1) for line in p.stdout.decode().splitlines())


class SlowRead:
    """Read `stream` to its end at `rate` bytes/s while sampling the memory of
    session process `pid` once per MiB: what a slow client does to the relay."""

    def __init__(self, stream, pid: int, rate: int):
        mb = 1 << 20
        digest = hashlib.sha256()
        self.got, self.watched, self.baseline = 0, 0, None
        self.peak = {"Rss": 0, "Pss": 0}
        started, next_sample = None, 0
        while chunk := stream.read(64 * 1024):
            started = started or time.monotonic()
            digest.update(chunk)
            self.got += len(chunk)
            if self.got >= next_sample and (mem := memory_kb(pid)) is not None:
                # (the session ends once the last bytes are in sshd's hands,
                # a little before this reader has them)
                self.watched = self.got
                if self.baseline is None and self.got >= 4 * mb:
                    self.baseline = mem         # threads and buffers are up by now
                self.peak = {k: max(self.peak[k], mem[k]) for k in self.peak}
                next_sample = self.got + mb
            ahead = self.got / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        self.sha256 = digest.hexdigest()

    def assert_flat(self, watched_mb: int = 100, growth_mb: int = 32) -> None:
        """Watched while at least `watched_mb` passed, grown by less than `growth_mb`."""
        mb = 1 << 20
        assert self.baseline is not None and self.watched - 4 * mb >= watched_mb * mb, \
            self.watched
        growth = {k: (self.peak[k] - self.baseline[k]) // 1024 for k in self.peak}
        print(f"session process memory (kB): baseline {self.baseline}, peak {self.peak}")
        assert growth["Rss"] < growth_mb and growth["Pss"] < growth_mb, (self.baseline, self.peak)


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.keys: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.base_config = {
            "auth": {"webhook": {"url": f"http://127.0.0.1:{WEBHOOK_PORT}"}},
            "docker": {"image": IMAGE},
            "daemon": {"reap_interval": "60s"},
            "log": {"level": "debug"},
            # the suite starts alice's sessions faster than any person would;
            # test_isolation checks the rate limit itself
            "limits": {"max_starts_per_user": 0},
        }
        self.config = self.base_config

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        run([str(ROOT / "tests/setup/services")], capture_output=False)
        self.saved_config = _save_config()
        self.write_config(self.base_config)
        run(["install", "-d", "-m", "0750", "-o", "hatchway", "-g", "hatchway-users",
             "/run/hatchway"])
        self.start_webhook()
        self.start_daemon()
        for name in MEMBERS:
            self.add_member(name)
        self.add_outsider(OUTSIDER)
        run(["hatchway", "sshd", "enable"])
        self.start_sshd()

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_proc(name)
        if self.saved_config is not None:
            CONFIG.write_bytes(self.saved_config)
        SAVED_CONFIG.unlink(missing_ok=True)

    def stop_proc(self, name: str, sig=signal.SIGTERM) -> None:
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _spawn(self, name: str, argv: list[str], log: str) -> subprocess.Popen:
        out = open(self.tmp / log, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        self.procs[name] = p
        return p

    def start_webhook(self) -> None:
        # as the packaged service runs it: its own user, owning the store's directory
        self.db.parent.mkdir(exist_ok=True)
        shutil.chown(self.db.parent, "hatchway-webhook", "hatchway-webhook")
        os.chmod(self.tmp, 0o755)
        self._spawn("webhook", ["setpriv", "--reuid=hatchway-webhook", "--regid=hatchway-webhook",
                                "--init-groups", "hatchway", "webhook", "serve", "--listen",
                                f"127.0.0.1:{WEBHOOK_PORT}", "--db", str(self.db)], "webhook.log")
        wait_for(lambda: _port_open(WEBHOOK_PORT), 15, what="the webhook")

    @property
    def db(self) -> Path:
        return self.tmp / "webhook" / "keys.db"

    def start_daemon(self) -> subprocess.Popen:
        stop_foreign_daemon()
        before = self.daemon_log().count("listening on")
        p = self._spawn("daemon", ["setpriv", "--reuid=hatchway", "--regid=hatchway",
                                   "--init-groups", "/usr/sbin/hatchwayd"], "hatchwayd.log")

        def listening():
            if p.poll() is not None:
                raise RuntimeError(f"hatchwayd exited: {self.daemon_log()[-2000:]}")
            return self.daemon_log().count("listening on") > before
        wait_for(listening, 15, what="hatchwayd to listen")
        return p

    def start_netguard(self) -> None:
        """hatchway-netguard as root, as its unit runs it (no systemd here):
        the owned nftables table for hatchway-users' uids and the relay on
        port 870.  Fails at once, saying why, if it cannot start."""
        if not shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin"):
            raise RuntimeError("port forwarding tests need nft (package nftables: tests/setup/deps)")
        if not os.path.exists("/bin/busybox"):
            raise RuntimeError("port forwarding tests need /bin/busybox (package busybox-static)")
        if run(["nft", "list", "table", "inet", "hatchway"], check=False).returncode == 0:
            raise RuntimeError("an nftables table inet hatchway exists already "
                               "(another hatchway-netguard?)")
        log = self.tmp / "netguard.log"
        p = self._spawn("netguard", ["/usr/lib/hatchway/hatchway-netguard"], "netguard.log")

        def loaded():
            if p.poll() is not None:
                raise RuntimeError(f"hatchway-netguard exited ({p.returncode}): "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            return "loaded, covering" in log.read_text(errors="replace")
        wait_for(loaded, 20, what="hatchway-netguard to load its table")

    def stop_netguard(self) -> None:
        self.stop_proc("netguard")
        # the table is owned by the guard's nft process: it must be gone with it
        wait_for(lambda: run(["nft", "list", "table", "inet", "hatchway"],
                             check=False).returncode != 0, 10, what="the nft table to go")

    def netguard_log(self) -> str:
        try:
            return (self.tmp / "netguard.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop_daemon(self, sig=signal.SIGTERM) -> None:
        self.stop_proc("daemon", sig)

    def restart_daemon(self) -> None:
        self.stop_daemon()
        self.start_daemon()

    def daemon_log(self) -> str:
        try:
            return (self.tmp / "hatchwayd.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start_sshd(self) -> None:
        hostkey = self.tmp / "ssh_host_ed25519_key"
        if not hostkey.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)])
        os.makedirs("/run/sshd", exist_ok=True)
        # Debian's own main config (which includes the drop-in directory), on a
        # loopback port with a host key of our own.
        self._spawn("sshd", ["/usr/sbin/sshd", "-D", "-f", "/etc/ssh/sshd_config",
                             "-o", f"Port={SSHD_PORT}", "-o", "ListenAddress=127.0.0.1",
                             "-o", f"PidFile={self.tmp}/sshd.pid", "-o", "LogLevel=VERBOSE",
                             # tests open dozens of connections at once; sshd's
                             # default (10:30:100) would drop some at random
                             "-o", "MaxStartups=200",
                             "-h", str(hostkey), "-E", str(self.tmp / "sshd.log")], "sshd.out")
        wait_for(lambda: _port_open(SSHD_PORT), 15, what="sshd")

    def reload_sshd(self) -> None:
        self.procs["sshd"].send_signal(signal.SIGHUP)
        time.sleep(0.5)
        wait_for(lambda: _port_open(SSHD_PORT), 15, what="sshd after reload")

    # ------------------------------------------------------------ config

    def write_config(self, cfg: dict) -> None:
        CONFIG.parent.mkdir(parents=True, exist_ok=True)
        CONFIG.write_text(yaml.safe_dump(cfg, sort_keys=False))
        os.chmod(CONFIG, 0o644)

    def reconfigure(self, overrides: dict | None) -> None:
        """Rewrite the config (base + overrides) and restart the daemon."""
        cfg = _merge(self.base_config, overrides or {})
        if cfg == self.config:
            return
        self.config = cfg
        self.write_config(cfg)
        self.restart_daemon()
        if "netguard" in self.procs:
            self.wait_reserved(cfg)

    def wait_reserved(self, cfg: dict) -> None:
        """The guard re-reads the config every 2 s; until its table reserves
        the config's -R ports, hatchway-keys (rightly) offers none of them."""
        from hatchway.core.switches import parse_ports
        want = set(parse_ports((cfg.get("session") or {}).get("remote_forward_ports") or []))
        for g in (cfg.get("groups") or {}).values():
            want |= set(parse_ports(((g or {}).get("session") or {})
                                    .get("remote_forward_ports") or []))

        def reserved():
            try:
                have = Path("/run/hatchway-netguard/rports").read_text().split()
            except FileNotFoundError:
                have = []
            return {int(x) for x in have} == want
        wait_for(reserved, 15, what=f"hatchway-netguard to reserve the -R ports {sorted(want)}")

    # ------------------------------------------------------------ users

    def keygen(self, name: str) -> Path:
        key = self.tmp / f"{name}_ed25519"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test",
                 "-f", str(key)])
        self.keys[name] = key
        return key

    def add_member(self, name: str) -> Path:
        key = self.keygen(name)
        run(["hatchway", "users", "remove", name, "--db", str(self.db)], check=False)
        run(["hatchway", "users", "add", name, "--key", f"{key}.pub", "--db", str(self.db)])
        return key

    def add_outsider(self, name: str) -> Path:
        key = self.keygen(name)
        try:
            pwd.getpwnam(name)
        except KeyError:
            run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", name])
        home = Path(pwd.getpwnam(name).pw_dir)
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(f"{key}.pub", ssh / "authorized_keys")
        uid = pwd.getpwnam(name).pw_uid
        for p in (ssh, ssh / "authorized_keys"):
            os.chown(p, uid, uid)
        return key

    # ------------------------------------------------------------ clients

    def ssh_argv(self, user: str, command: str | None = None, tty: bool = False,
                 options: tuple = (), key: Path | None = None) -> list[str]:
        argv = ["ssh", "-F", "/dev/null", "-p", str(SSHD_PORT),
                "-i", str(key or self.keys[user]),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"]
        argv += ["-tt"] if tty else ["-T"]
        argv += list(options)
        argv.append(f"{user}@127.0.0.1")
        if command is not None:
            argv.append(command)
        return argv

    def ssh(self, user: str, command: str | None = None, input: bytes | None = None,
            timeout: float = 120, tty: bool = False, options: tuple = (),
            key: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.ssh_argv(user, command, tty, options, key), input=input,
                              capture_output=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def spawn(self, user: str, command: str | None = None, dimensions=(24, 80),
              options: tuple = (), env: dict | None = None):
        import pexpect
        argv = self.ssh_argv(user, command, tty=True, options=options)
        return pexpect.spawn(argv[0], argv[1:], dimensions=dimensions, timeout=30, env=env)

    # ------------------------------------------------------------ containers

    def containers(self, **labels: str) -> list[dict]:
        """This machine's session containers (the packaging tests run daemons in
        other roots against the same dockerd; those carry another host id)."""
        filters = ["--filter", "label=io.hatchway.managed=true",
                   "--filter", f"label=io.hatchway.host={HOST_ID}"]
        for k, v in labels.items():
            filters += ["--filter", f"label=io.hatchway.{k}={v}"]
        out = run(["docker", "ps", "-a", "--no-trunc", "--format", "{{json .}}", *filters]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_no_containers(self, timeout: float = 10, **labels: str) -> None:
        wait_for(lambda: not self.containers(**labels), timeout, 0.1,
                 what=f"session containers {labels or ''} to be removed")

    def one_container(self, timeout: float = 20, **labels: str) -> dict:
        """Wait for exactly one matching container; its labels parsed into `labels`."""
        found = wait_for(lambda: (lambda c: c if len(c) == 1 else None)(self.containers(**labels)),
                         timeout, 0.1, what=f"one session container {labels}")[0]
        found["labels"] = dict(kv.split("=", 1) for kv in found["Labels"].split(",") if "=" in kv)
        return found

    def events(self, container_id: str, since: float) -> list[dict]:
        """Docker's events for one container from `since` until now."""
        out = run(["docker", "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                   "--filter", f"container={container_id}", "--format", "{{json .}}"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def exit_codes(self, container_id: str, since: float) -> list[str]:
        """Exit codes dockerd recorded for the container's death (its `die` events)."""
        return [e["Actor"]["Attributes"].get("exitCode") for e in self.events(container_id, since)
                if e.get("status") == "die"]

    def session_pid(self, container: dict) -> int:
        """The hatchwayd session process that owns a container (from its label)."""
        return token_pid(container["labels"]["io.hatchway.process"])

    def auth_log(self) -> str:
        try:
            return Path("/var/log/auth.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


def stop_foreign_daemon() -> None:
    """A hatchwayd not started by this suite (the demo's, say) would lose its
    socket to ours; stop its main process (sessions are separate processes)."""
    def is_hatchwayd(pid: int) -> bool:
        try:
            return "hatchwayd" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        except OSError:
            return False
    try:
        pid = int(Path("/run/hatchway/hatchwayd.pid").read_text())
    except (OSError, ValueError):
        return
    if is_hatchwayd(pid):           # a stale file may name a reused pid
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not is_hatchwayd(pid), 10, what=f"hatchwayd {pid} to stop")


def _port_open(port: int) -> bool:
    import socket
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _save_config() -> bytes | None:
    """What /etc/hatchway/hatchway.yaml held before the tests: kept aside by
    an earlier run that never got to restore it, else read now and kept aside."""
    if SAVED_CONFIG.exists():
        return SAVED_CONFIG.read_bytes()
    if not CONFIG.exists():
        return None
    data = CONFIG.read_bytes()
    tmp = SAVED_CONFIG.with_name(SAVED_CONFIG.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(SAVED_CONFIG)
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
