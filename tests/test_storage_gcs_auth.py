"""The gcs driver's sign-in: a service account key file made at test time, its OAuth token
endpoint a loopback stand-in (as Google's cannot be reached from tests), which also plays
the bucket so the bearer token each request carries can be seen."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dockyard.storage.base import StorageError
from dockyard.storage.gcs import GcsStore
from dockyard.storage.gcs_client import SCOPE
from tests.serverthread import ServerThread

CLIENT_EMAIL = "registry@test-project.iam.gserviceaccount.com"


class GoogleStandIn(BaseHTTPRequestHandler):
    """POST /token answers a JWT-bearer grant; GET of the object list records the bearer."""

    lock = threading.Lock()
    assertions: ClassVar[list[str]] = []
    bearers: ClassVar[list[str]] = []
    token_status: ClassVar[int] = 200

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        with self.lock:
            self.assertions.append(form["assertion"][0])
        if self.token_status != 200:
            self._answer(self.token_status, {"error": "invalid_grant"})
            return
        self._answer(200, {"access_token": "token-1", "expires_in": 3600, "token_type": "Bearer"})

    def do_GET(self) -> None:
        with self.lock:
            self.bearers.append(self.headers.get("Authorization", ""))
        self._answer(200, {"kind": "storage#objects"})


@pytest.fixture
def google() -> Iterator[ServerThread]:
    GoogleStandIn.assertions.clear()
    GoogleStandIn.bearers.clear()
    GoogleStandIn.token_status = 200
    with ServerThread(GoogleStandIn) as server:
        yield server


@pytest.fixture
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_file(tmp_path: Path, key: rsa.RSAPrivateKey, token_uri: str) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "test-project",
                "private_key_id": "key-1",
                "private_key": pem,
                "client_email": CLIENT_EMAIL,
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return path


async def test_service_account_token_is_fetched_once_and_sent(
    google: ServerThread, key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{google.port}"
    path = key_file(tmp_path, key, f"{base}/token")
    store = GcsStore(bucket="registry", endpoint=base, credentials_file=str(path))
    await store.check()
    await store.check()
    await store.aclose()

    assert GoogleStandIn.bearers == ["Bearer token-1", "Bearer token-1"]
    (assertion,) = GoogleStandIn.assertions  # the token is kept until it expires
    # Signed by the file's key (google-auth names Google's token endpoint as audience).
    claims = jwt.decode(
        assertion, key.public_key(), algorithms=["RS256"], options={"verify_aud": False}
    )
    assert claims["iss"] == CLIENT_EMAIL
    assert claims["scope"] == SCOPE


async def test_refused_sign_in_is_a_storage_error_without_secrets(
    google: ServerThread, key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    GoogleStandIn.token_status = 400
    base = f"http://127.0.0.1:{google.port}"
    path = key_file(tmp_path, key, f"{base}/token")
    store = GcsStore(bucket="registry", endpoint=base, credentials_file=str(path))
    with pytest.raises(StorageError) as caught:
        await store.check()
    await store.aclose()
    message = str(caught.value)
    assert "access token" in message
    for secret in ("PRIVATE KEY", CLIENT_EMAIL, "key-1", str(path)):
        assert secret not in message
    assert GoogleStandIn.bearers == []  # nothing was sent without a token


async def test_missing_default_credentials_are_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No key file and no endpoint: Application Default Credentials, here a
    # GOOGLE_APPLICATION_CREDENTIALS naming no file, which fails before any request.
    missing = tmp_path / "no-such-key.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(missing))
    store = GcsStore(bucket="registry")
    with pytest.raises(StorageError, match="access token") as caught:
        await store.check()
    assert str(missing) not in str(caught.value)
    await store.aclose()
