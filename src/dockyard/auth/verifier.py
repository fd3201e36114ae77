"""Verifying bearer tokens: the built-in service's and an external issuer's.

A token is accepted only if its header names an allowed asymmetric algorithm (never
``none``, never HMAC: a public key can then not be abused as a shared secret) that fits
the key's type, its signature verifies with a trusted key, and iss, aud, exp and nbf
(with ``leeway``) are right. The key is the leaf certificate's when the header carries
an ``x5c`` chain, root certificates are configured and the chain verifies to one of
them; otherwise the one ``kid`` names in the key ring (the built-in key, the external
issuer's JWKS, the root certificates' own keys). A ``jwk`` in the header is never
trusted.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store
from cryptography.x509.verification import VerificationError as ChainError

from dockyard.auth import ANONYMOUS, Identity, Scope
from dockyard.auth.jwks import KeyRing
from dockyard.auth.keys import PublicKey
from dockyard.auth.scopes import ResourceScope, covers, parse_access_claim

_MAX_TOKEN_BYTES = 16 * 1024
# Verified tokens remembered per process, and for how long at most (see TokenVerifier).
VERIFIED_ENTRIES = 10_000
VERIFIED_SECONDS = 60.0
_MAX_CHAIN = 5
_CURVE_OF = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class TokenInvalid(Exception):
    """The bearer token is not acceptable; the message says why (for logs and
    ``error_description``, never the token itself)."""


@dataclass(frozen=True)
class VerifiedToken:
    identity: Identity
    access: tuple[ResourceScope, ...]

    def allows(self, scope: Scope) -> bool:
        return covers(self.access, scope)

    @functools.cached_property
    def bearer(self) -> Identity:
        """Who a request carrying this token is to the Authorizer: the subject, with the
        token's repository grants in place of the rules and its registry-wide grants
        ("catalog"). Built once per verified token (the verifier remembers the
        VerifiedToken), not once per request."""
        granted = tuple(
            (s.name, frozenset(s.actions)) for s in self.access if s.type == "repository"
        )
        registry = frozenset(s.name for s in self.access if s.type == "registry")
        return Identity(self.identity.name, "token", granted, registry)


def key_fits(alg: str, key: PublicKey) -> bool:
    """Is ``key`` of the type ``alg`` signs with (no algorithm confusion)?"""
    if alg in _CURVE_OF:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _CURVE_OF[alg]
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def load_roots(path: str) -> list[x509.Certificate]:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


class TokenVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        algorithms: list[str],
        leeway: int,
        keys: KeyRing,
        roots: list[x509.Certificate] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = [a for a in algorithms if a != "none" and not a.startswith("HS")]
        self.leeway = leeway
        self.keys = keys
        self._roots = Store(roots) if roots else None
        self._clock = clock
        # Tokens verified recently, by the SHA-256 of their text: (good until, result).
        # A client sends the same token with every request until it expires, and checking
        # an ES256 signature cost about 300 CPU-us per request (perf/auth.py, 0.64x the
        # rate of auth off). An entry lives until the token's exp (plus leeway) but at most
        # VERIFIED_SECONDS, so a key taken out of the JWKS stops its tokens within that.
        self._verified: OrderedDict[bytes, tuple[float, VerifiedToken]] = OrderedDict()

    async def verify(self, token: str) -> VerifiedToken:
        """The identity and granted access of ``token``; raises TokenInvalid."""
        if len(token) > _MAX_TOKEN_BYTES:
            raise TokenInvalid("token too long")
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            if cached[0] > self._clock():
                return cached[1]
            del self._verified[digest]
        claims = await self._verified_claims(token)
        result = self._result(claims)
        exp = claims["exp"]
        if isinstance(exp, (int, float)):
            now = self._clock()
            self._verified[digest] = (min(exp + self.leeway, now + VERIFIED_SECONDS), result)
            if len(self._verified) > VERIFIED_ENTRIES:
                self._verified.popitem(last=False)
        return result

    async def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise TokenInvalid(f"malformed token: {e}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenInvalid(f"algorithm {str(alg)[:20]!r} is not accepted")
        key = await self._key_for(header)
        if not key_fits(alg, key):
            raise TokenInvalid(f"the signing key does not fit algorithm {alg}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as e:
            raise TokenInvalid(str(e)) from None
        return claims

    def _result(self, claims: dict[str, Any]) -> VerifiedToken:
        subject = claims.get("sub", "")
        if not isinstance(subject, str):
            raise TokenInvalid("sub must be a string")
        access = parse_access_claim(claims.get("access"))
        if access is None:
            raise TokenInvalid("malformed access claim")
        return VerifiedToken(Identity(subject) if subject else ANONYMOUS, access)

    async def _key_for(self, header: dict[str, Any]) -> PublicKey:
        chain = header.get("x5c")
        if chain is not None and self._roots is not None:
            return self._chain_key(chain)
        # Without roots a chain is ignored: the kid must name a trusted key.
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise TokenInvalid("token names no key id")
        key = await self.keys.key(kid)
        if key is None:
            raise TokenInvalid(f"unknown key id {kid[:64]!r}")
        return key

    def _chain_key(self, chain: object) -> PublicKey:
        if not isinstance(chain, list) or not 1 <= len(chain) <= _MAX_CHAIN:
            raise TokenInvalid("x5c must be a list of 1 to 5 certificates")
        try:
            certificates = [
                x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain
            ]
        except (TypeError, ValueError, binascii.Error):
            raise TokenInvalid("x5c holds a malformed certificate") from None
        assert self._roots is not None
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        # Token signing certificates are not TLS client certificates: no EKU is required.
        verifier = (
            PolicyBuilder()
            .store(self._roots)
            .time(now)
            .max_chain_depth(_MAX_CHAIN)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(certificates[0], certificates[1:])
        except ChainError as e:
            raise TokenInvalid(f"x5c chain does not verify to a trusted root: {e}") from None
        key = certificates[0].public_key()
        if not isinstance(
            key,
            ec.EllipticCurvePublicKey
            | rsa.RSAPublicKey
            | ed25519.Ed25519PublicKey
            | ed448.Ed448PublicKey,
        ):
            raise TokenInvalid("x5c leaf key type is not supported")
        return key
