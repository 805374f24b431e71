"""What an admin sees: Prometheus metrics (the daemon's and the bundled
webhook's), one structured log line at the start and end of every session,
and `hatchway sessions list|kill` — after real logins through sshd."""

import json
import os
import subprocess
import time
import urllib.request

import pexpect
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .stack import WEBHOOK_PORT, run, wait_for

METRICS = "http://127.0.0.1:9733/metrics"       # the default metrics.listen


def scrape(url: str = METRICS) -> dict:
    """{(name, frozenset(labels)): value} of every sample, parsed by the
    Prometheus client's own text-format parser."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    """The sum over the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def daemon_metrics(hw) -> dict:
    # (a fresh daemon's counters have no samples yet: {} is an answer too)
    return wait_for(lambda: _try(lambda: [scrape()]), 15, 0.2, what="the daemon's metrics")[0]


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


def log_lines(hw, which: str, **match) -> list[dict]:
    """The daemon's `session start|end` lines, parsed (key=value, values with
    spaces JSON-quoted), that carry every field of `match`."""
    out = []
    for line in hw.daemon_log().splitlines():
        if f"session {which} " not in line:
            continue
        fields = {}
        rest = line.split(f"session {which} ", 1)[1]
        while rest:
            key, _, rest = rest.partition("=")
            if rest.startswith('"'):
                val, end = json.JSONDecoder().raw_decode(rest)
                rest = rest[end:].lstrip()
            else:
                val, _, rest = rest.partition(" ")
            fields[key.strip()] = val
        if all(fields.get(k) == str(v) for k, v in match.items()):
            out.append(fields)
    return out


def test_metrics_count_real_logins_by_outcome(hw):
    before = daemon_metrics(hw)
    hooks = scrape(f"http://127.0.0.1:{WEBHOOK_PORT}/metrics")
    # ok, and an exit status; with a key of its own, so that hatchway-keys'
    # cache (alice logged in before, in other tests) cannot answer for the webhook
    fresh = hw.keygen("alice-metrics")
    run(["hatchway", "keys", "add", "alice", f"{fresh}.pub", "--db", str(hw.db)], check=False)
    assert hw.ssh("alice", "exit 3", key=fresh).returncode == 3
    # a key nobody registered: sshd refuses it after asking the webhook
    assert hw.ssh("alice", "true", key=hw.keygen("stranger")).returncode == 255
    after = wait_for(lambda: (lambda m: m if value(m, "hatchway_sessions_ended_total")
                              > value(before, "hatchway_sessions_ended_total") else None)(
        daemon_metrics(hw)), 15, 0.2, what="the session's end in the metrics")
    common = {"backend": "docker", "mode": "session", "command": "exec"}
    assert value(after, "hatchway_sessions_started_total", **common) == \
        value(before, "hatchway_sessions_started_total", **common) + 1
    assert value(after, "hatchway_sessions_ended_total", reason="signal") == \
        value(before, "hatchway_sessions_ended_total", reason="signal")
    assert value(after, "hatchway_sessions_ended_total", reason="normal", **common) == \
        value(before, "hatchway_sessions_ended_total", reason="normal", **common) + 1
    # the start latency histogram counted it, in a bucket that includes it
    assert value(after, "hatchway_session_start_seconds_count") == \
        value(before, "hatchway_session_start_seconds_count") + 1
    assert value(after, "hatchway_session_start_seconds_bucket", le="+Inf") == \
        value(after, "hatchway_session_start_seconds_count")
    hooks_after = scrape(f"http://127.0.0.1:{WEBHOOK_PORT}/metrics")
    assert value(hooks_after, "hatchway_webhook_pubkey_decisions_total", decision="deny",
                 why="unknown") > value(hooks, "hatchway_webhook_pubkey_decisions_total",
                                        decision="deny", why="unknown")
    assert value(hooks_after, "hatchway_webhook_pubkey_decisions_total", decision="allow") >= \
        value(hooks, "hatchway_webhook_pubkey_decisions_total", decision="allow") + 1


