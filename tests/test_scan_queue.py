"""The scan queue's mechanics in-process (``scanning/queue.py``): on-push rows, leases,
backoff, restarts, rescans, reports as referrers, the scans API, pull policies.

The scanner here is a small one written for the test that follows the ``Scanner``
protocol (findings chosen per digest, failures on demand): these tests are about the
queue, not about trivy (``tests/e2e/test_scan_trivy.py`` scans with the real one).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from dockyard.cli import main
from dockyard.config import ScanPolicy, Settings
from dockyard.config.model import QuotaSettings
from dockyard.scanning.report import REPORT_ARTIFACT_TYPE, SBOM_ARTIFACT_TYPE
from dockyard.scanning.scanner import Finding, ScanFailed, ScanRequest, ScanResult
from dockyard.services import Services, build
from tests.conftest import (
    OCI_LAYER,
    assert_error,
    descriptor,
    digest_of,
    events,
    image_manifest,
    index_manifest,
    make_client,
    make_settings,
    push_blob,
    push_image,
    put_manifest,
)

SCANS = "/v2/_dockyard/repositories"
HIGH = Finding("CVE-2024-1", "HIGH", "musl", "1.2.3-r0", "1.2.3-r5", "a made-up flaw")
LOW = Finding("CVE-2024-2", "LOW", "zlib", "1.0", "", "")
REPORT_TYPE = "application/vnd.test.report+json"


class TestScanner:
    """The ``Scanner`` protocol with findings per repository, failures on demand."""

    name = "test"
    __test__ = False

    def __init__(self) -> None:
        self.findings: dict[str, tuple[Finding, ...]] = {}
        self.failures: list[ScanFailed] = []  # raised, in order, before scanning again
        self.version = "db-1"
        self.scanned: list[ScanRequest] = []
        self.times: list[float] = []  # anyio.current_time() of each scan
        self.closed = False
        self.padding = 0  # bytes added to each report

    async def scan(self, request: ScanRequest) -> ScanResult:
        self.scanned.append(request)
        self.times.append(anyio.current_time())
        if self.failures:
            raise self.failures.pop(0)
        findings = self.findings.get(request.repository, ())
        report = json.dumps(
            {"digest": request.digest, "n": len(findings), "pad": "x" * self.padding}
        ).encode()
        sbom = b'{"bomFormat": "CycloneDX"}' if request.sbom else None
        return ScanResult(
            "Test 1.0",
            self.version,
            1_760_000_000.0,
            findings,
            report,
            REPORT_TYPE,
            sbom,
            "application/vnd.cyclonedx+json" if sbom else None,
        )

    async def database_version(self) -> str | None:
        return self.version

    async def aclose(self) -> None:
        self.closed = True


def scan_settings(root: Path, **changes: Any) -> Settings:
    settings = make_settings(root)
    s = settings.scanning
    s.on_push = True
    s.backoff_initial = 0.05
    s.backoff_max = 0.2
    s.rescan_interval = 0
    s.quiet = 0.05
    for key, value in changes.items():
        setattr(s, key, value)
    return settings


@asynccontextmanager
async def running(settings: Settings, scanner: TestScanner) -> AsyncIterator[Services]:
    svc = build(settings, scanner=scanner)
    try:
        async with anyio.create_task_group() as nursery:
            # (the ignore: until services.py takes an anyio task group, serve-asyncio's)
            await svc.start(nursery)  # type: ignore[arg-type, unused-ignore]
            yield svc
            await svc.stop()
            nursery.cancel_scope.cancel()
    finally:
        svc.meta.close()


async def wait_scan(
    client: httpx.AsyncClient,
    repo: str,
    digest: str,
    done: Callable[[dict[str, Any]], bool] = lambda d: d["status"] == "done",
    timeout: float = 10,
) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            r = await client.get(f"{SCANS}/{repo}/scans/{digest}")
            assert r.status_code == 200, r.text
            doc: dict[str, Any] = r.json()
            if done(doc):
                return doc
            await anyio.sleep(0.02)


async def test_a_push_is_scanned_and_its_report_is_a_referrer(tmp_path: Path) -> None:
    scanner = TestScanner()
    scanner.findings["team/app"] = (HIGH, LOW)
    async with running(scan_settings(tmp_path), scanner) as svc, make_client(svc) as client:
        image = await push_image(client, "team/app", "v1")
        doc = await wait_scan(client, "team/app", image.digest)
        assert doc["summary"] == {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 0, "LOW": 1, "UNKNOWN": 0}
        assert [f["id"] for f in doc["findings"]] == ["CVE-2024-1", "CVE-2024-2"]
        assert doc["findings"][0] == {
            "id": "CVE-2024-1",
            "severity": "HIGH",
            "package": "musl",
            "installed": "1.2.3-r0",
            "fixed": "1.2.3-r5",
            "title": "a made-up flaw",
        }
        assert doc["scanner"] == "Test 1.0" and doc["dbUpdated"] == "2025-10-09T08:53:20Z"
        assert doc["attempts"] == 1 and doc["lastError"] is None and doc["platforms"] == []
        assert doc["policy"] == {"allowed": True, "reason": None}
        # The scanner was asked to pull this image from this registry.
        (request,) = scanner.scanned
        assert (request.repository, request.digest) == ("team/app", image.digest)
        # The report: a referrer of the image, its layer the scanner's bytes.
        r = await client.get(f"/v2/team/app/referrers/{image.digest}")
        (ref,) = r.json()["manifests"]
        assert ref["artifactType"] == REPORT_ARTIFACT_TYPE and ref["digest"] == doc["report"]
        assert ref["annotations"]["io.dockyard.scan.high"] == "1"
        assert ref["annotations"]["io.dockyard.scan.scanner"] == "Test 1.0"
        manifest = (await client.get(f"/v2/team/app/manifests/{doc['report']}")).json()
        layer = manifest["layers"][0]
        assert layer["mediaType"] == REPORT_TYPE
        blob = await client.get(f"/v2/team/app/blobs/{layer['digest']}")
        assert json.loads(blob.content) == {"digest": image.digest, "n": 2, "pad": ""}
        # The scan event, written with the summary; the report itself is not scanned.
        scans = [e for e in events(svc) if e.action == "scan"]
        assert [e.digest for e in scans] == [image.digest]
        target = scans[0].body["target"]
        assert target["summary"]["HIGH"] == 1 and target["report"] == doc["report"]
        assert target["status"] == "done" and target["scanner"] == "Test 1.0"
        await anyio.sleep(0.2)
        assert len(scanner.scanned) == 1
        report_scan = await client.get(f"{SCANS}/team/app/scans/{doc['report']}")
        assert report_scan.json()["status"] == "none"
        # The tags list shows the summary.
        tags = (await client.get(f"{SCANS}/team/app/tags")).json()["tags"]
        assert tags[0]["scan"] == {"status": "done", "summary": doc["summary"]}


async def test_an_index_is_its_platforms_together(tmp_path: Path) -> None:
    scanner = TestScanner()
    scanner.findings["multi"] = (HIGH,)
    async with running(scan_settings(tmp_path), scanner) as svc, make_client(svc) as client:
        amd = await push_image(client, "multi")
        arm = await push_image(client, "multi")
        children = [
            {**amd.descriptor, "platform": {"os": "linux", "architecture": "amd64"}},
            {**arm.descriptor, "platform": {"os": "linux", "architecture": "arm64"}},
        ]
        payload = index_manifest(children)
        r = await put_manifest(
            client, "multi", "v1", payload, "application/vnd.oci.image.index.v1+json"
        )
        assert r.status_code == 201
        index = digest_of(payload)
        doc = await wait_scan(client, "multi", index)
        assert doc["summary"]["HIGH"] == 2 and len(doc["findings"]) == 2
        assert [(p["platform"], p["status"]) for p in doc["platforms"]] == [
            ("linux/amd64", "done"),
            ("linux/arm64", "done"),
        ]
        assert doc["platforms"][0]["summary"]["HIGH"] == 1
        assert {s.digest for s in scanner.scanned} == {amd.digest, arm.digest}


async def test_artifacts_that_are_not_images_are_not_scanned(tmp_path: Path) -> None:
    scanner = TestScanner()
    async with running(scan_settings(tmp_path), scanner) as svc, make_client(svc) as client:
        chart = b"a helm chart"
        config = b"{}"
        await push_blob(client, "charts", chart)
        await push_blob(client, "charts", config)
        payload = image_manifest(
            descriptor("application/vnd.cncf.helm.config.v1+json", config),
            [descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", chart)],
        )
        assert (await put_manifest(client, "charts", "1.0", payload)).status_code == 201
        doc = await wait_scan(
            client,
            "charts",
            digest_of(payload),
            lambda d: d["status"] not in ("none", "queued", "running"),
        )
        assert doc["status"] == "unsupported"
        assert scanner.scanned == []


async def test_an_outage_delays_scans_and_loses_none(tmp_path: Path) -> None:
    scanner = TestScanner()
    scanner.failures = [
        ScanFailed("unavailable", "connection refused"),
        ScanFailed("database", "no vulnerability database", retry_after=0.3),
        ScanFailed("crashed", "exit status 2"),
    ]
    async with running(scan_settings(tmp_path), scanner) as svc, make_client(svc) as client:
        image = await push_image(client, "app")
        retrying = await wait_scan(client, "app", image.digest, lambda d: d["attempts"] >= 2)
        assert retrying["status"] in ("queued", "running")
        assert retrying["lastError"].startswith(("database:", "crashed:"))
        counts = await svc.db.run(svc.meta.scans_counts)
        assert sum(counts.values()) == 1 and "done" not in counts
        doc = await wait_scan(client, "app", image.digest)
        assert doc["attempts"] == 4 and doc["lastError"] is None
        assert len(scanner.scanned) == 4
        # Backoff: 0.05, then the scanner's Retry-After 0.3, then 0.2 (backoff_max).
        gaps = [b - a for a, b in zip(scanner.times, scanner.times[1:], strict=False)]
        assert gaps[0] >= 0.05 and gaps[1] >= 0.3 and gaps[2] >= 0.2
        assert gaps[1] < 2 and gaps[2] < 2  # and not much later (workers are woken)


async def test_a_restart_loses_no_queued_scan(tmp_path: Path) -> None:
    settings = scan_settings(tmp_path)
    down = TestScanner()
    down.failures = [ScanFailed("unavailable", "down")] * 1000
    async with running(settings, down) as svc, make_client(svc) as client:
        image = await push_image(client, "app")
        await wait_scan(client, "app", image.digest, lambda d: d["attempts"] >= 1)
    assert down.closed
    up = TestScanner()
    async with running(settings, up) as svc, make_client(svc) as client:
        doc = await wait_scan(client, "app", image.digest)
        assert doc["status"] == "done"


async def test_on_demand_and_rescans(tmp_path: Path) -> None:
    scanner = TestScanner()
    settings = scan_settings(tmp_path, on_push=False)
    async with running(settings, scanner) as svc, make_client(svc) as client:
        image = await push_image(client, "app", "v1")
        await anyio.sleep(0.2)
        assert (await client.get(f"{SCANS}/app/scans/{image.digest}")).json()["status"] == "none"
        r = await client.post(f"{SCANS}/app/scans/{image.digest}")
        assert r.status_code == 202 and r.json() == {"status": "queued"}
        await wait_scan(client, "app", image.digest)
        assert len(scanner.scanned) == 1
        assert_error(
            await client.post(f"{SCANS}/app/scans/sha256:{'0' * 64}"), 404, "MANIFEST_UNKNOWN"
        )
        assert_error(
            await client.get(f"{SCANS}/app/scans/sha256:{'0' * 64}"), 404, "MANIFEST_UNKNOWN"
        )
        assert_error(await client.get(f"{SCANS}/app/scans/nope"), 400, "DIGEST_INVALID")
        # Same database: nothing to rescan. A new one: rescanned.
        assert svc.scanning is not None and svc.scanning.queue is not None
        assert await svc.scanning.queue.rescan("db-1") == 0
        scanner.version = "db-2"
        scanner.findings["app"] = (HIGH,)
        assert await svc.scanning.queue.rescan("db-2") == 1
        doc = await wait_scan(
            client, "app", image.digest, lambda d: d["summary"] and d["summary"]["HIGH"] == 1
        )
        assert len(scanner.scanned) == 2 and doc["status"] == "done"


async def test_pull_policies(tmp_path: Path) -> None:
    scanner = TestScanner()
    scanner.findings["prod/app"] = (HIGH, LOW)
    settings = scan_settings(tmp_path)
    policy = ScanPolicy(repositories=["prod/*"], block_severity="HIGH", require_scan=True)
    settings.scanning.policies = [policy]
    async with running(settings, scanner) as svc, make_client(svc) as client:
        scanner.failures = [ScanFailed("unavailable", "down")] * 3
        image = await push_image(client, "prod/app", "v1")
        body = assert_error(await client.get("/v2/prod/app/manifests/v1"), 403, "DENIED")
        assert body["message"] == (f"{image.digest} is not scanned yet (policy for prod/*)")
        await wait_scan(client, "prod/app", image.digest)
        for method in ("GET", "HEAD"):
            r = await client.request(method, "/v2/prod/app/manifests/v1")
            assert r.status_code == 403
        body = assert_error(
            await client.get(f"/v2/prod/app/manifests/{image.digest}"), 403, "DENIED"
        )
        assert body["message"] == (
            f"{image.digest} has 1 finding at or above HIGH: CVE-2024-1 (policy for prod/*)"
        )
        doc = (await client.get(f"{SCANS}/prod/app/scans/{image.digest}")).json()
        assert doc["policy"]["allowed"] is False and "CVE-2024-1" in doc["policy"]["reason"]
        # The report referrer is never refused; other repositories are not checked.
        assert (await client.get(f"/v2/prod/app/manifests/{doc['report']}")).status_code == 200
        other = await push_image(client, "dev/app", "v1")
        assert (await client.get("/v2/dev/app/manifests/v1")).status_code == 200
        assert other.digest
        # Exemptions, applied to a policy changed in place (a new server in practice).
        policy.exempt_cves = ["CVE-2024-1"]
        assert svc.scanning is not None and svc.scanning.policy is not None
        svc.scanning.policy.forget(image.digest)
        assert (await client.get("/v2/prod/app/manifests/v1")).status_code == 200
        policy.exempt_cves = []
        policy.exempt_digests = [image.digest]
        svc.scanning.policy.forget(image.digest)
        assert (await client.get("/v2/prod/app/manifests/v1")).status_code == 200
        # A rescan with new findings reaches the cache through the scan event.
        policy.exempt_digests = []
        svc.scanning.policy.forget(image.digest)
        assert (await client.get("/v2/prod/app/manifests/v1")).status_code == 403
        scanner.findings["prod/app"] = (LOW,)
        await client.post(f"{SCANS}/prod/app/scans/{image.digest}")
        with anyio.fail_after(10):
            while True:
                r = await client.get("/v2/prod/app/manifests/v1")
                if r.status_code == 200:
                    break
                await anyio.sleep(0.02)


async def test_scans_wait_for_the_pushes_to_pause(tmp_path: Path) -> None:
    """``quiet``: no scan starts while pushes keep coming; the first soon after they stop."""
    scanner = TestScanner()
    settings = scan_settings(tmp_path, quiet=0.6, quiet_max=60)
    async with running(settings, scanner) as svc, make_client(svc) as client:
        digests = []
        for i in range(8):  # a push every ~0.15 s, for longer than ``quiet``
            digests.append((await push_image(client, "storm", f"v{i}")).digest)
            await anyio.sleep(0.1)
        last_push = anyio.current_time()
        for digest in digests:
            await wait_scan(client, "storm", digest)
        assert len(scanner.times) == len(digests)
        assert min(scanner.times) >= last_push + 0.4, (last_push, scanner.times)
        # Our own report pushes (referrers) do not count as pushes: the scans after the
        # first did not wait a quiet period each.
        assert max(scanner.times) - min(scanner.times) < 0.4, scanner.times


async def test_pushes_that_never_pause_delay_scans_only_quiet_max(tmp_path: Path) -> None:
    scanner = TestScanner()
    settings = scan_settings(tmp_path, quiet=5, quiet_max=0.3, concurrency=1)
    async with running(settings, scanner) as svc, make_client(svc) as client:
        first = await push_image(client, "storm", "v0")
        pushed = anyio.current_time()
        with anyio.fail_after(10):
            while not scanner.times:
                await push_image(client, "storm", "next")
                await anyio.sleep(0.05)
        assert pushed + 0.2 <= scanner.times[0] < pushed + 3, (pushed, scanner.times)
        await wait_scan(client, "storm", first.digest)


@pytest.mark.parametrize("layer", [OCI_LAYER])
async def test_a_scan_never_slows_a_push(tmp_path: Path, layer: str) -> None:
    """A scanner that hangs: pushes and pulls go on, the row stays running."""
    scanner = TestScanner()
    hung = anyio.Event()

    async def hang(request: ScanRequest) -> ScanResult:
        hung.set()
        await anyio.sleep_forever()
        raise AssertionError

    scanner.scan = hang  # type: ignore[method-assign]
    async with (
        running(scan_settings(tmp_path, timeout=30), scanner) as svc,
        make_client(svc) as client,
    ):
        await push_image(client, "app", "v1", layer_type=layer)
        with anyio.fail_after(5):
            await hung.wait()
        with anyio.fail_after(2):
            for i in range(5):
                await push_image(client, "app", f"v{i + 2}", layer_type=layer)
            assert (await client.get("/v2/app/manifests/v1")).status_code == 200


async def test_the_scan_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scanner = TestScanner()
    scanner.findings["app"] = (HIGH,)
    settings = scan_settings(tmp_path, on_push=False)
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", settings.storage.root)
    monkeypatch.delenv("DOCKYARD_CONFIG", raising=False)
    async with running(settings, scanner) as svc, make_client(svc) as client:
        image = await push_image(client, "app", "v1")
        code = await anyio.to_thread.run_sync(
            main, ["scan", f"app@{image.digest}", "--wait", "10", "--json"]
        )
        doc = json.loads(capsys.readouterr().out)
        assert code == 0 and doc["status"] == "done" and doc["summary"]["HIGH"] == 1
        assert doc["findings"][0]["id"] == "CVE-2024-1" and "policy" not in doc
        # Text, and a failing scan that the status shows with its reason.
        scanner.failures = [ScanFailed("unavailable", "scanner down")] * 1000
        code = await anyio.to_thread.run_sync(main, ["scan", f"app@{image.digest}", "--wait", "1"])
        out = capsys.readouterr().out
        assert code == 1 and "last error: unavailable: scanner down" in out
        assert await anyio.to_thread.run_sync(main, ["scan", "status", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["counts"] in ({"retrying": 1}, {"running": 1})
        (failing,) = status["failing"]
        assert failing["digest"] == image.digest and failing["lastError"].startswith("unavailable")
        assert await anyio.to_thread.run_sync(main, ["scan", "status"]) == 0
        assert "scanner down" in capsys.readouterr().out
        assert await anyio.to_thread.run_sync(main, ["scan", f"app@sha256:{'0' * 64}"]) == 1
        assert await anyio.to_thread.run_sync(main, ["scan", "app:v1"]) == 1
        # A closed stdout (`| head`): no traceback.
        read, write = os.pipe()
        os.close(read)
        result = await anyio.run_process(
            [sys.executable, "-m", "dockyard.cli", "scan", "status"],
            stdout=write,
            check=False,
            env={**os.environ, "DOCKYARD_STORAGE_ROOT": settings.storage.root},
        )
        os.close(write)
        assert result.returncode == 0 and result.stderr == b""


async def test_a_report_over_the_quota_is_retried_not_lost(tmp_path: Path) -> None:
    settings = scan_settings(tmp_path)
    settings.quotas = [QuotaSettings(repositories=["small"], max_bytes=20_000)]
    scanner = TestScanner()
    scanner.padding = 50_000
    async with running(settings, scanner) as svc, make_client(svc) as client:
        image = await push_image(client, "small")
        doc = await wait_scan(client, "small", image.digest, lambda d: d["attempts"] >= 1)
        assert doc["lastError"].startswith("report: storing the report: quota exceeded")
        assert doc["status"] in ("queued", "running") and doc["summary"] is None
        svc.registry.quotas.rules = ()  # the quota lifted: the next attempt stores it
        doc = await wait_scan(client, "small", image.digest)
        assert doc["summary"] is not None and doc["attempts"] >= 2


async def test_an_sbom_is_a_second_referrer(tmp_path: Path) -> None:
    scanner = TestScanner()
    settings = scan_settings(tmp_path, sbom=True)
    async with running(settings, scanner) as svc, make_client(svc) as client:
        image = await push_image(client, "app")
        doc = await wait_scan(client, "app", image.digest)
        r = await client.get(f"/v2/app/referrers/{image.digest}")
        kinds = {m["artifactType"]: m["digest"] for m in r.json()["manifests"]}
        assert set(kinds) == {REPORT_ARTIFACT_TYPE, SBOM_ARTIFACT_TYPE}
        assert kinds[REPORT_ARTIFACT_TYPE] == doc["report"]
        sbom = (await client.get(f"/v2/app/manifests/{kinds[SBOM_ARTIFACT_TYPE]}")).json()
        assert sbom["layers"][0]["mediaType"] == "application/vnd.cyclonedx+json"
        assert scanner.scanned[0].sbom


async def test_two_instances_never_scan_a_row_twice(tmp_path: Path) -> None:
    """Two registries on one database (two instances): every image scanned exactly once."""
    first, second = TestScanner(), TestScanner()
    settings = scan_settings(tmp_path, concurrency=3)
    other = scan_settings(tmp_path)
    other.scanning.concurrency = 3
    other.server.instance = "other"
    async with (
        running(settings, first) as svc,
        running(other, second),
        make_client(svc) as client,
    ):
        images = [await push_image(client, "app", f"v{i}") for i in range(8)]
        for image in images:
            await wait_scan(client, "app", image.digest)
        await anyio.sleep(0.3)
    scanned = [r.digest for r in first.scanned + second.scanned]
    assert sorted(scanned) == sorted(i.digest for i in images)
