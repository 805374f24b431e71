"""hatchway-keys behind Debian's real sshd, with ContainerSSH's reference auth
server (tests/e2e/webhook_servers.py) as the webhook: a hanging webhook does
not wedge sshd, the cache halves the calls, sshd enforces the webhook's from=
and expiry, the connection id matches the session container's label, and bad
answers are refused with a line in /var/log/auth.log.

Each test logs in with a key made for it, so that no cached answer from
another test (the cache is keyed on user and key fingerprint) can decide."""

import subprocess
import time
import uuid

import pytest

from .stack import wait_for
from .webhook_servers import ContainerSSHServer

DEADLINE = 2.0


@pytest.fixture
def webhook(hw):
    srv = ContainerSSHServer(pubkey_users={"alice", "bob"})
    yield srv
    srv.hang.clear()
    srv.close()


def use(hw, srv, ttl="0s", **webhook):
    hw.reconfigure({"auth": {"webhook": {"url": srv.url, "timeout": f"{DEADLINE}s", **webhook},
                             "cache": {"ttl": ttl}}})


def fresh_key(hw):
    return hw.keygen(f"k{uuid.uuid4().hex[:8]}")


def login(hw, user, key, command="true", timeout=60):
    return hw.ssh(user, command, key=key, timeout=timeout)


class AuthLog:
    """What hatchway-keys wrote to /var/log/auth.log since this was made."""

    def __init__(self, hw):
        self.hw = hw
        self.start = len(hw.auth_log())

    def lines(self, *needles):
        new = self.hw.auth_log()[self.start:]
        return [ln for ln in new.splitlines()
                if "hatchway-keys" in ln and all(n in ln for n in needles)]

    def wait(self, *needles, timeout=10):
        return wait_for(lambda: self.lines(*needles), timeout, what=f"auth.log line {needles}")


def test_hanging_webhook_refuses_in_time_and_does_not_wedge_sshd(hw, webhook):
    use(hw, webhook)
    bob_key, alice_key = fresh_key(hw), fresh_key(hw)
    log = AuthLog(hw)
    webhook.hang.add("bob")
    started = time.monotonic()
    bob = subprocess.Popen(hw.ssh_argv("bob", "true", key=bob_key), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # meanwhile, while bob's key check hangs on the webhook, alice gets in
        wait_for(lambda: any(r[1]["username"] == "bob" for r in webhook.requests), 10,
                 what="bob's key check to reach the webhook")
        alice = login(hw, "alice", alice_key, "echo in")
        assert alice.returncode == 0, alice.stderr
        assert alice.stdout == b"in\n"
        bob.wait(60)
    finally:
        bob.kill()
        bob.wait()
    assert bob.returncode == 255
    assert b"Permission denied" in bob.stderr.read()
    # The helper gave up (closed its connection to the webhook) within
    # deadline + 1 s of ssh starting, i.e. of well before the key offer.
    (user, _, gone), = webhook.held
    assert user == "bob"
    assert gone - started < DEADLINE + 1, gone - started
    (line,) = log.wait("user=bob", "decision=deny")
    assert "deadline" in line or "timed out" in line, line
    # and the same user gets in as soon as the webhook answers again
    webhook.hang.clear()
    again = login(hw, "bob", bob_key)
    assert again.returncode == 0, again.stderr


def test_cache_on_one_webhook_call_per_login(hw, webhook):
    use(hw, webhook, ttl="10s")
    assert login(hw, "alice", fresh_key(hw)).returncode == 0
    assert webhook.calls() == 1


def test_cache_off_two_webhook_calls_per_login(hw, webhook):
    # sshd asks once for the key query and once for the signed attempt
    use(hw, webhook, ttl="0s")
    assert login(hw, "alice", fresh_key(hw)).returncode == 0
    assert webhook.calls() == 2


@pytest.mark.parametrize("ext,allowed", [
    ({"from": ["10.0.0.0/8"]}, False),
    ({"from": ["!127.0.0.1", "*"]}, False),
    ({"from": ["127.0.0.1"]}, True),
    ({"from": ["127.0.0.0/8", "192.0.2.0/24"]}, True),
    ({"expiry": "2020-01-01T00:00:00Z"}, False),
    ({"expiry": "2099-01-01T00:00:00Z"}, True),
], ids=["from-elsewhere", "from-negated", "from-here", "from-cidr", "expired", "not-expired"])
def test_sshd_enforces_the_webhooks_restrictions(hw, webhook, ext, allowed):
    use(hw, webhook)
    webhook.extensions["alice"] = ext
    p = login(hw, "alice", fresh_key(hw))
    assert (p.returncode == 0) is allowed, p.stderr
    if not allowed:
        assert b"Permission denied" in p.stderr
    assert webhook.calls() >= 1


def test_connection_id_is_the_session_containers(hw, webhook):
    use(hw, webhook)
    p = subprocess.Popen(hw.ssh_argv("alice", "sleep 30", key=fresh_key(hw)),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        container = hw.one_container(user="alice")
        ids = {req["connectionId"] for route, req in webhook.requests if route == "pubkey"}
        # the key query and the signed attempt: one connection, one id
        assert webhook.calls() == 2
        assert ids == {container["labels"]["io.hatchway.connection"]}
    finally:
        p.terminate()
        p.wait(30)


@pytest.mark.parametrize("behaviour,reason", [
    ("garbage", 'reason="webhook error: webhook reply is not a JSON object"'),
    ("http500", 'reason="webhook error: webhook answered HTTP 500"'),
])
def test_bad_answers_are_refused_and_logged(hw, webhook, behaviour, reason):
    use(hw, webhook)
    webhook.behaviour = behaviour
    log = AuthLog(hw)
    p = login(hw, "bob", fresh_key(hw))
    assert p.returncode == 255
    assert b"Permission denied" in p.stderr
    (line, *_) = log.wait("user=bob", "decision=deny", reason)
    assert "key=SHA256:" in line and "latency_ms=" in line


def test_webhook_says_no_is_logged_with_the_fingerprint(hw, webhook):
    use(hw, webhook)
    key = fresh_key(hw)
    fp = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True,
                        text=True, check=True).stdout.split()[1]
    webhook.pubkey_users.discard("bob")
    log = AuthLog(hw)
    assert login(hw, "bob", key).returncode == 255
    (line, *_) = log.wait("user=bob", f"key={fp}", 'reason="webhook said no"')
    pub = (key.parent / f"{key.name}.pub").read_text().split()[1]
    assert pub not in hw.auth_log()[log.start:]
