"""HTTPS served by ``dockyard serve`` itself: real clients verifying a test CA (skopeo,
httpx over HTTP/2 and HTTP/1.1), client certificates (optional and required) naming the
user, and a certificate replaced under two workers while a client holds a connection."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.e2e.conftest import TOOL_TIMEOUT, serving
from tests.e2e.logread import access_log, field, logged_request
from tests.imagegen import OCILayout, build_image, make_layer
from tests.pki import ServerFiles, cert_dir, client_cert, server_files, write_server_cert
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e


@dataclass
class PKI:
    files: ServerFiles
    alice: Path  # client certificate, CN=alice, from the server's CA
    stranger: Path  # client certificate from a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    files = server_files(root / "server")
    alice = client_cert(files.ca, root / "alice.pem", "alice", "alice@example.com")
    stranger = client_cert(trustme.CA(), root / "stranger.pem", "alice", "mallory@example.com")
    return PKI(files, alice, stranger)


def tls_env(files: ServerFiles, client_auth: str = "none") -> dict[str, str]:
    return {
        "DOCKYARD_TLS_CERT": str(files.cert),
        "DOCKYARD_TLS_KEY": str(files.key),
        "DOCKYARD_TLS_CLIENT_AUTH": client_auth,
        "DOCKYARD_TLS_CLIENT_CA": str(files.ca_pem) if client_auth != "none" else "",
        "DOCKYARD_TLS_RELOAD_INTERVAL": "0.2",
        "DOCKYARD_LOG_ACCESS": "true",
    }


@pytest.fixture(scope="module")
def https_registry(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[DockyardServer]:
    """HTTPS with optional client certificates."""
    root = tmp_path_factory.mktemp("dockyard-https")
    server = DockyardServer(
        root / "data",
        env=tls_env(pki.files, "optional"),
        ssl_context=pki.files.client_context(),
    )
    yield from serving(server)


@pytest.fixture(scope="module")
def mtls_registry(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[DockyardServer]:
    """HTTPS that refuses clients without a certificate from its CA, and TLS 1.2."""
    root = tmp_path_factory.mktemp("dockyard-mtls")
    server = DockyardServer(
        root / "data",
        env={**tls_env(pki.files, "required"), "DOCKYARD_TLS_MIN_VERSION": "1.3"},
        ssl_context=pki.files.client_context(pki.alice),
    )
    yield from serving(server)


# -- real clients verifying the certificate


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("skopeo"), "--insecure-policy", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)


def test_skopeo_push_and_pull_verifying_the_test_ca(
    https_registry: DockyardServer, pki: PKI, tmp_path: Path
) -> None:
    layout = OCILayout(tmp_path / "layout")
    image = layout.add_image("v1", build_image([make_layer(700), make_layer(701)]))
    certs = cert_dir(tmp_path / "certs", pki.files)
    target = f"docker://{https_registry.host}/tls/app:v1"

    # Without the test CA the certificate is not trusted: verification is on.
    refused = skopeo("copy", layout.ref("v1"), target)
    assert refused.returncode != 0
    assert "certificate" in refused.stderr, refused.stderr

    pushed = skopeo(
        "copy", "--preserve-digests", "--dest-cert-dir", str(certs), layout.ref("v1"), target
    )
    assert pushed.returncode == 0, pushed.stderr + https_registry.log()
    pulled = skopeo("copy", "--src-cert-dir", str(certs), target, f"dir:{tmp_path / 'pulled'}")
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "pulled" / "manifest.json").read_bytes() == image.manifest.data
    for layer in image.layers:
        blob = tmp_path / "pulled" / layer.digest.removeprefix("sha256:")
        assert blob.read_bytes() == layer.blob.data


@pytest.mark.parametrize("http2", [True, False])
def test_httpx_push_and_pull_over_http2_and_http11(
    https_registry: DockyardServer, pki: PKI, http2: bool
) -> None:
    data = f"blob over http2={http2}".encode() * 5000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(
        base_url=https_registry.url, http2=http2, verify=pki.files.client_context()
    ) as client:
        r = client.get("/v2/")
        assert r.status_code == 200
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        r = client.post("/v2/tls/h2/blobs/uploads/")
        assert r.status_code == 202, r.text
        r = client.put(r.headers["location"], params={"digest": digest}, content=data)
        assert r.status_code == 201, r.text
        r = client.get(f"/v2/tls/h2/blobs/{digest}")
        assert r.status_code == 200 and r.content == data
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")


def test_tls_versions(https_registry: DockyardServer, pki: PKI) -> None:
    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        context = pki.files.client_context()
        context.minimum_version = context.maximum_version = version
        conn = http.client.HTTPSConnection("127.0.0.1", https_registry.port, context=context)
        conn.request("GET", "/v2/")
        assert conn.getresponse().status == 200
        assert conn.sock is not None and conn.sock.version() == name
        conn.close()


# -- client certificates


def test_client_certificate_subject_is_the_user(https_registry: DockyardServer, pki: PKI) -> None:
    with httpx.Client(verify=pki.files.client_context(pki.alice)) as client:
        r = client.get(f"{https_registry.url}/v2/", headers={"x-request-id": "with-cert"})
        assert r.status_code == 200
    with httpx.Client(verify=pki.files.client_context()) as client:
        r = client.get(f"{https_registry.url}/v2/", headers={"x-request-id": "without-cert"})
        assert r.status_code == 200
    assert field(logged_request(https_registry, "with-cert"), "user.name") == "alice"
    assert field(logged_request(https_registry, "without-cert"), "user.name") is None
    # A certificate the server's CA did not sign is refused even where one is optional.
    with (
        httpx.Client(verify=pki.files.client_context(pki.stranger)) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get(f"{https_registry.url}/v2/", headers={"x-request-id": "stranger"})
    assert not [e for e in access_log(https_registry) if field(e, "http.request.id") == "stranger"]


def test_required_client_certificate(mtls_registry: DockyardServer, pki: PKI) -> None:
    for context in (pki.files.client_context(), pki.files.client_context(pki.stranger)):
        with httpx.Client(verify=context) as client, pytest.raises(httpx.TransportError):
            client.get(f"{mtls_registry.url}/v2/", headers={"x-request-id": "refused"})
    tls12 = pki.files.client_context(pki.alice)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2  # below tls.min_version
    with httpx.Client(verify=tls12) as client, pytest.raises(httpx.TransportError):
        client.get(f"{mtls_registry.url}/v2/", headers={"x-request-id": "refused"})
    with httpx.Client(verify=pki.files.client_context(pki.alice), http2=True) as client:
        r = client.get(f"{mtls_registry.url}/v2/_catalog", headers={"x-request-id": "mtls-ok"})
        assert r.status_code == 200 and r.http_version == "HTTP/2"
    assert field(logged_request(mtls_registry, "mtls-ok"), "user.name") == "alice"
    assert not [e for e in access_log(mtls_registry) if field(e, "http.request.id") == "refused"]


# -- replacing the certificate


def peer_cert(context: ssl.SSLContext, port: int) -> bytes:
    """The certificate a new connection is shown (raises if ``context`` rejects it)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", "/v2/")
        assert conn.getresponse().status == 200
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        return der
    finally:
        conn.close()


