"""OpenSSH public keys: parse, validate, normalise, fingerprint.

Everything sshd hands the key helper (`%t %k`) and everything an admin feeds
`hatchway keys add` goes through here, so a malformed or exotic key is refused
in one place with one clear reason.
"""

from __future__ import annotations

from .digest import sha256
from .errors import HatchwayError

import base64
import binascii
import re
import struct

# Plain public key types sshd accepts in authorized_keys.  Certificates are left
# out on purpose: they need cert-authority lines, which this product does not issue.
KEY_TYPES = frozenset({
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
})

_B64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_MAX_BLOB = 16 * 1024


class BadKey(HatchwayError, ValueError):
    """A key that cannot be used, with a one-line reason."""


class PublicKey:
    """An immutable value.  A plain class, not a dataclass: hatchway-keys
    imports this on every key check and `dataclasses` costs it ~8 ms."""
    __slots__ = ("type", "blob", "comment")

    def __init__(self, type: str, blob: bytes, comment: str = ""):
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "blob", blob)
        object.__setattr__(self, "comment", comment)

    def __setattr__(self, name, value):
        raise AttributeError("PublicKey is immutable")

    __delattr__ = __setattr__

    def _tuple(self):
        return (self.type, self.blob, self.comment)

    def __eq__(self, other):
        return self._tuple() == other._tuple() if isinstance(other, PublicKey) else NotImplemented

    def __hash__(self):
        return hash(self._tuple())

    def __repr__(self):
        return f"PublicKey(type={self.type!r}, blob={self.blob!r}, comment={self.comment!r})"

    @property
    def b64(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")

    @property
    def fingerprint(self) -> str:
        """As `ssh-keygen -l` prints it: SHA256:<unpadded base64>."""
        digest = sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    def line(self, options: str = "") -> str:
        """An authorized_keys line (without the comment: sshd does not need it)."""
        core = f"{self.type} {self.b64}"
        return f"{options} {core}" if options else core

    def openssh(self) -> str:
        """The normalised public key as `ssh-keygen` would write it."""
        core = f"{self.type} {self.b64}"
        return f"{core} {self.comment}" if self.comment else core


def from_parts(key_type: str, b64: str, comment: str = "") -> PublicKey:
    if key_type not in KEY_TYPES:
        shown = key_type if re.fullmatch(r"[\w@.+-]{1,64}", key_type) else "(unprintable)"
        raise BadKey(f"unsupported key type {shown}")
    if len(b64) > _MAX_BLOB * 2 or not _B64.match(b64):
        raise BadKey("key data is not valid base64")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("key data is not valid base64") from None
    if not blob or len(blob) > _MAX_BLOB:
        raise BadKey("key data has an impossible length")
    inner = _first_string(blob)
    if inner != key_type.encode():
        raise BadKey(f"key data does not hold a {key_type} key")
    comment = re.sub(r"[\x00-\x1f\x7f]", "", comment).strip()[:200]
    return PublicKey(key_type, blob, comment)


def parse_line(line: str) -> PublicKey:
    """Parse `type base64 [comment]` (an authorized_keys line without options)."""
    fields = line.strip().split(None, 2)
    if len(fields) < 2:
        raise BadKey("expected '<type> <base64> [comment]'")
    if fields[0] not in KEY_TYPES and len(fields) >= 3 and fields[1] in KEY_TYPES:
        raise BadKey("key options are not accepted here; give the bare public key")
    return from_parts(fields[0], fields[1], fields[2] if len(fields) > 2 else "")


def _first_string(blob: bytes) -> bytes | None:
    if len(blob) < 4:
        return None
    (n,) = struct.unpack(">I", blob[:4])
    if n > len(blob) - 4:
        return None
    return blob[4:4 + n]


_RFC4716_BEGIN = "---- BEGIN SSH2 PUBLIC KEY ----"
_RFC4716_END = "---- END SSH2 PUBLIC KEY ----"


def parse_text(text: str) -> PublicKey:
    """Exactly one public key from what an admin hands over: a .pub file (one
    `type base64 [comment]` line; blank and `#` lines ignored) or the RFC 4716
    form `ssh-keygen -e` writes.  A private key is refused by name, so that it
    is not mistaken for a malformed public one."""
    if "PRIVATE KEY-----" in text:
        raise BadKey("this is a private key; give the public key (the .pub file)")
    stripped = text.strip()
    if stripped.startswith(_RFC4716_BEGIN):
        return _parse_rfc4716(stripped)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise BadKey(f"expected exactly one public key, found {len(lines)} lines")
    return parse_line(lines[0])


def _parse_rfc4716(text: str) -> PublicKey:
    lines = text.splitlines()
    if lines[-1].strip() != _RFC4716_END:
        raise BadKey("RFC 4716 key without its END line")
    body, comment, i = [], "", 1
    while i < len(lines) - 1:
        line = lines[i].rstrip()
        while line.endswith("\\") and i + 1 < len(lines) - 1:   # header continuation
            i += 1
            line = line[:-1] + lines[i].rstrip()
        if ":" in line and not body:
            tag, _, value = line.partition(":")
            if tag.strip().lower() == "comment":
                comment = value.strip().strip('"')
        elif line:
            body.append(line.strip())
        i += 1
    b64 = "".join(body)
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("key data is not valid base64") from None
    key_type = (_first_string(blob) or b"").decode("ascii", "replace")
    return from_parts(key_type, b64, comment)
