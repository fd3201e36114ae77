"""Scanning with auth on, end to end: ``dockyard serve`` in auth.mode "basic" scans on
push with the real trivy, which pulls both the image and its vulnerability database (a
repository of the same dockyard) with the short-lived robot credentials the queue asks
``auth/robots.py`` for; the pull policy refuses the users' pulls, never the scanner's."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import trio

from tests.authfixtures import PASSWORDS, write_htpasswd
from tests.e2e.conftest import serving
from tests.e2e.test_scan_e2e import SCANS, found
from tests.scanimages import EXPECTED, VULNERABLE, push_image
from tests.serverproc import DockyardServer, free_port
from tests.tools import trivy_binary
from tests.trivydb import push_trivy_db

pytestmark = pytest.mark.e2e

DB_REPO = "security/trivy-db"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("scan-auth-e2e")
    port = free_port()
    htpasswd = write_htpasswd(root / "htpasswd", {"root": PASSWORDS["root"]})
    config = root / "dockyard.toml"
    config.write_text(
        f"""
[auth]
mode = "basic"
htpasswd = {json.dumps(str(htpasswd))}

[[access]]
users = ["root"]
repositories = ["*"]
actions = ["*"]

[scanning]
scanner = "trivy"
trivy = {json.dumps(trivy_binary())}
db_repository = "127.0.0.1:{port}/{DB_REPO}"
on_push = true
repositories = ["prod/*"]
concurrency = 1
backoff_initial = 0.5
backoff_max = 2.0

[[scanning.policies]]
repositories = ["prod/*"]
block_severity = "CRITICAL"
require_scan = true
"""
    )
    server = DockyardServer(root / "data", port=port, env={"DOCKYARD_CONFIG": str(config)})
    yield from serving(server)


async def test_trivy_pulls_with_robot_credentials(registry: DockyardServer) -> None:
    auth = ("root", PASSWORDS["root"])
    async with httpx.AsyncClient(base_url=registry.url, auth=auth, timeout=30) as client:
        await push_trivy_db(client, registry.url, DB_REPO)
        await push_image(client, registry.url, "prod/app", VULNERABLE)
        with trio.fail_after(120):
            while True:
                r = await client.get(f"{SCANS}/prod/app/scans/{VULNERABLE.digest}")
                doc = r.json()
                if doc["status"] == "done":
                    break
                await trio.sleep(0.2)
        assert found(doc) == EXPECTED
        r = await client.get("/v2/prod/app/manifests/latest")
        assert r.status_code == 403 and "1 finding at or above CRITICAL: CVE-2099-10001" in r.text
        assert (await client.get(f"/v2/prod/app/manifests/{doc['report']}")).status_code == 200
    # Anonymous callers cannot read the scans API nor pull.
    async with httpx.AsyncClient(base_url=registry.url) as anonymous:
        r = await anonymous.get(f"{SCANS}/prod/app/scans/{VULNERABLE.digest}")
        assert r.status_code == 401