def test_a_missing_image_counts_as_a_create_failure_and_a_refusal(hw):
    hw.reconfigure({"docker": {"image": "hatchway/no-such-image:1", "pull": "Never"}})
    before = daemon_metrics(hw)
    p = hw.ssh("alice", "true")
    assert p.returncode == 255 and b"not available" in p.stderr
    after = wait_for(lambda: (lambda m: m if value(m, "hatchway_sessions_refused_total",
                                                   reason="backend") > 0 else None)(
        daemon_metrics(hw)), 15, 0.2, what="the refusal in the metrics")
    assert value(after, "hatchway_container_create_failures_total", backend="docker") == \
        value(before, "hatchway_container_create_failures_total", backend="docker") + 1
    assert value(after, "hatchway_sessions_refused_total", reason="backend") == \
        value(before, "hatchway_sessions_refused_total", reason="backend") + 1


def test_every_session_logs_a_start_and_an_end_line_field_by_field(hw):
    assert hw.ssh("alice", "printf 12345; exit 4", input=b"abc").returncode == 4
    start = log_lines(hw, "start", user="alice", kind="exec")[-1]
    assert start["backend"] == "docker" and start["mode"] == "session"
    assert start["command"] == "exec" and start["pty"] == "no"
    assert start["remote"].startswith("127.0.0.1:") and len(start["connection"]) == 32
    end = wait_for(lambda: log_lines(hw, "end", session=start["session"]), 10,
                   what="the session end line")[0]
    assert (end["user"], end["exit"], end["reason"]) == ("alice", "4", "normal")
    assert (end["bytes_in"], end["bytes_out"]) == ("3", "5")
    assert float(end["duration"]) > 0 and end["container"]
    # an sftp session is classed as such
    p = subprocess.run(["sftp", "-b", "-", "-P", "2222", "-i", str(hw.keys["bob"]),
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "BatchMode=yes", "bob@127.0.0.1"], input=b"pwd\n",
                       capture_output=True, timeout=60)
    starts = log_lines(hw, "start", user="bob", command="sftp")
    assert starts, p.stderr


