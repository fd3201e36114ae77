"""The live dashboard in a real headless Chromium against a real ``dockyard serve``.

Chromium is Debian's (``/usr/bin/chromium``), driven by Selenium through Debian's
chromedriver, given by path so Selenium never tries to download a driver or a browser.
The test opens ``/dashboard``, pushes an image built from scratch with skopeo, and checks
that the push appears in the event stream and that the counters, the repository list and
the activity match the server's own event log exactly; then it pulls, filters the stream,
kills and restarts the server, pushes while the page reconnects, and checks the page
resumed with ``since=`` (no event lost, none listed twice). The page is saved as
``test-artifacts/dashboard.png`` (also when the test fails, to see why).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.conftest import Skopeo, server_events
from tests.imagegen import Image, OCILayout, build_image, make_layer, random_layers
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT = 20.0
T = TypeVar("T")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # as root, Chromium refuses to start with its sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",  # no calls to Google's hosts from a closed network
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1300",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    options = Options()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


# Reads run in the page as one script each: the page re-renders rows as events arrive, so
# element handles kept between calls would go stale.
ROWS_JS = """
return [...document.querySelectorAll('#stream .ev' + arguments[0])].map((r) => ({
  id: r.dataset.eventId, action: r.dataset.action, repository: r.dataset.repository,
  kind: r.dataset.kind, digest: r.dataset.digest || '', tag: r.dataset.tag || '',
  text: r.innerText}));
"""
REPOSITORY_JS = """
const row = [...document.querySelectorAll('#repos tbody tr')]
  .find((tr) => tr.dataset.repository === arguments[0]);
return row ? Object.fromEntries([...row.cells].map((td) => [td.dataset.col, td.dataset.value]))
           : {};
"""
COUNTER_IDS = (
    "count-push",
    "count-pull",
    "bytes-in",
    "bytes-out",
    "total-repositories",
    "total-tags",
    "total-manifests",
    "total-blobs",
    "total-stored",
)
COUNTERS_JS = """
return Object.fromEntries(arguments[0].map((id) =>
  [id, Number(document.getElementById(id).dataset.value)]));
"""


class Page:
    """The dashboard as the test reads it: ids and data attributes, not pixels."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    def body(self, key: str) -> str:
        return str(self.script("return document.body.dataset[arguments[0]] || ''", key))

    def value(self, element_id: str) -> int:
        return int(self.counters()[element_id])

    def counters(self) -> dict[str, int]:
        found: dict[str, int] = self.script(COUNTERS_JS, list(COUNTER_IDS))
        return found

    def rows(self, selector: str = "") -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.script(ROWS_JS, selector)
        return found

    def stream_ids(self) -> list[int]:
        return [int(r["id"]) for r in self.rows()]

    def repository_cells(self, name: str) -> dict[str, str]:
        found: dict[str, str] = self.script(REPOSITORY_JS, name)
        return found

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = WAIT) -> T:
        """Wait until ``check()`` returns something truthy; fail saying what was awaited."""
        try:
            result = cast(
                T, WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(lambda _: check())
            )
        except TimeoutException:
            state = {k: self.body(k) for k in ("feed", "since", "statsId")}
            pytest.fail(
                f"timed out after {timeout} s waiting for {what}\npage: {state}\n"
                f"counters: {self.counters()}\nstream ids: {self.stream_ids()[:40]}",
                pytrace=False,
            )
        return result


def image_bytes(image: Image) -> int:
    return image.config.size + sum(layer.blob.size for layer in image.layers) + image.manifest.size


def severe_console_messages(driver: webdriver.Chrome) -> list[str]:
    logs: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in logs if entry.get("level") == "SEVERE"]


