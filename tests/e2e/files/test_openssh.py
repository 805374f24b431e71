"""sftp, scp (both protocols), rsync and git — OpenSSH's clients and their
server halves in the container, through the real sshd and hatchwayd.  What
the container wrote is checked on the host through the bind mount, and again
after the round trip back."""

import os
from pathlib import Path

import pytest

from ..stack import IMAGE as DEMO_IMAGE
from ..stack import SSHD_PORT, wait_for
from .clients import (FILES_CONFIG, HOST, git, random_file, remote, run, scp, sftp, sha256,
                      ssh_command, tree_listing)

pytestmark = pytest.mark.config(FILES_CONFIG)


def session_kinds(hw) -> list[str]:
    """The kind of every session the daemon started so far (exec, subsystem, shell)."""
    return [line.split(" kind=")[1].split()[0] for line in hw.daemon_log().splitlines()
            if "session start " in line and " kind=" in line]


# ------------------------------------------------------------------ sftp

def ls_answers(out: str) -> list[list[str]]:
    """What each `ls -1` in an `sftp -b` transcript listed (sftp echoes every
    command as `sftp> …` before its output)."""
    answers, current = [], None
    for line in out.splitlines():
        if line.startswith("sftp> "):
            current = [] if line == "sftp> ls -1" else None
            if current is not None:
                answers.append(current)
        elif current is not None:
            current += line.split()
    return [sorted(a) for a in answers]


def test_sftp_batch_put_ls_rename_get_rm(hw, data, key, tmp_path):
    src = tmp_path / "hello.bin"
    digest = random_file(src, 300_000)
    p = sftp(key, "alice", f"""\
cd /data
put {src} up.bin
ls -1
rename up.bin renamed.bin
ls -1
get renamed.bin {tmp_path}/back.bin
mkdir sub
rm renamed.bin
ls -1
""", tmp_path)
    # each `ls -1` answer, in order: after put, after rename, after rm
    assert ls_answers(p.stdout.decode()) == [["up.bin"], ["renamed.bin"], ["sub"]], p.stdout
    assert sha256(tmp_path / "back.bin") == digest
    # the container's /data is the host directory: the session really wrote there
    assert sorted(os.listdir(data)) == ["sub"]
    assert session_kinds(hw)[-1] == "subsystem"


def test_sftp_sees_what_an_earlier_session_left(hw, data, key, tmp_path):
    assert hw.ssh("alice", "echo persisted > /data/note").returncode == 0
    sftp(key, "alice", f"get /data/note {tmp_path}/note\n", tmp_path)
    assert (tmp_path / "note").read_text() == "persisted\n"


NO_SFTP = b"hatchway: this environment has no sftp server (tried /usr/lib/openssh/sftp-server)"


@pytest.mark.config({"docker": {"image": DEMO_IMAGE}})
def test_an_image_without_an_sftp_server_fails_fast_and_clearly(hw, key, tmp_path):
    # busybox only: no /usr/lib/openssh/sftp-server, no fallback.  sshd drops a
    # subsystem's stderr, so the line comes as the SFTP server's error answer.
    before = len(hw.daemon_log().splitlines())
    p = sftp(key, "alice", "ls /\n", tmp_path, check=False, timeout=60)
    assert p.returncode != 0
    assert b"realpath .: " + NO_SFTP + b"\r\n" in p.stderr, p.stderr
    # scp's default (SFTP) mode asks for the same subsystem; it shows only the
    # status code's own text, not the server's message
    src = tmp_path / "f"
    src.write_bytes(b"x")
    p = scp(key, src, remote("alice", "/tmp/f"), check=False, timeout=60)
    assert p.returncode != 0
    assert b"Operation unsupported" in p.stderr, p.stderr
    # both sessions ended with the fallback's status (logged just after the
    # client has its answer)
    def both_ended():
        ends = [line for line in hw.daemon_log().splitlines()[before:] if "session end " in line]
        return ends if len(ends) == 2 else None
    ends = wait_for(both_ended, 15, what="both sessions to end")
    assert all(" exit=127 " in line for line in ends), ends


# ------------------------------------------------------------------ scp

@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-mode", "legacy-O"])
def test_scp_both_directions(hw, data, key, tmp_path, legacy):
    src = tmp_path / "up.bin"
    digest = random_file(src, 2_000_000)
    os.chmod(src, 0o640)
    scp(key, "-p", src, remote("alice", "/data/up.bin"), legacy=legacy)
    assert sha256(data / "up.bin") == digest
    assert (data / "up.bin").stat().st_mode & 0o777 == 0o640       # -p: modes kept
    # a directory, recursively, back
    (data / "dir" / "deep").mkdir(parents=True)
    (data / "dir" / "deep" / "f").write_bytes(b"deep\0file\n")
    os.rename(data / "up.bin", data / "dir" / "up.bin")
    scp(key, "-r", remote("alice", "/data/dir"), tmp_path / "down", legacy=legacy)
    assert sha256(tmp_path / "down" / "up.bin") == digest
    assert (tmp_path / "down" / "deep" / "f").read_bytes() == b"deep\0file\n"
    # which protocol ran: the SFTP subsystem, or `scp -t`/`scp -f` as commands
    assert session_kinds(hw)[-2:] == (["exec", "exec"] if legacy else ["subsystem", "subsystem"])


