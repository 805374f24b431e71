"""A user taken out of `hatchway-users` by hand (`gpasswd -d`, an LDAP group
change) rather than with `hatchway users remove`: no new session starts, by
either door, and a live one runs on until it ends or an admin ends it
(hatchway(8), "Users").

The two doors: a new connection, where sshd's `Match Group` no longer applies,
so the user gets neither the key helper nor any key (login refused); and a
new session over a connection opened while still a member (SSH connection
multiplexing), where sshd still runs hatchway-shell and the daemon refuses it.
"""

import subprocess

import pexpect
import pytest

from .stack import run, wait_for

USER = "dave"
GROUP = "hatchway-users"


@pytest.fixture
def dave(hw):
    key = hw.add_member(USER)
    yield key
    run(["gpasswd", "-a", USER, GROUP], check=False)   # `users remove` removes only members
    run(["hatchway", "users", "remove", USER, "--db", str(hw.db)])


def test_a_user_out_of_the_group_starts_no_new_session(hw, dave, tmp_path):
    control = tmp_path / "mux"
    mux = ("-o", f"ControlPath={control}")
    master = subprocess.Popen(hw.ssh_argv(USER, options=("-M", "-N", *mux)),
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(control.exists, 60, what="the multiplexed connection")
        live = hw.spawn(USER, options=("-o", "ControlMaster=no", *mux))
        live.expect(r"[#$] ")
        other = subprocess.Popen(hw.ssh_argv(USER, "echo started; exec sleep 1000",
                                             options=("-o", "ControlMaster=no", *mux)),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        assert other.stdout.readline() == b"started\n"

        run(["gpasswd", "-d", USER, GROUP])

        # a new connection: sshd no longer treats dave as a Hatchway user
        r = hw.ssh(USER, "echo ran")
        assert r.returncode == 255 and r.stdout == b"", r
        assert b"Permission denied (publickey" in r.stderr, r.stderr
        # a new session on the old connection: the daemon refuses it
        r = hw.ssh(USER, "echo ran", options=("-o", "ControlMaster=no", *mux))
        assert (r.returncode, r.stdout, r.stderr) == (
            255, b"", b"hatchway: you are not a Hatchway user\n")

        # the live sessions run on (decided: hatchway(8)) until they end...
        live.sendline("echo still; exit 3")
        live.expect("still")
        live.expect(pexpect.EOF)
        live.close()
        assert live.exitstatus == 3
        # ... or an admin ends them
        run(["hatchway", "sessions", "kill", USER])
        out, err = other.communicate(timeout=60)
        assert b"hatchway: this session was ended by an administrator\n" in err, err
        hw.wait_no_containers(timeout=20, user=USER)
    finally:
        master.kill()
        master.wait()