def test_replaced_certificate_is_used_by_new_connections_only(
    tmp_path: Path,
) -> None:
    old = server_files(tmp_path / "certs")
    server = DockyardServer(
        tmp_path / "data", workers=2, env=tls_env(old), ssl_context=old.client_context()
    )
    for _ in serving(server):
        held = http.client.HTTPSConnection("127.0.0.1", server.port, context=old.client_context())
        held.request("GET", "/v2/")
        assert held.getresponse().read() == b"{}"
        sock = held.sock
        old_der = peer_cert(old.client_context(), server.port)

        new_ca = trustme.CA()
        write_server_cert(new_ca.issue_cert("127.0.0.1"), old.cert, old.key)
        new_context = ssl.create_default_context(cadata=new_ca.cert_pem.bytes().decode())
        deadline = time.monotonic() + 15
        seen_new = 0
        while seen_new < 8:  # several new connections: both workers must have reloaded
            assert time.monotonic() < deadline, "the new certificate was not picked up"
            # The held connection keeps working meanwhile (and is not idle long enough
            # for hypercorn's keep-alive timeout).
            held.request("GET", "/v2/")
            assert held.getresponse().read() == b"{}"
            try:
                new_der = peer_cert(new_context, server.port)
            except ssl.SSLCertVerificationError:
                seen_new = 0
                time.sleep(0.1)
                continue
            assert new_der != old_der
            seen_new += 1
        assert held.sock is sock  # the same TLS connection throughout
        assert sock.getpeercert(binary_form=True) == old_der
        with pytest.raises(ssl.SSLCertVerificationError):
            peer_cert(old.client_context(), server.port)
        held.close()


def test_sighup_restarts_workers_with_the_new_certificate(tmp_path: Path) -> None:
    old = server_files(tmp_path / "certs")
    env = {**tls_env(old), "DOCKYARD_TLS_RELOAD_INTERVAL": "0"}  # no file watch: SIGHUP only
    server = DockyardServer(tmp_path / "data", workers=2, env=env, ssl_context=old.client_context())
    for _ in serving(server):
        assert server.proc is not None
        new_ca = trustme.CA()
        write_server_cert(new_ca.issue_cert("127.0.0.1"), old.cert, old.key)
        new_context = ssl.create_default_context(cadata=new_ca.cert_pem.bytes().decode())
        peer_cert(old.client_context(), server.port)  # not watched: still the old one
        # To the whole process group, as a service manager's reload may send it.
        os.killpg(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        seen_new = 0
        while seen_new < 6:
            assert time.monotonic() < deadline, "no worker serves the new certificate"
            assert server.proc.poll() is None, server.log()
            try:
                peer_cert(new_context, server.port)
                seen_new += 1
            except (ssl.SSLError, OSError):
                seen_new = 0
                time.sleep(0.1)
