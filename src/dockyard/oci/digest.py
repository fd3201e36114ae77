"""Digests and streaming hashers.

A digest is ``algorithm ":" encoded`` (OCI image-spec descriptor.md). dockyard accepts the
three registered algorithms: sha256 (64 lowercase hex), sha512 (128 lowercase hex) and
blake3 (64 lowercase hex).

Hashers are resumable: a chunked upload may continue in another worker process or after a
restart, so the running state is saved with the upload session after every PATCH.

- sha256 and sha512 use OpenSSL's low-level ``SHA256_CTX``/``SHA512_CTX`` through ctypes.
  The state is a plain C struct, so saving it is a byte copy (112 and 216 bytes). We do this
  by hand because ``hashlib`` cannot export state and the ``rehash`` package refuses to run
  on OpenSSL 3 (measured: NotImplementedError). Speed equals hashlib's (same SHA-NI code).
- blake3 (the ``blake3`` package) cannot export its state: ``state()`` returns None and a
  resumed upload is re-hashed from the stored bytes (the recovery path).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from dataclasses import dataclass
from typing import Protocol

import blake3 as _blake3


class DigestError(ValueError):
    """A digest string is malformed or names an algorithm dockyard does not support."""


_ENCODED = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
    "blake3": re.compile(r"[a-f0-9]{64}"),
}
# The image-spec grammar, used to tell "malformed" from "well-formed but unsupported".
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")

ALGORITHMS = tuple(_ENCODED)
CANONICAL = "sha256"


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    encoded: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        if len(text) > 256 or not _GRAMMAR.fullmatch(text):
            raise DigestError(f"malformed digest {text[:80]!r}")
        algorithm, _, encoded = text.partition(":")
        pattern = _ENCODED.get(algorithm)
        if pattern is None:
            raise DigestError(f"unsupported digest algorithm {algorithm!r}")
        if not pattern.fullmatch(encoded):
            raise DigestError(f"malformed {algorithm} digest {text[:80]!r}")
        return cls(algorithm, encoded)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


def is_supported(algorithm: str) -> bool:
    return algorithm in _ENCODED


class Hasher(Protocol):
    algorithm: str

    def update(self, data: bytes) -> None: ...

    def digest(self) -> Digest:
        """The digest of everything so far; the hasher stays usable."""
        ...

    def state(self) -> bytes | None:
        """Serialized state to resume later, or None if this algorithm cannot export it."""
        ...


def _load_libcrypto() -> ctypes.CDLL:
    path = ctypes.util.find_library("crypto")
    if path is None:  # pragma: no cover - every Python with hashlib links libcrypto
        raise RuntimeError("libcrypto (OpenSSL) not found; install libssl3")
    lib = ctypes.CDLL(path)
    for name in ("SHA256", "SHA512"):
        getattr(lib, f"{name}_Init").argtypes = [ctypes.c_void_p]
        getattr(lib, f"{name}_Update").argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        getattr(lib, f"{name}_Final").argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        for suffix in ("Init", "Update", "Final"):
            getattr(lib, f"{name}_{suffix}").restype = ctypes.c_int
    return lib


_libcrypto: ctypes.CDLL | None = None


def _crypto() -> ctypes.CDLL:
    global _libcrypto  # loaded once per process, on first use (not at import time)
    if _libcrypto is None:
        _libcrypto = _load_libcrypto()
    return _libcrypto


class _OpenSSLHasher:
    """A SHA-2 context held in a ctypes buffer; state() is a copy of the struct."""

    _ctx_size = 0
    _out_size = 0
    _prefix = ""

    def __init__(self, state: bytes | None = None) -> None:
        lib = _crypto()
        self._update = getattr(lib, f"{self._prefix}_Update")
        self._final = getattr(lib, f"{self._prefix}_Final")
        if state is None:
            self._ctx = ctypes.create_string_buffer(self._ctx_size)
            getattr(lib, f"{self._prefix}_Init")(self._ctx)
        else:
            if len(state) != self._ctx_size:
                raise ValueError(f"bad saved {self.algorithm} state ({len(state)} bytes)")
            self._ctx = ctypes.create_string_buffer(state, self._ctx_size)

    algorithm = ""

    def update(self, data: bytes) -> None:
        if data:
            self._update(self._ctx, bytes(data), len(data))

    def digest(self) -> Digest:
        ctx = ctypes.create_string_buffer(self._ctx.raw, self._ctx_size)
        out = ctypes.create_string_buffer(self._out_size)
        self._final(out, ctx)
        return Digest(self.algorithm, out.raw.hex())

    def state(self) -> bytes | None:
        return bytes(self._ctx.raw)


class Sha256(_OpenSSLHasher):
    algorithm = "sha256"
    _prefix = "SHA256"
    _ctx_size = 112  # sizeof(SHA256_CTX): 8+2+16 words of 32 bits, num, md_len
    _out_size = 32


class Sha512(_OpenSSLHasher):
    algorithm = "sha512"
    _prefix = "SHA512"
    _ctx_size = 216  # sizeof(SHA512_CTX)
    _out_size = 64


class Blake3:
    algorithm = "blake3"

    def __init__(self) -> None:
        self._h = _blake3.blake3()

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> Digest:
        return Digest("blake3", self._h.hexdigest())

    def state(self) -> bytes | None:
        return None


def new_hasher(algorithm: str, state: bytes | None = None) -> Hasher:
    """A hasher for ``algorithm``, resumed from ``state`` when given."""
    if algorithm == "sha256":
        return Sha256(state)
    if algorithm == "sha512":
        return Sha512(state)
    if algorithm == "blake3":
        if state is not None:
            raise ValueError("blake3 state cannot be resumed")
        return Blake3()
    raise DigestError(f"unsupported digest algorithm {algorithm!r}")


def digest_of(data: bytes, algorithm: str = CANONICAL) -> Digest:
    h = new_hasher(algorithm)
    h.update(data)
    return h.digest()
