"""Many sessions at once, of one user and of many: each correct, none sees another."""

import threading

import pytest

USERS = [f"crowd{i}" for i in range(10)]

# Each session proves it started in an empty, private container: no marker of
# any other session in /tmp, a hostname of its own, then leaves its own marker.
SCRIPT = ('ls /tmp; echo "$1" > /tmp/mark; sleep 2; cat /tmp/mark; hostname')


def _run_all(hw, users_and_tokens):
    results: dict = {}

    def one(user, token):
        results[token] = hw.ssh(user, f"sh -c '{SCRIPT}' _ {token}", timeout=300)
    threads = [threading.Thread(target=one, args=ut) for ut in users_and_tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hostnames = set()
    for _, token in users_and_tokens:
        p = results[token]
        assert p.returncode == 0, (token, p.stderr)
        lines = p.stdout.decode().split()
        assert lines[0] == token, (token, lines)     # /tmp was empty, and the mark is ours
        hostnames.add(lines[1])
    assert len(hostnames) == len(users_and_tokens)


@pytest.mark.config({"limits": {"max_sessions_per_user": 50}})   # the default is 20
def test_fifty_sessions_of_one_user(hw):
    _run_all(hw, [("alice", f"t{i:02d}") for i in range(50)])


@pytest.fixture(scope="module")
def crowd(stack):
    for u in USERS:
        stack.add_member(u)
    return USERS


def test_fifty_sessions_of_ten_users(hw, crowd):
    _run_all(hw, [(u, f"{u}-{i}") for u in crowd for i in range(5)])
