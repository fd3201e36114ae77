"""A full run of a real server with webhook secrets and client Authorization headers:
no secret, password, token or Authorization value may appear in its log."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import httpx
import pytest

from tests.serverproc import DockyardServer, free_port

pytestmark = pytest.mark.e2e


def test_log_holds_no_secrets(tmp_path: Path) -> None:
    webhook_secret = "whsec-" + secrets.token_hex(16)
    header_token = "hdrtok-" + secrets.token_hex(16)
    client_token = "clitok-" + secrets.token_hex(16)
    password = "pw-" + secrets.token_hex(12)
    receiver = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: deliveries fail
    config = tmp_path / "dockyard.toml"
    config.write_text(
        "[log]\naccess = true\n\n"
        f'[[webhooks]]\nname = "leak"\nurl = "{receiver}"\nsecret = "{webhook_secret}"\n'
        f'headers = {{ Authorization = "Bearer {header_token}" }}\n'
    )
    root = tmp_path / "data"
    env = {"DOCKYARD_CONFIG": str(config), "DOCKYARD_LOG_ACCESS": "true"}
    with DockyardServer(root, env=env) as server:
        auth = {"authorization": f"Bearer {client_token}"}
        with httpx.Client(base_url=server.url, headers=auth) as client:
            data = b"layer"
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            r = client.post("/v2/leak/blobs/uploads/", params={"digest": digest}, content=data)
            assert r.status_code == 201, r.text
            client.get("/v2/leak/blobs/" + digest, auth=("alice", password))
            client.get("/v2/_catalog?n=" + "9" * 30, headers={"x-api-key": password})
            client.put("/v2/leak/manifests/v1", content=b"{" * 10, headers=auth)
    log = server.log_path.read_text(errors="replace")
    # The lines most likely to leak were written: else the test would prove nothing.
    assert "leak: event" in log, log[-2000:]
    for value in (webhook_secret, header_token, client_token, password):
        assert value not in log, f"{value[:6]}... leaked into the log"
