"""SHA-256 for the key helper's hot path.

hashlib's import loads OpenSSL (~2 ms of every hatchway-keys run); CPython's
own built-in implementation gives the same digests without that.
"""

try:
    from _sha256 import sha256          # CPython <= 3.11: built in
except ImportError:                     # pragma: no cover - other interpreters
    try:
        from _sha2 import sha256        # CPython >= 3.12
    except ImportError:
        from hashlib import sha256

__all__ = ["sha256"]
