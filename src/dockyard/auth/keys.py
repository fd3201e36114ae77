"""The token signing key: loaded from a PEM file or generated once, its key id and JWKS.

A generated key is an EC P-256 key (ES256: short tokens, fast signatures, and every
client and registry that speaks the token protocol verifies it). It is kept in the
metadata store's shared secrets, not on disk, so every worker of every instance signs
with the one key without sharing a disk: the first process to start stores its key, the
others get that one. The key id is the RFC 7638 thumbprint of the public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from dockyard.auth import SharedSecret

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

GENERATED_KEY_NAME = "token-signing-key"  # its name among the store's shared secrets
LEGACY_KEY_FILE = "token-signing-key.pem"  # where versions before the shared store kept it
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# The members RFC 7638 hashes, per key type.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


class KeyError_(ValueError):
    """A key file that cannot serve as a token signing key."""


def public_jwk(key: PublicKey) -> dict[str, Any]:
    """The public JWK (kty and key members only) of ``key``."""
    jwk: dict[str, Any]
    if isinstance(key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key, as_dict=True)
    return {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url without padding)."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def libtrust_kid(key: PublicKey) -> str:
    """The key id docker's libtrust gives a key, which token servers built for
    distribution (docker_auth, GitLab) put in ``kid``: SHA-256 of the DER public key,
    first 240 bits, base32 in 12 groups of 4 joined by ':'."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def certificate_keys(certificates: list[x509.Certificate]) -> dict[str, PublicKey]:
    """The signing keys of ``certificates`` by both key id forms (RFC 7638 and libtrust):
    distribution trusts tokens signed by a root certificate's own key, named by kid."""
    out: dict[str, PublicKey] = {}
    for certificate in certificates:
        key = certificate.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            out[libtrust_kid(key)] = key
            out[thumbprint(public_jwk(key))] = key
    return out


def algorithm_for(key: PublicKey) -> str:
    """The JWS algorithm a key of this type signs with."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise KeyError_(f"EC curve {key.curve.name} has no JWS algorithm")
        return alg
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    return "EdDSA"


@dataclass(frozen=True)
class SigningKey:
    private: PrivateKey
    algorithm: str
    kid: str
    jwk: dict[str, Any]  # public, with kid, alg and use

    @classmethod
    def from_private(cls, private: PrivateKey) -> SigningKey:
        public = private.public_key()
        jwk = public_jwk(public)
        kid = thumbprint(jwk)
        alg = algorithm_for(public)
        return cls(private, alg, kid, {**jwk, "kid": kid, "alg": alg, "use": "sig"})


def jwks_document(keys: list[SigningKey]) -> dict[str, Any]:
    return {"keys": [k.jwk for k in keys]}


def load_signing_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyError_(f"cannot read token signing key {str(path)!r}: {e.strerror}") from None
    return parse_signing_key(data, repr(str(path)))


def parse_signing_key(data: bytes, source: str) -> SigningKey:
    """The signing key in PEM ``data``; ``source`` names where it came from in errors."""
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyError_(f"{source} is not an unencrypted PEM private key: {e}") from None
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size < 2048:
        raise KeyError_(f"{source}: RSA keys need at least 2048 bits")
    signing_types = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if not isinstance(private, signing_types):
        raise KeyError_(f"{source}: use an EC, RSA or Ed25519 key")
    return SigningKey.from_private(private)


def load_or_generate(configured: str, shared_secret: SharedSecret, data_dir: Path) -> SigningKey:
    """The configured key file, else the generated key shared through the metadata store.

    A generated key an earlier version left in ``data_dir`` is offered first, so tokens
    it issued stay valid across the upgrade; else a new EC P-256 key."""
    if configured:
        return load_signing_key(Path(configured))
    try:
        candidate = (data_dir / LEGACY_KEY_FILE).read_bytes()
        parse_signing_key(candidate, "the old generated key")
    except (FileNotFoundError, KeyError_):
        candidate = generate_pem()
    pem = shared_secret(GENERATED_KEY_NAME, candidate)
    return parse_signing_key(pem, "the generated signing key in the metadata store")


def generate_pem() -> bytes:
    """A new EC P-256 private key, PKCS#8 PEM."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
