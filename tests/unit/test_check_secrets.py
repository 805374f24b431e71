"""`hatchway check` on the key helper's TLS files and token: they must be
readable by the helper's user, and the secret ones by nobody else."""

import os
import pwd

import pytest

from hatchway.admin.check_cmd import _secret_problems

ROOT = os.geteuid() == 0
HELPER = "nobody"          # stands in for hatchway-keys: any account will do
UID = pwd.getpwnam(HELPER).pw_uid


def make(tmp_path, mode, owner=None):
    path = tmp_path / "secret"
    path.write_text("x\n")
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner, -1)
    return str(path)


@pytest.mark.skipif(not ROOT, reason="needs root to give files away")
def test_private_and_owned_by_the_helper_is_fine(tmp_path):
    assert _secret_problems(make(tmp_path, 0o600, UID), "token_file", True, HELPER) == []


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secret_readable_by_others(tmp_path, mode):
    (p,) = _secret_problems(make(tmp_path, mode), "key_file", True, HELPER)
    assert "readable by others" in p and f"{mode:04o}" in p


@pytest.mark.skipif(not ROOT, reason="needs root to own a file the helper cannot read")
def test_secret_the_helper_cannot_read(tmp_path):
    # root's 0600 token: private, but every key check would fail
    (p,) = _secret_problems(make(tmp_path, 0o600, 0), "token_file", True, HELPER)
    assert f"not readable by {HELPER}" in p


def test_public_file_readable_by_everyone_is_fine(tmp_path):
    assert _secret_problems(make(tmp_path, 0o644), "ca_file", False, HELPER) == []


@pytest.mark.skipif(not ROOT, reason="needs root to own a file the helper cannot read")
def test_public_file_the_helper_cannot_read(tmp_path):
    (p,) = _secret_problems(make(tmp_path, 0o600, 0), "ca_file", False, HELPER)
    assert "not readable" in p


def test_missing_file(tmp_path):
    (p,) = _secret_problems(str(tmp_path / "nope"), "cert_file", False, HELPER)
    assert "No such file" in p


def test_missing_helper_user(tmp_path):
    (p,) = _secret_problems(make(tmp_path, 0o600), "token_file", True, "no-such-user-x")
    assert "does not exist" in p
