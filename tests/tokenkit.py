"""Helpers for the token tests: keys, a certificate authority and a rules stand-in.

Every key and certificate is made at test time with ``cryptography``. The access rules
and users here are the token service's inputs (the access part's ``AccessRules`` and
``Users`` take their place at merge), small and real, not the component under test.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dockyard.auth import Identity
from dockyard.auth.scopes import ResourceScope

# user -> repository -> actions; None is anonymous.
RULES: dict[str | None, dict[str, set[str]]] = {
    "alice": {"team/app": {"pull", "push"}, "public/app": {"pull"}},
    "admin": {"team/app": {"pull", "push", "delete"}},
    None: {"public/app": {"pull"}},
}
PASSWORDS = {"alice": "wonderland", "admin": "s3cret-admin"}


def grant(identity: Identity, scope: ResourceScope) -> frozenset[str]:
    if scope.type == "registry":
        return frozenset({"*"}) if identity.name == "admin" else frozenset()
    if scope.type != "repository" or scope.resource_class:
        return frozenset()
    return frozenset(RULES.get(identity.name, {}).get(scope.name, set()))


async def verify_password(user: str, password: str) -> bool:
    expected = PASSWORDS.get(user)
    return expected is not None and hmac.compare_digest(expected, password)


async def user_exists(user: str) -> bool:
    return user in PASSWORDS


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, object], claims: dict[str, object]) -> str:
    """header.claims. with no signature, for hand-made hostile tokens."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}."


def hmac_token(header: dict[str, object], claims: dict[str, object], secret: bytes) -> str:
    """A token signed with HMAC-SHA256 by hand: PyJWT refuses to make the forgeries."""
    signing_input = unsigned_token(header, claims)[:-1]
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def der_b64(self) -> str:
        return base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issued | None,
    ca: bool,
    path_length: int | None = None,
    ip: str | None = None,
) -> Issued:
    now = datetime.datetime.now(datetime.UTC)
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.certificate.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return Issued(key, builder.sign(signer_key, hashes.SHA256()))


def certificate_authority(name: str) -> Issued:
    return _certificate(name, ec.generate_private_key(ec.SECP256R1()), None, ca=True)


def intermediate(name: str, root: Issued) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    return _certificate(name, key, root, ca=True, path_length=0)


def leaf(name: str, issuer: Issued) -> Issued:
    return _certificate(name, ec.generate_private_key(ec.SECP256R1()), issuer, ca=False)


def server_certificate(issuer: Issued, ip: str = "127.0.0.1") -> Issued:
    """A TLS server certificate for ``ip`` (loopback)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _certificate(ip, key, issuer, ca=False, ip=ip)
