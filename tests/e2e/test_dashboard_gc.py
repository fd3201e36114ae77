"""The dashboard shows garbage collection's deletions sensibly: each in the live stream
with who deleted it and why, and the blob rows (in no repository) kept out of the top
repositories."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver

from tests.e2e.conftest import serving
from tests.e2e.test_dashboard import Page, browser, severe_console_messages
from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e
__all__ = ["browser"]  # the fixture, used by name


@pytest.fixture(scope="module")
def no_grace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("gcdash")
    yield from serving(DockyardServer(root / "data", env={"DOCKYARD_GC_GRACE_PERIOD": "0"}))


def test_gc_deletions_in_the_stream(
    no_grace: DockyardServer, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    data = b"a layer whose manifest never came"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    page = Page(browser)
    browser.get(f"{no_grace.url}/dashboard/")
    page.wait("the feed to go live", lambda: page.body("feed") == "live")
    pushed = httpx.post(
        f"{no_grace.url}/v2/gcdash/app/blobs/uploads/?digest={digest}", content=data
    )
    assert pushed.status_code == 201
    config = tmp_path / "gc.toml"
    config.write_text(f'[storage]\nroot = "{no_grace.data_dir}"\n[gc]\ngrace_period = 0\n')
    subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "gc", "--config", str(config)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    link = page.wait(
        "the link deletion in the stream",
        lambda: page.rows('[data-action="delete"][data-kind="link"]'),
    )[0]
    assert link["repository"] == "gcdash/app" and link["digest"] == digest
    assert "(gc: unreferenced)" in link["text"]
    blob = page.wait(
        "the blob deletion in the stream",
        lambda: page.rows('[data-action="delete"][data-kind="blob"]'),
    )[0]
    assert blob["repository"] == "" and "(registry)" in blob["text"]
    assert "(gc: unreferenced)" in blob["text"]
    top = page.script(
        "return [...document.querySelectorAll('#top-repos li')].map((li) => li.dataset.repository)"
    )
    assert "" not in top and "gcdash/app" in top
    assert severe_console_messages(browser) == []
