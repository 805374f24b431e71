import base64
import struct

import pytest

from hatchway.core import sshkeys
# an ed25519 public key and the fingerprint `ssh-keygen -lf` prints for it
ED = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C8okWi0dh2l9GKJl"
ED_FP = "SHA256:klL79MZ6iltBiHWlLSBD29e49gH40GwuZCk99dV2JA4"


def test_parse_and_fingerprint_match_ssh_keygen():
    k = sshkeys.parse_line(f"ssh-ed25519 {ED} alice@laptop")
    assert k.type == "ssh-ed25519"
    assert k.comment == "alice@laptop"
    assert k.fingerprint == ED_FP
    assert k.line("restrict") == f"restrict ssh-ed25519 {ED}"


@pytest.mark.parametrize("line,reason", [
    ("ssh-foo AAAA", "unsupported key type"),
    (f"ssh-rsa {ED}", "does not hold a ssh-rsa key"),
    ("ssh-ed25519 not*base64", "not valid base64"),
    ("ssh-ed25519", "expected '<type> <base64>"),
    (f'from="x" ssh-ed25519 {ED}', "key options are not accepted"),
])
def test_bad_keys_have_one_line_reasons(line, reason):
    with pytest.raises(sshkeys.BadKey, match=reason):
        sshkeys.parse_line(line)


def test_truncated_blob_is_refused():
    blob = struct.pack(">I", 100) + b"ssh-ed25519"
    with pytest.raises(sshkeys.BadKey):
        sshkeys.from_parts("ssh-ed25519", base64.b64encode(blob).decode())


def test_control_characters_are_stripped_from_comments():
    k = sshkeys.parse_line(f"ssh-ed25519 {ED} evil\x1b[2Jcomment")
    assert "\x1b" not in k.comment