def test_sessions_list_and_kill_one_of_two(hw):
    a = subprocess.Popen(hw.ssh_argv("alice", "echo up; sleep 120"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = subprocess.Popen(hw.ssh_argv("bob", "echo up; sleep 120"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for p in (a, b):
            assert p.stdout.readline() == b"up\n"

        def both():
            rows = json.loads(subprocess.run(["hatchway", "sessions", "list", "--json"],
                                             capture_output=True, text=True, check=True).stdout)
            live = [r for r in rows if r["state"] == "live"]
            return live if {r["user"] for r in live} == {"alice", "bob"} else None
        rows = wait_for(both, 15, 0.2, what="both sessions in the list")
        alice = next(r for r in rows if r["user"] == "alice")
        assert alice["command"] == "exec" and alice["remote"].startswith("127.0.0.1:")
        assert alice["container"] and alice["started"] and alice["idle"].endswith("s")
        table = subprocess.run(["hatchway", "sessions", "list"], capture_output=True, text=True,
                               check=True).stdout
        assert "alice" in table and "bob" in table and table.startswith("SESSION")

        before = daemon_metrics(hw)
        t0 = time.monotonic()
        k = subprocess.run(["hatchway", "sessions", "kill", alice["session"]],
                           capture_output=True, text=True, timeout=60)
        assert k.returncode == 0, k.stderr
        assert k.stdout == "ended 1 session(s)\n"
        out, err = a.communicate(timeout=30)
        assert b"hatchway: this session was ended by an administrator" in err
        assert a.returncode == 129             # SIGHUP, as on a hangup
        hw.wait_no_containers(timeout=15, user="alice")
        assert b.poll() is None                # the other session goes on
        assert hw.containers(user="bob")
        end = wait_for(lambda: log_lines(hw, "end", user="alice", reason="killed"), 10,
                       what="alice's end line")
        assert end and time.monotonic() - t0 < 60
        # the metrics say so too: one killed, one still active
        after = wait_for(lambda: (lambda m: m if value(m, "hatchway_sessions_ended_total",
                                                       reason="killed") > 0 else None)(
            daemon_metrics(hw)), 15, 0.2, what="the kill in the metrics")
        assert value(after, "hatchway_sessions_ended_total", reason="killed") == \
            value(before, "hatchway_sessions_ended_total", reason="killed") + 1
        assert value(after, "hatchway_sessions_active", backend="docker") == 1
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


# ------------------------------------------------------------------ recordings

RECORDINGS = "/var/lib/hatchway/recordings"


def casts(user: str) -> set[str]:
    d = os.path.join(RECORDINGS, user)
    return set(os.listdir(d)) if os.path.isdir(d) else set()


def cast_events(path: str):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return json.loads(lines[0]), [json.loads(ln) for ln in lines[1:]]


def shell_session(hw, user: str, command: str, expect: str):
    """A pty login: run `command` at the prompt, see `expect`, log out;
    everything the user saw."""
    child = hw.spawn(user, dimensions=(30, 100))
    child.expect(r"[#$] ")
    child.sendline(command)
    child.expect(expect)
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    return child


@pytest.mark.config({"groups": {"alice": {"session": {"record": "output"}}}})
def test_a_recorded_session_replays_to_what_the_user_saw_and_others_are_not_recorded(hw):
    before_alice, before_bob = casts("alice"), casts("bob")
    child = hw.spawn("alice", dimensions=(30, 100))
    child.expect("hatchway: this session is being recorded")
    child.expect(r"[#$] ")
    child.sendline("echo hello-$((6*7))")
    child.expect("hello-42")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    new = wait_for(lambda: casts("alice") - before_alice, 10, what="alice's recording")
    assert len(new) == 1
    path = os.path.join(RECORDINGS, "alice", new.pop())
    sid = os.path.basename(path)[16:-5]
    wait_for(lambda: [e for e in log_lines(hw, "end", user="alice", command="shell")
                      if e["session"].startswith(sid)], 10, what="the recorded session's end")
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    header, events = cast_events(path)
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    seen = "".join(e[2] for e in events if e[1] == "o")
    assert "hello-42" in seen and "echo hello-$((6*7))" in seen     # the echo of what was typed
    assert not [e for e in events if e[1] == "i"]                   # output only
    times = [e[0] for e in events]
    assert times == sorted(times)
    # replayed by the admin command, and by asciinema itself
    play = subprocess.run(["hatchway", "sessions", "play", sid, "--cat"], capture_output=True,
                          timeout=60)
    assert play.returncode == 0 and play.stdout == seen.encode()
    cat = pexpect.spawn("asciinema", ["cat", path], timeout=30, encoding="utf-8")
    cat.expect(pexpect.EOF)
    assert "hello-42" in cat.before
    # bob is not named by the policy: no file, no banner
    child = shell_session(hw, "bob", "echo not-$((1+1))", "not-2")
    assert "being recorded" not in child.before.decode(errors="replace")
    assert casts("bob") == before_bob


@pytest.mark.config({"groups": {"alice": {"session": {"record": "all"}}},
                     "recordings": {"max_size": "4000"}})
def test_input_is_recorded_only_when_asked_and_the_size_cap_cuts_cleanly(hw):
    before = casts("alice")
    shell_session(hw, "alice", "echo typed-$((2*3)); yes x | head -c 30000",
                  "typed-6")
    new = wait_for(lambda: casts("alice") - before, 10, what="alice's recording")
    path = os.path.join(RECORDINGS, "alice", new.pop())
    sid = os.path.basename(path)[16:-5]
    wait_for(lambda: [e for e in log_lines(hw, "end", user="alice", command="shell")
                      if e["session"].startswith(sid)], 10, what="the recorded session's end")
    header, events = cast_events(path)                  # every line whole JSON
    assert os.path.getsize(path) < 4000 + 500
    assert "".join(e[2] for e in events if e[1] == "i").startswith("echo typed")
    assert events[-1][1] == "o" and "recording stopped here, at its size limit" in events[-1][2]
