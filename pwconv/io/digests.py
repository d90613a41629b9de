"""Digests for provenance and names, without hashlib's start-up cost where the data is small.

hashlib loads OpenSSL as it is imported: 5 ms of every run's start. Python's own sha256 is
about 7x slower per byte than OpenSSL's, and still the quicker for a bank of a few hundred
KiB (measured: 1.6 ms for 256 KiB).
"""

from __future__ import annotations

from typing import Any

_OWN_BYTES = 256 << 10

# Python's own implementations: the module names of CPython 3.11, then of 3.12 and later.
_OWN = {"sha256": ("_sha256", "_sha2"), "sha1": ("_sha1",)}


def new(name: str, size: int) -> Any:
    """A hash object of ``name`` (sha256, sha1) for ``size`` bytes of data: Python's own for
    small data, OpenSSL's (through hashlib) for a model file. Both give the same digest."""
    if size <= _OWN_BYTES:
        for module in _OWN[name]:
            try:
                return getattr(__import__(module), name)()
            except ImportError:
                continue
    import hashlib

    return hashlib.new(name)


def sha256(size: int) -> Any:
    return new("sha256", size)


def hex_digest(name: str, data: bytes) -> str:
    """The ``name`` digest of ``data`` in hex.

    >>> hex_digest("sha256", b"abc")[:16], hex_digest("sha1", b"abc")[:16]
    ('ba7816bf8f01cfea', 'a9993e364706816a')
    """
    digest = new(name, len(data))
    digest.update(data)
    return str(digest.hexdigest())


def sha1_hex(data: bytes) -> str:
    return hex_digest("sha1", data)


def sha256_hex(data: bytes) -> str:
    return hex_digest("sha256", data)
