"""Clients nobody here wrote besides OpenSSH: paramiko (exec and sftp) and
PuTTY's plink and pscp (Debian's putty-tools), against the real sshd."""

import hashlib
import os

import pytest

from ..stack import IMAGE as DEMO_IMAGE
from .clients import FILES_CONFIG, HOST, TIMEOUT, random_file, run, sha256

pytestmark = pytest.mark.config(FILES_CONFIG)


# ------------------------------------------------------------------ paramiko

def test_paramiko_exec_streams_and_status(hw, data, client):
    payload = os.urandom(3 << 20)
    stdin, stdout, stderr = client.exec_command(
        "cat > /data/p.bin; sha256sum < /data/p.bin; echo to-stderr >&2; exit 3", timeout=60)
    stdin.write(payload)
    stdin.channel.shutdown_write()          # EOF reaches `cat` in the container
    out, err = stdout.read(), stderr.read()
    assert stdout.channel.recv_exit_status() == 3
    assert out.decode().split()[0] == hashlib.sha256(payload).hexdigest()
    assert err == b"to-stderr\n"
    assert (data / "p.bin").read_bytes() == payload


def test_paramiko_sftp_put_get_rename_remove(hw, data, client, tmp_path):
    src = tmp_path / "src.bin"
    digest = random_file(src, 20 << 20)
    sftp = client.open_sftp()           # the "sftp" subsystem, mapped in the container
    sftp.get_channel().settimeout(TIMEOUT)
    try:
        sftp.put(str(src), "/data/up.bin")
        assert sha256(data / "up.bin") == digest
        assert sftp.stat("/data/up.bin").st_size == 20 << 20
        sftp.rename("/data/up.bin", "/data/moved.bin")
        assert sftp.listdir("/data") == ["moved.bin"]
        sftp.get("/data/moved.bin", str(tmp_path / "down.bin"))
        assert sha256(tmp_path / "down.bin") == digest
        sftp.remove("/data/moved.bin")
        assert sftp.listdir("/data") == []
    finally:
        sftp.close()
    assert os.listdir(data) == []


@pytest.mark.config({"docker": {"image": DEMO_IMAGE}})
def test_paramiko_sftp_without_a_server_says_why(hw, client):
    sftp = client.open_sftp()
    sftp.get_channel().settimeout(60)
    with pytest.raises(IOError, match="hatchway: this environment has no sftp server"):
        sftp.listdir("/")
    sftp.close()


# ------------------------------------------------------------------ PuTTY

def test_plink_exec_stdin_stdout_and_status(hw, data, putty):
    args, env = putty
    payload = os.urandom(2 << 20)
    p = run(["plink", "-ssh", "-T", *args, f"alice@{HOST}",
             "sha256sum; echo to-stderr >&2; exit 7"],
            input=payload, stdin=None, env=env, check=False)
    assert p.returncode == 7, p.stderr
    assert p.stdout.decode().split()[0] == hashlib.sha256(payload).hexdigest()
    assert p.stderr == b"to-stderr\n"


@pytest.mark.parametrize("protocol", ["-sftp", "-scp"])
def test_pscp_both_directions(hw, data, putty, tmp_path, protocol):
    args, env = putty
    src = tmp_path / "src.bin"
    digest = random_file(src, 10 << 20)
    run(["pscp", "-q", protocol, *args, src, f"alice@{HOST}:/data/up.bin"], env=env)
    assert sha256(data / "up.bin") == digest
    run(["pscp", "-q", protocol, *args, f"alice@{HOST}:/data/up.bin", tmp_path / "down.bin"],
        env=env)
    assert sha256(tmp_path / "down.bin") == digest


@pytest.mark.config({"docker": {"image": DEMO_IMAGE}})
def test_pscp_without_an_sftp_server_fails_fast(hw, putty, tmp_path):
    args, env = putty
    p = run(["pscp", "-q", "-sftp", *args, f"alice@{HOST}:/etc/hostname", tmp_path / "x"],
            env=env, check=False, timeout=60)
    assert p.returncode != 0
    # PuTTY shows the status code's own text, not the server's message
    assert p.stderr == b"unable to identify /etc/hostname: operation unsupported\n", p


def test_pscp_legacy_scp_error_is_reported(hw, data, putty, tmp_path):
    args, env = putty
    p = run(["pscp", "-q", "-scp", *args, f"alice@{HOST}:/data/missing", tmp_path / "x"],
            env=env, check=False)
    assert p.returncode != 0
    assert b"No such file or directory" in p.stderr + p.stdout
    assert not (tmp_path / "x").exists()
