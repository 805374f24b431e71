"""sftp, scp (both protocols), rsync, git and paramiko's sftp once more, with
every session an exec into the user's persistent workspace instead of a
container of its own (the same tests, test_openssh.py and
test_other_clients.py, under another config); and an sftp beside a shell
over one ControlMaster connection in connection mode."""

import os
import subprocess
import tempfile

import pytest

from ..stack import run, wait_for
from . import test_openssh as openssh
from . import test_other_clients as others
from .clients import FILES_CONFIG, HOST, random_file, sftp, ssh_options

# the same tests, collected here again under this module's config
test_sftp_batch_put_ls_rename_get_rm = openssh.test_sftp_batch_put_ls_rename_get_rm
test_sftp_sees_what_an_earlier_session_left = openssh.test_sftp_sees_what_an_earlier_session_left
test_scp_both_directions = openssh.test_scp_both_directions
test_scp_legacy_reports_a_missing_file = openssh.test_scp_legacy_reports_a_missing_file
test_rsync_a_tree_both_ways = openssh.test_rsync_a_tree_both_ways
test_git_push_then_clone_over_protocol_v2 = openssh.test_git_push_then_clone_over_protocol_v2
test_paramiko_sftp_put_get_rename_remove = others.test_paramiko_sftp_put_get_rename_remove

REAPER = {"daemon": {"reap_interval": "1s"}}
pytestmark = pytest.mark.config(dict(FILES_CONFIG, session={"mode": "persistent"}, **REAPER))


@pytest.fixture(autouse=True)
def _workspaces_go_after_each_test(hw, data):
    """A workspace outlives its sessions, and its /data is the bind mount of
    a directory `data` makes afresh for each test: it goes after each test
    (before `data` and the leak check of `hw`)."""
    yield
    for user in ("alice", "bob"):
        run(["hatchway", "workspaces", "rm", user], check=False)


@pytest.mark.config(dict(FILES_CONFIG, session={"mode": "connection"}, **REAPER))
def test_sftp_beside_a_shell_over_one_connection(hw, data, key, tmp_path):
    ctl = os.path.join(tempfile.mkdtemp(prefix="hw-"), "ctl")       # sun_path: short
    mux = ("-o", f"ControlPath={ctl}")
    master = subprocess.Popen(hw.ssh_argv("alice", options=(
        "-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N", *mux)),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shell = None
    try:
        wait_for(lambda: os.path.exists(ctl), 20, what="the control socket")
        shell = subprocess.Popen(hw.ssh_argv("alice", "echo ready; exec sleep 1000", options=(
            "-o", "ControlMaster=no", *mux)), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert shell.stdout.readline() == b"ready\n"
        src = tmp_path / "up.bin"
        digest = random_file(src, 1_000_000)
        # the sftp session joins the shell's container: it puts into /tmp,
        # which no other container has
        (tmp_path / "batch").write_text(f"put {src} /tmp/up.bin\n")
        run(["sftp", "-P", "2222", *ssh_options(key), "-o", "ControlMaster=no", *mux,
             "-b", tmp_path / "batch", f"alice@{HOST}"])
        # (no ps in the tools image: the command lines from /proc)
        p = subprocess.run(hw.ssh_argv("alice", "sha256sum /tmp/up.bin; "
                                                "cat /proc/[0-9]*/cmdline | tr '\\0' ' '", options=(
            "-o", "ControlMaster=no", *mux)), capture_output=True, timeout=60)
        assert p.stdout.split()[0].decode() == digest, p.stderr
        assert b"sleep 1000" in p.stdout
        assert len(hw.containers(user="alice", mode="connection")) == 1
    finally:
        if shell is not None:
            shell.kill()
            shell.wait()
        master.terminate()
        master.wait(30)
    hw.wait_no_containers(timeout=30, user="alice")
    # and a session in a container of its own (another connection) has no such file
    assert sftp(key, "alice", "get /tmp/up.bin\n", tmp_path, check=False).returncode != 0
