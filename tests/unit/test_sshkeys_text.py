"""sshkeys.parse_text: what `hatchway keys add` and the admin API accept as
"one public key"."""

import textwrap

import pytest

from hatchway.core import sshkeys
from .test_sshkeys import ED, ED_FP


def test_a_pub_file_with_comments_blank_lines_and_crlf():
    k = sshkeys.parse_text(f"# alice's laptop\r\n\r\n  ssh-ed25519 {ED} alice@laptop  \r\n")
    assert (k.fingerprint, k.comment) == (ED_FP, "alice@laptop")
    assert k.openssh() == f"ssh-ed25519 {ED} alice@laptop"


def test_the_rfc4716_form_ssh_keygen_e_writes():
    body = "\n".join(ED[i:i + 70] for i in range(0, len(ED), 70))
    text = textwrap.dedent("""\
        ---- BEGIN SSH2 PUBLIC KEY ----
        Comment: "256-bit ED25519, converted by alice@laptop from Op\\
        enSSH"
        {body}
        ---- END SSH2 PUBLIC KEY ----
        """).format(body=body)
    k = sshkeys.parse_text(text)
    assert (k.type, k.fingerprint) == ("ssh-ed25519", ED_FP)
    assert k.comment == "256-bit ED25519, converted by alice@laptop from OpenSSH"


@pytest.mark.parametrize("text,reason", [
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
     "-----END OPENSSH PRIVATE KEY-----\n", "private key"),
    (f"ssh-ed25519 {ED} a\nssh-ed25519 {ED} b\n", "exactly one public key, found 2"),
    ("", "exactly one public key, found 0"),
    ("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n", "END line"),
    (f'restrict ssh-ed25519 {ED}', "options are not accepted"),
])
def test_what_is_refused(text, reason):
    with pytest.raises(sshkeys.BadKey, match=reason):
        sshkeys.parse_text(text)
