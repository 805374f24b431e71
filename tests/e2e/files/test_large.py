"""Large transfers stay exact.  That a slow reader does not make hatchwayd
buffer (the failure that sank ContainerSSH's Java predecessor was a session
holding a whole download in memory while its client read slowly) is checked on
every backend in tests/e2e/test_on_each_backend.py."""

import os

import pytest

from .clients import (FILES_CONFIG, HOST, SSHD_PORT, git, random_file, remote, run, scp, sftp,
                      sha256, ssh_command)

pytestmark = pytest.mark.config(FILES_CONFIG)

MB = 1 << 20


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """One 100 MB file of random bytes for every test here, and its sha256."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    return path, random_file(path, 100 * MB)


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-mode", "legacy-O"])
def test_scp_100mb_both_directions(hw, data, key, tmp_path, big, legacy):
    src, digest = big
    scp(key, src, remote("alice", "/data/up.bin"), legacy=legacy, timeout=300)
    assert sha256(data / "up.bin") == digest
    scp(key, remote("alice", "/data/up.bin"), tmp_path / "down.bin", legacy=legacy, timeout=300)
    assert sha256(tmp_path / "down.bin") == digest


def test_sftp_100mb_both_directions(hw, data, key, tmp_path, big):
    src, digest = big
    sftp(key, "alice", f"put {src} /data/up.bin\nget /data/up.bin {tmp_path}/down.bin\n",
         tmp_path, timeout=300)
    assert sha256(data / "up.bin") == digest
    assert sha256(tmp_path / "down.bin") == digest


def test_rsync_100mb_both_directions(hw, data, key, tmp_path, big):
    src, digest = big
    rsh = ["-e", ssh_command(key)]
    run(["rsync", "-a", *rsh, src, remote("alice", "/data/up.bin")], timeout=300)
    assert sha256(data / "up.bin") == digest
    run(["rsync", "-a", *rsh, remote("alice", "/data/up.bin"), tmp_path / "down.bin"],
        timeout=300)
    assert sha256(tmp_path / "down.bin") == digest


def test_git_100mb_blob_push_and_clone(hw, data, key, tmp_path, big):
    src, digest = big
    url = f"ssh://alice@{HOST}:{SSHD_PORT}/data/big.git"
    assert hw.ssh("alice", "git init -q --bare /data/big.git").returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    os.link(src, work / "big.bin")
    git("init", "-q", cwd=work, key=key)
    git("add", "big.bin", cwd=work, key=key)
    git("commit", "-q", "-m", "big", cwd=work, key=key)
    git("push", "-q", url, "HEAD:refs/heads/main", cwd=work, key=key, timeout=300)
    git("clone", "-q", "-b", "main", url, tmp_path / "clone", cwd=tmp_path, key=key, timeout=300)
    assert sha256(tmp_path / "clone" / "big.bin") == digest


def test_paramiko_sftp_100mb_both_directions(hw, data, client, tmp_path, big):
    src, digest = big
    sftp = client.open_sftp()
    sftp.get_channel().settimeout(300)
    try:
        sftp.put(str(src), "/data/up.bin")
        assert sha256(data / "up.bin") == digest
        sftp.get("/data/up.bin", str(tmp_path / "down.bin"))
    finally:
        sftp.close()
    assert sha256(tmp_path / "down.bin") == digest


def test_pscp_100mb_both_protocols_both_directions(hw, data, putty, tmp_path, big):
    src, digest = big
    args, env = putty
    for protocol in ("-scp", "-sftp"):
        # PuTTY uploads in 4 KB writes with no bound on outstanding requests;
        # hatchwayd paces them (hatchway/daemon/sftp_fallback.Pacer), or OpenSSH's
        # sftp-server queues the whole file and goes quadratic.
        up = f"up{protocol}.bin"
        run(["pscp", "-q", protocol, *args, src, f"alice@{HOST}:/data/{up}"], env=env, timeout=300)
        assert sha256(data / up) == digest
        down = tmp_path / f"down{protocol}.bin"
        run(["pscp", "-q", protocol, *args, f"alice@{HOST}:/data/{up}", down], env=env,
            timeout=300)
        assert sha256(down) == digest

