"""Scanning with auth on (the scanner's short-lived robot credentials, which pull
policies never refuse), the scan metrics, and the ``[scanning]`` validation."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anyio
import pytest

from dockyard.config import ConfigError, ScanPolicy, load
from dockyard.config.validate_scanning import validate_scanning
from tests.authfixtures import ROOT_RULE, auth_settings, basic
from tests.conftest import assert_error, digest_of, make_client, make_settings, push_image
from tests.test_scan_queue import HIGH, SCANS, TestScanner, running, wait_scan


async def test_the_scanner_pulls_with_robot_credentials_no_policy_refuses(
    tmp_path: Path,
) -> None:
    settings = auth_settings(tmp_path / "data", [ROOT_RULE])
    settings.metrics.enabled = True
    s = settings.scanning
    s.on_push, s.backoff_initial, s.backoff_max, s.rescan_interval = True, 0.05, 0.2, 0
    s.policies = [ScanPolicy(repositories=["prod/*"], block_severity="HIGH")]
    scanner = TestScanner()
    scanner.findings["prod/app"] = (HIGH,)
    async with running(settings, scanner) as svc, make_client(svc, basic("root")) as client:
        image = await push_image(client, "prod/app", "v1")
        await wait_scan(client, "prod/app", image.digest)
        assert_error(await client.get("/v2/prod/app/manifests/v1"), 403, "DENIED")
        (request,) = scanner.scanned
        assert request.username is not None and request.username.startswith("robot$scan-")
        assert request.password
        token = base64.b64encode(f"{request.username}:{request.password}".encode()).decode()
        async with make_client(svc, {"authorization": f"Basic {token}"}) as robot:
            # It may pull the scanned image, policy or not, and nothing else.
            r = await robot.get(f"/v2/prod/app/manifests/{image.digest}")
            assert r.status_code == 200
            layer = digest_of(image.layers[0])
            assert (await robot.get(f"/v2/prod/app/blobs/{layer}")).status_code == 200
            other = await push_image(client, "prod/other", "v1")
            r = await robot.get(f"/v2/prod/other/manifests/{other.digest}")
            assert r.status_code in (401, 403)
            r = await robot.post(f"{SCANS}/prod/app/scans/{image.digest}")
            assert r.status_code in (401, 403)  # pull only
        # Anonymous callers get nothing from the scans API.
        async with make_client(svc) as anonymous:
            r = await anonymous.get(f"{SCANS}/prod/app/scans/{image.digest}")
            assert r.status_code == 401
        metrics = (await client.get("/metrics")).text
        assert 'dockyard_scans_total{result="vulnerable"} 1.0' in metrics
        assert "dockyard_scan_duration_seconds_count 1.0" in metrics
        with anyio.fail_after(10):
            while 'dockyard_scan_queue_depth{status="queued"} 0.0' not in metrics:
                await anyio.sleep(0.5)
                metrics = (await client.get("/metrics")).text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scanner": "clair"}, "scanning.scanner"),
        ({"scanner": "harbor"}, "scanning.harbor.url"),
        ({"scanner": "trivy", "trivy": "/nonexistent/trivy"}, "scanning.trivy"),
        ({"db_repository": "https://host/repo"}, "scanning.db_repository"),
        ({"concurrency": 0}, "scanning.concurrency"),
        ({"timeout": 0}, "scanning.timeout"),
        ({"backoff_initial": 10, "backoff_max": 5}, "scanning.backoff_max"),
        ({"rescan_interval": -1}, "scanning.rescan_interval"),
        ({"repositories": [""]}, "scanning.repositories"),
        ({"policies": [ScanPolicy(block_severity="SEVERE")]}, "block_severity"),
        ({"policies": [ScanPolicy(repositories=["prod/*"])]}, "scanning.policies[0]"),
        ({"policies": [ScanPolicy(require_scan=True, exempt_digests=["abc"])]}, "exempt_digests"),
    ],
)
def test_bad_scanning_settings_stop_start_up(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    s = make_settings(tmp_path).scanning
    for key, value in changes.items():
        setattr(s, key, value)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_scanning(s)


def test_policies_load_from_the_file(tmp_path: Path) -> None:
    config = tmp_path / "dockyard.toml"
    config.write_text(
        '[scanning]\nscanner = "harbor"\n[scanning.harbor]\nurl = "http://127.0.0.1:9"\n'
        '[[scanning.policies]]\nrepositories = ["prod/*"]\nblock_severity = "CRITICAL"\n'
        'exempt_cves = ["CVE-2024-1"]\n'
    )
    settings = load(config, environ={"DOCKYARD_STORAGE_ROOT": str(tmp_path / "data")})
    (policy,) = settings.scanning.policies
    assert policy.block_severity == "CRITICAL" and policy.exempt_cves == ["CVE-2024-1"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[scanning.policies]]\nblock_severity = "high"\n')
    with pytest.raises(ConfigError, match="block_severity"):
        load(bad, environ={"DOCKYARD_STORAGE_ROOT": str(tmp_path / "data")})
