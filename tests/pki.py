"""Test certificates made at test time with trustme: a CA, a server certificate for
127.0.0.1, client certificates, written as the PEM files servers and clients read."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class ServerFiles:
    ca: trustme.CA
    ca_pem: Path  # the CA clients trust
    cert: Path  # the server's chain
    key: Path
    combined: Path  # chain and key in one file (haproxy's crt)

    def client_context(self, client_cert: Path | None = None) -> ssl.SSLContext:
        """A client-side context trusting this CA, with a client certificate if given."""
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        if client_cert is not None:
            context.load_cert_chain(str(client_cert))
        return context


def server_files(directory: Path, ca: trustme.CA | None = None) -> ServerFiles:
    """A CA (new unless given) and a server certificate for 127.0.0.1 in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = ServerFiles(
        ca,
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
        directory / "combined.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_pem))
    write_server_cert(issued, files.cert, files.key)
    issued.private_key_and_cert_chain_pem.write_to_path(str(files.combined))
    return files


def write_server_cert(issued: trustme.LeafCert, cert: Path, key: Path) -> None:
    """Replace the files in place, key first: the server may look at any moment."""
    key.write_bytes(issued.private_key_pem.bytes())
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))


def client_cert(ca: trustme.CA, path: Path, common_name: str, email: str) -> Path:
    """A client certificate with subject CN=common_name: key and chain in ``path`` (one
    PEM), and apart in ``<path>.key`` and ``<path>.cert`` (the containers tools' form)."""
    issued = ca.issue_cert(email, common_name=common_name)
    issued.private_key_and_cert_chain_pem.write_to_path(str(path))
    issued.private_key_pem.write_to_path(f"{path}.key")
    path.with_name(path.name + ".cert").write_bytes(
        b"".join(pem.bytes() for pem in issued.cert_chain_pems)
    )
    return path


def cert_dir(directory: Path, files: ServerFiles, client: Path | None = None) -> Path:
    """A containers-style certificate directory (skopeo --cert-dir): the CA as ca.crt,
    and a client certificate (from ``client_cert``) as client.cert and client.key."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(files.ca_pem.read_bytes())
    if client is not None:
        (directory / "client.key").write_bytes(Path(f"{client}.key").read_bytes())
        (directory / "client.cert").write_bytes(Path(f"{client}.cert").read_bytes())
    return directory
