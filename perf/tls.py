"""TLS for perf runs (``python -m perf.run ... --tls`` / ``--http2``): a CA and a server
certificate for 127.0.0.1 made at run time, and the client side that verifies against it.

The certificates are made with ``cryptography`` (a dependency of dockyard, so present
wherever perf runs; trustme is only in the test extras) into a temporary directory the
run removes: no key is ever written into the repository.

:class:`ClientTLS` is what a client needs: a verifying context and the protocol to insist
on. Every connection checks what ALPN chose and raises :class:`ProtocolMismatch` when the
server did not pick it (a run asked for HTTP/2 must never measure HTTP/1.1 silently).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

H2 = "h2"
HTTP11 = "http/1.1"


class ProtocolMismatch(ConnectionError):
    """The server's TLS handshake chose another protocol than the run asked for."""


@dataclass(frozen=True)
class ServerTLS:
    """PEM files for a server (``cert`` is the leaf then the CA) and the CA clients trust."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClientTLS:
    """A client context trusting ``ca`` that offers only ``protocol`` by ALPN."""

    ca: Path
    http2: bool = False

    @property
    def protocol(self) -> str:
        return H2 if self.http2 else HTTP11

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.set_alpn_protocols([self.protocol])
        return context

    def check(self, sock: ssl.SSLSocket) -> None:
        """Raise :class:`ProtocolMismatch` unless the handshake chose ``protocol`` (for
        HTTP/1.1 a server without ALPN will do: RFC 7301 leaves it at HTTP/1.1)."""
        chosen = sock.selected_alpn_protocol()
        if chosen != self.protocol and not (chosen is None and not self.http2):
            raise ProtocolMismatch(
                f"asked for {self.protocol} by ALPN, the server chose {chosen or 'nothing'}"
            )


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(directory: Path) -> ServerTLS:
    """A new CA and a server certificate for 127.0.0.1 and localhost (ECDSA P-256, as
    certbot and cert-manager issue by default), valid for a day, written into
    ``directory`` (key readable by its owner only)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    valid = (now - dt.timedelta(hours=1), now + dt.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("dockyard perf CA"))
        .issuer_name(_name("dockyard perf CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = ServerTLS(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.cert.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    files.key.touch(mode=0o600)
    files.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files