def test_dashboard_shows_pushes_live(
    registry: DockyardServer, skopeo: Skopeo, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    layout = OCILayout(tmp_path / "layout")
    v1 = layout.add_image("v1", build_image([make_layer(71, files=3), *random_layers(72, 2)]))
    v2 = layout.add_image("v2", build_image([make_layer(73)]))  # pushed across a drop
    page = Page(browser)
    try:
        browser.get(f"{registry.url}/dashboard")
        assert browser.current_url == f"{registry.url}/dashboard/"  # the 308 was followed
        assert browser.title == "dockyard · live dashboard"
        page.wait("the feed to go live", lambda: page.body("feed") == "live")
        before = page.counters()
        assert page.rows('[data-repository="dash/app"]') == []

        # A push appears in the stream; the counters and the repository list follow.
        skopeo.copy(layout.ref("v1"), skopeo.docker("dash/app:v1"), "--preserve-digests")
        row = page.wait(
            "the manifest push in the stream",
            lambda: page.rows('[data-action="push"][data-kind="manifest"][data-tag="v1"]'),
        )[0]
        assert row["repository"] == "dash/app"
        assert row["digest"] == v1.digest
        assert "dash/app" in row["text"] and "v1" in row["text"]
        blob_rows = page.rows('[data-action="push"][data-kind="blob"][data-repository="dash/app"]')
        assert sorted(r["digest"] for r in blob_rows) == sorted(v1.blob_digests)
        pushes = len(v1.blob_digests) + 1
        page.wait(
            "the push counters to count the push",
            lambda: (
                page.value("count-push") == before["count-push"] + pushes
                and page.value("bytes-in") == before["bytes-in"] + image_bytes(v1)
            ),
        )
        page.wait(
            "dash/app in the repository list with one tag",
            lambda: page.repository_cells("dash/app").get("tags") == "1",
        )
        cells = page.repository_cells("dash/app")
        assert cells["manifests"] == "1"
        assert int(cells["size"]) == image_bytes(v1)
        page.wait(
            "the totals to count the new repository",
            lambda: page.value("total-repositories") == before["total-repositories"] + 1,
        )
        after = page.counters()
        assert after["total-tags"] == before["total-tags"] + 1
        assert after["total-blobs"] == before["total-blobs"] + len(v1.blob_digests)
        top = page.script(
            "return [...document.querySelectorAll('#top-repos li')]"
            ".map((li) => [li.dataset.repository, li.innerText])"
        )
        assert top[0][0] == "dash/app" and f"{pushes} push" in top[0][1], top
        assert severe_console_messages(browser) == []

        # A pull: pull events arrive in batches, then count as bytes out.
        skopeo.copy(skopeo.docker("dash/app:v1"), f"oci:{tmp_path / 'pulled'}:v1")
        page.wait(
            "the manifest pull in the stream",
            lambda: page.rows(
                '[data-action="pull"][data-kind="manifest"][data-repository="dash/app"]'
            ),
        )
        page.wait(
            "bytes out to cover the pulled image",
            lambda: page.value("bytes-out") >= before["bytes-out"] + image_bytes(v1),
        )

        # Filters act on the stream only.
        repo_filter = browser.find_element(By.ID, "filter-repo")
        repo_filter.send_keys("other/*")
        page.wait("the glob to hide every row", lambda: page.rows() == [])
        repo_filter.clear()
        repo_filter.send_keys("dash/*")
        Select(browser.find_element(By.ID, "filter-action")).select_by_value("pull")
        shown = page.wait("pull rows of dash/app", lambda: page.rows())
        assert {r["action"] for r in shown} == {"pull"}
        assert {r["repository"] for r in shown} == {"dash/app"}
        Select(browser.find_element(By.ID, "filter-action")).select_by_value("")
        repo_filter.clear()
        repo_filter.send_keys("*", Keys.BACKSPACE)  # input events: the filter is empty again
        page.wait(
            "the stream to show every action again", lambda: page.rows('[data-action="push"]')
        )

        # A drop: the server dies; the page reconnects with since=<last id it received>
        # once it is back, and gets what it missed and the push made meanwhile, once.
        registry.kill()
        page.wait("the page to notice the drop", lambda: page.body("feed") == "reconnecting")
        last_seen = max(page.stream_ids())
        assert browser.find_element(By.ID, "last-id").text == f"#{last_seen}"
        registry.start()
        skopeo.copy(layout.ref("v2"), skopeo.docker("dash/app:v2"), "--preserve-digests")
        row = page.wait(
            "the push made across the drop",
            lambda: page.rows('[data-action="push"][data-kind="manifest"][data-tag="v2"]'),
        )[0]
        assert row["digest"] == v2.digest
        page.wait("the feed to be live again", lambda: page.body("feed") == "live")
        assert page.body("since") == str(last_seen)
        page.wait(
            "dash/app to have two tags",
            lambda: page.repository_cells("dash/app").get("tags") == "2",
        )

        # The page agrees with the server's durable log: every event listed once, and the
        # push and pull counters and bytes equal what the log says.
        log = server_events(registry)
        page.wait(
            "the stream to reach the end of the log",
            lambda: max(page.stream_ids(), default=0) == log[-1].id,
        )
        ids = page.stream_ids()
        assert len(ids) == len(set(ids)), "an event was listed twice"
        assert sorted(ids) == [e.id for e in log]
        pushed = [e for e in log if e.action == "push"]
        pulled = [e for e in log if e.action == "pull"]
        expected = {
            "count-push": len(pushed),
            "count-pull": len(pulled),
            "bytes-in": sum(e.size or 0 for e in pushed),
            "bytes-out": sum(e.size or 0 for e in pulled),
        }
        page.wait(
            f"the counters to match the log {expected}",
            lambda: {k: page.value(k) for k in expected} == expected,
        )
        page.wait("the repository totals", lambda: page.value("total-tags") == 2)
        chart_pixels = browser.execute_script(
            "const c = document.getElementById('rate-chart');"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;"
        )
        assert chart_pixels > 1000, "the rate chart drew nothing"
        # Hovering over the newest bucket shows its counts; leaving the chart hides them.
        canvas = browser.find_element(By.ID, "rate-chart")
        tip = browser.find_element(By.ID, "chart-tip")
        ActionChains(browser).move_to_element_with_offset(
            canvas, canvas.size["width"] // 2 - 12, 0
        ).perform()
        page.wait("the chart's tooltip", lambda: tip.is_displayed())
        assert re.search(r"push \d+ \(.+\) · pull \d+ \(.+\)", tip.text), tip.text
        ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "header")).perform()
        page.wait("the tooltip to hide", lambda: not tip.is_displayed())
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        (ARTIFACTS / "dashboard-state.json").write_text(
            json.dumps({"url": browser.current_url, "counters": _safe_counters(page)}, indent=2)
        )


def _safe_counters(page: Page) -> dict[str, int] | str:
    try:
        return page.counters()
    except Exception as e:  # the page may not have loaded
        return repr(e)