def test_scp_legacy_reports_a_missing_file(hw, data, key, tmp_path):
    p = scp(key, remote("alice", "/data/nothing-here"), tmp_path, legacy=True, check=False)
    assert p.returncode == 1
    assert b"No such file or directory" in p.stderr


# ------------------------------------------------------------------ rsync

def make_tree(root: Path, files: int = 1000) -> None:
    """Nested directories, modes, relative/absolute/dangling symlinks, an empty
    directory, an empty file and a hard-to-name file."""
    for i in range(files):
        d = root / f"d{i % 10}" / f"e{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"file{i:04d}.txt"
        f.write_bytes(f"file {i}\n".encode() * (i % 50) + os.urandom(i % 13))
        os.chmod(f, (0o644, 0o600, 0o755, 0o640)[i % 4])
        os.utime(f, (1_600_000_000 + i, 1_600_000_000 + i))
    os.chmod(root / "d3", 0o750)
    (root / "empty-dir").mkdir()
    (root / "empty-file").write_bytes(b"")
    (root / "name with spaces & 'quotes'").write_text("odd\n")
    os.symlink("d0/e0/file0000.txt", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("no/such/target", root / "dangling")
    os.symlink("d1", root / "dir-link")


def test_rsync_a_tree_both_ways(hw, data, key, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    want = tree_listing(src)
    assert sum(1 for v in want.values() if v[0] == "file") > 1000
    rsh = ["-e", ssh_command(key)]
    run(["rsync", "-a", *rsh, f"{src}/", remote("alice", "/data/tree/")])
    assert tree_listing(data / "tree") == want
    run(["rsync", "-a", *rsh, remote("alice", "/data/tree/"), f"{tmp_path}/back/"])
    assert tree_listing(tmp_path / "back") == want
    # a second run changes only what changed (the delta algorithm runs both sides)
    (src / "d0" / "e0" / "file0000.txt").write_bytes(b"changed\n")
    p = run(["rsync", "-a", "--itemize-changes", *rsh, f"{src}/",
             remote("alice", "/data/tree/")])
    assert [line.split(None, 1)[1] for line in p.stdout.decode().splitlines()] == \
        ["d0/e0/file0000.txt"], p.stdout
    assert (data / "tree" / "d0" / "e0" / "file0000.txt").read_bytes() == b"changed\n"


# ------------------------------------------------------------------ git

def test_git_push_then_clone_over_protocol_v2(hw, data, key, tmp_path):
    url = f"ssh://alice@{HOST}:{SSHD_PORT}/data/repo.git"
    assert hw.ssh("alice", "git init -q --bare -b main /data/repo.git").returncode == 0
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work, key=key)
    (work / "README").write_text("hello\n")
    (work / "blob.bin").write_bytes(os.urandom(300_000))
    git("add", ".", cwd=work, key=key)
    git("commit", "-q", "-m", "first", cwd=work, key=key)
    (work / "README").write_text("hello again\n")
    git("commit", "-q", "-am", "second", cwd=work, key=key)
    git("push", "-q", url, "main", cwd=work, key=key)
    head = git("rev-parse", "HEAD", cwd=work, key=key).stdout

    # a later session (a new container) finds the pushed repository
    git("clone", "-q", url, str(tmp_path / "clone"), cwd=tmp_path, key=key)
    clone = tmp_path / "clone"
    assert git("rev-parse", "HEAD", cwd=clone, key=key).stdout == head
    assert (clone / "blob.bin").read_bytes() == (work / "blob.bin").read_bytes()
    # and fetch sees a push made from the clone
    (clone / "new").write_text("from the clone\n")
    git("add", "new", cwd=clone, key=key)
    git("commit", "-q", "-m", "third", cwd=clone, key=key)
    git("push", "-q", "origin", "main", cwd=clone, key=key)
    git("fetch", "-q", url, "main", cwd=work, key=key)
    assert git("rev-parse", "FETCH_HEAD", cwd=work, key=key).stdout == \
        git("rev-parse", "HEAD", cwd=clone, key=key).stdout

    # Protocol v2 needs GIT_PROTOCOL=version=2 (an SSH env request) to reach
    # git-upload-pack in the container; without it the server answers v0.
    trace = {"GIT_TRACE_PACKET": "1"}
    p = git("-c", "protocol.version=2", "ls-remote", url, cwd=tmp_path, key=key, env=trace)
    # (trace lines read "packet:   ls-remote< version 2": `<` is what the server sent)
    assert b"< version 2\n" in p.stderr, p.stderr[-2000:]
    assert b"< ls-refs" in p.stderr
    p = git("-c", "protocol.version=0", "ls-remote", url, cwd=tmp_path, key=key, env=trace)
    assert b"< version 2\n" not in p.stderr

