"""The dashboard with basic auth on, in a real browser (Chromium through Selenium).

The browser answers the Basic challenge of the page's requests (a WebDriver BiDi auth
handler stands in for the user typing into the login prompt). Its websocket cannot carry
those credentials: the page opens the feed with a ticket from ``/v2/_dockyard/ticket``,
and then sees only events of repositories the user may pull.

Chromium also sends the credentials it cached for the origin on the websocket handshake,
so this test cannot tell the two ways in apart; it checks that the page opened the feed
with a ticket and works end to end. That a ticket alone opens the feed, and only once,
is tested through the API (``tests/test_api_auth.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from tests.e2e.conftest import _serve
from tests.e2e.test_auth_e2e import users_add
from tests.e2e.test_dashboard import CHROMIUM_FLAGS, Page
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

PASSWORDS = {"root": "root-pw", "carol": "carol-pw"}
RULES = [
    {"users": ["root"], "repositories": ["*"], "actions": ["*"]},
    {"users": ["carol"], "repositories": ["*"], "actions": ["admin"]},
    {"users": ["carol"], "repositories": ["team/*"], "actions": ["pull"]},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("dockyard-dash-auth")
    htpasswd = root / "htpasswd"
    for name, password in PASSWORDS.items():
        users_add(htpasswd, name, password)
    lines = ["[auth]", 'mode = "basic"', f"htpasswd = {json.dumps(str(htpasswd))}", ""]
    for rule in RULES:
        lines += ["[[access]]", *(f"{k} = {json.dumps(v)}" for k, v in rule.items()), ""]
    (root / "dockyard.toml").write_text("\n".join(lines))
    yield from _serve(root, workers=2, env={"DOCKYARD_CONFIG": str(root / "dockyard.toml")})


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = require_tool("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.enable_bidi = True
    service = Service(
        executable_path=require_tool("chromedriver"),
        log_output=str(tmp_path / "chromedriver.log"),
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def push(server: DockyardServer, repository: str) -> str:
    data = os.urandom(256)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(
        f"{server.url}/v2/{repository}/blobs/uploads/",
        params={"digest": digest},
        content=data,
        auth=("root", PASSWORDS["root"]),
    )
    assert r.status_code == 201, r.text
    return digest


def test_dashboard_logs_in_and_shows_only_pullable_repositories(
    server: DockyardServer, browser: webdriver.Chrome
) -> None:
    browser.network.add_auth_handler("carol", PASSWORDS["carol"])  # type: ignore[no-untyped-call]
    page = Page(browser)
    browser.get(f"{server.url}/dashboard/")
    page.wait("the feed to go live", lambda: page.body("feed") == "live")
    hidden = push(server, "secret/app")
    shown = push(server, "team/app")
    rows = page.wait(
        "the team/app push in the stream",
        lambda: page.rows('[data-action="push"][data-repository="team/app"]'),
    )
    assert rows[0]["digest"] == shown
    assert page.rows('[data-repository="secret/app"]') == []
    assert hidden not in [r["digest"] for r in page.rows()]
    page.wait(
        "team/app in the repository list",
        lambda: page.repository_cells("team/app").get("tags") == "0",
    )
    assert page.repository_cells("secret/app") == {}
    assert page.body("feedTicket") == "yes"  # the page opened the feed with a ticket
