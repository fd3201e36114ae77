"""The dashboard's server side, in process: its files (served by the Quart app that
gets every path outside /v2/), the statistics endpoint it loads, the SQL behind it, and
the web app's lifespan wiring. The page itself runs in Chromium in tests/e2e."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from quart_trio import QuartTrio

from dockyard.config import Settings
from dockyard.http.web import CSP, QuartWeb
from dockyard.meta.records import Event
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.services import build
from tests.conftest import (
    assert_bare,
    assert_error,
    digest_of,
    last_event_id,
    make_client,
    open_services,
    push_image,
    put_manifest,
    wait_for_events,
)

# 5 s into a 10 s bucket, within the last hour: not in the future, where the janitor would
# take the uploads' files (stamped with the real time) for day-old orphans.
T0 = math.floor(time.time() / 3600) * 3600 + 5.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the page's files


async def test_dashboard_files_are_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/dashboard")
    assert r.status_code == 308
    assert r.headers["location"] == "dashboard/"  # relative: works under a path prefix

    r = await client.get("/dashboard/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    assert "<title>dockyard · live dashboard</title>" in html
    # Every file the page loads is served from the package, with its type; nothing else.
    assets = re.findall(r'(?:href|src)="([^"]+)"', html)
    assert sorted(assets) == [
        "chart.js",
        "dashboard.css",
        "dashboard.js",
        "favicon.svg",
        "favicon.svg",
        "format.js",
        "scans.js",
    ]
    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
    for name in set(assets):
        r = await client.get(f"/dashboard/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(types[Path(name).suffix]), name
        assert r.content
        again = await client.get(f"/dashboard/{name}", headers={"if-none-match": r.headers["etag"]})
        assert again.status_code == 304
        assert again.content == b""
    script = (await client.get("/dashboard/dashboard.js")).text
    scripts = [(await client.get(f"/dashboard/{n}")).text for n in assets if n.endswith(".js")]
    # The page finds the API relative to itself and resumes the feed with since=.
    assert "../v2/_dockyard/stats" in script and "../v2/_dockyard/events" in script
    assert 'searchParams.set("since"' in script
    for text in scripts:  # loads nothing from elsewhere
        assert "http://" not in text and "https://" not in text


async def test_unknown_paths_outside_v2_are_oci_errors(client: httpx.AsyncClient) -> None:
    for path in ("/dashboard/nope.js", "/dashboard/sub/dashboard.js", "/favicon.ico", "/v1/"):
        r = await client.get(path)
        assert_bare(r, 404)
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    r = await client.post("/dashboard/")
    assert_error(r, 405, "UNSUPPORTED")
    # /v2/ and the health endpoints stay on the raw ASGI path.
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert_bare(await client.get("/v2/_dockyard/nothing"), 404)


# -- GET /v2/_dockyard/stats


async def test_stats_of_an_empty_registry(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/_dockyard/stats")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert doc["last_id"] == 0
    assert (doc["window"], doc["bucket"]) == (900, 10)
    assert doc["totals"] == {
        "repositories": 0,
        "tags": 0,
        "manifests": 0,
        "blobs": 0,
        "blob_bytes": 0,
    }
    assert doc["repositories"] == []
    buckets = doc["activity"]["buckets"]
    assert len(buckets) == 90
    starts = [b["start"] for b in buckets]
    assert starts == list(range(starts[0], starts[0] + 900, 10))
    assert starts[-1] <= doc["now"] < starts[-1] + 10  # the last bucket is the current one
    assert all(b["push"] == b["pull"] == b["bytes_in"] == b["bytes_out"] == 0 for b in buckets)
    assert doc["activity"]["top"] == []


async def test_stats_count_repositories_and_activity(settings: Settings) -> None:
    clock = Clock(T0)
    async with open_services(settings, clock) as svc, make_client(svc) as client:
        app = await push_image(client, "team/app", "v1")  # 3 blob pushes, 1 manifest push
        clock.now = T0 + 30
        lib = await push_image(client, "team/lib", "1.0", layers=1)  # 3 pushes
        r = await put_manifest(client, "team/lib", "latest", lib.payload)  # a second tag
        assert r.status_code == 201
        clock.now = T0 + 60
        after = last_event_id(svc)
        layer = app.layers[0]
        blob = await client.get(f"/v2/team/app/blobs/{digest_of(layer)}")
        assert blob.content == layer
        assert (await client.get("/v2/team/app/manifests/v1")).status_code == 200
        await wait_for_events(svc, after, 2)  # pull events are written in batches
        clock.now = T0 + 65

        doc = (await client.get("/v2/_dockyard/stats", params={"window": 120})).json()
        assert doc["last_id"] == last_event_id(svc)
        assert doc["now"] == T0 + 65
        app_bytes = len(app.config) + sum(map(len, app.layers)) + len(app.payload)
        lib_bytes = len(lib.config) + sum(map(len, lib.layers)) + len(lib.payload)
        assert doc["totals"] == {
            "repositories": 2,
            "tags": 3,
            "manifests": 2,
            "blobs": 5,
            "blob_bytes": app_bytes + lib_bytes - len(app.payload) - len(lib.payload),
        }
        # Most recently pushed first; sizes are linked blobs plus manifests.
        assert doc["repositories"] == [
            {"name": "team/lib", "tags": 2, "manifests": 1, "size": lib_bytes, "updated": T0 + 30},
            {"name": "team/app", "tags": 1, "manifests": 1, "size": app_bytes, "updated": T0},
        ]
        assert doc["repositories_truncated"] is False

        activity = doc["activity"]
        assert activity["actions"] == {
            "push": 8,
            "pull": 2,
            "mount": 0,
            "delete": 0,
            "untag": 0,
            "scan": 0,  # the scan queue's events (none here)
        }
        pushed = app_bytes + lib_bytes + len(lib.payload)  # the re-tag sends the manifest again
        pulled = len(layer) + len(app.payload)
        assert (activity["bytes_in"], activity["bytes_out"]) == (pushed, pulled)
        buckets = {b["start"]: b for b in activity["buckets"]}
        assert len(buckets) == 12
        start = math.floor(T0 / 10) * 10
        assert buckets[start]["push"] == 4 and buckets[start]["bytes_in"] == app_bytes
        assert buckets[start + 30]["push"] == 4
        assert buckets[start + 30]["bytes_in"] == lib_bytes + len(lib.payload)
        assert buckets[start + 60]["pull"] == 2 and buckets[start + 60]["bytes_out"] == pulled
        assert sum(b["push"] + b["pull"] for b in activity["buckets"]) == 10
        assert activity["top"] == [
            {
                "repository": "team/app",
                "events": 6,
                "push": 4,
                "pull": 2,
                "mount": 0,
                "delete": 0,
                "untag": 0,
                "scan": 0,
                "bytes_in": app_bytes,
                "bytes_out": pulled,
            },
            {
                "repository": "team/lib",
                "events": 4,
                "push": 4,
                "pull": 0,
                "mount": 0,
                "delete": 0,
                "untag": 0,
                "scan": 0,
                "bytes_in": lib_bytes + len(lib.payload),
                "bytes_out": 0,
            },
        ]

        # A shorter window leaves the pushes out; the repositories and totals stay.
        doc = (await client.get("/v2/_dockyard/stats?window=20&bucket=10")).json()
        assert [b["start"] for b in doc["activity"]["buckets"]] == [start + 60, start + 70]
        assert doc["activity"]["actions"]["push"] == 0
        assert doc["activity"]["actions"]["pull"] == 2
        assert [t["repository"] for t in doc["activity"]["top"]] == ["team/app"]
        assert doc["totals"]["repositories"] == 2

        # A window that is not whole buckets is rounded up; the list can be cut short.
        doc = (await client.get("/v2/_dockyard/stats?window=25&bucket=10&repositories=1")).json()
        assert (doc["window"], len(doc["activity"]["buckets"])) == (30, 3)
        assert [r["name"] for r in doc["repositories"]] == ["team/lib"]
        assert doc["repositories_truncated"] is True

        # Many dashboards refreshing at once share one snapshot for a second.
        clock.now = T0 + 66
        again = (await client.get("/v2/_dockyard/stats?window=25&bucket=10&repositories=1")).json()
        assert again["now"] == T0 + 65


@pytest.mark.parametrize(
    "query",
    [
        "bucket=0",
        "bucket=3601",
        "window=5&bucket=10",
        "window=86401",
        "window=86400&bucket=1",  # 86,400 buckets: too many
        "repositories=0",
        "repositories=5001",
        "window=abc",
        "window=-60",
        "bucket=1.5",
        "window=99999999999999999999",
        # Digits of other scripts (int() of a superscript raised: a 500).
        "window=%C2%B2",
        "bucket=%D9%A3%D9%A0",
        "repositories=%EF%BC%91",
        "window=+60",
        "window=%2060",
    ],
)
async def test_stats_parameters_are_checked(client: httpx.AsyncClient, query: str) -> None:
    r = await client.get(f"/v2/_dockyard/stats?{query}")
    assert_bare(r, 400)


# -- the SQL behind it


def test_the_window_is_found_by_bisection(tmp_path: Path) -> None:
    """Events are counted from the first one in the window, found by bisecting ids, also
    when pull events written late carry earlier times than events before them."""
    meta = SQLiteMeta(tmp_path / "db.sqlite3")
    meta.migrate()
    try:
        meta.append_events([Event("push", "a", size=1, ts=1000.0 + i) for i in range(1000)])
        # A late batch of pulls: written after events stamped up to 1999, stamped 1950.
        meta.append_events([Event("pull", "b", size=7, ts=1950.0) for _ in range(3)])
        meta.append_events([Event("push", "a", size=1, ts=2000.0)])

        stats = meta.stats(since=1500.0, bucket=100.0, repositories=10)
        assert stats.last_id == 1004
        counts = {(c.key, c.action): c.count for c in stats.by_bucket}
        assert counts == {
            (15, "push"): 100,
            (16, "push"): 100,
            (17, "push"): 100,
            (18, "push"): 100,
            (19, "push"): 100,
            (19, "pull"): 3,
            (20, "push"): 1,
        }
        sizes = {(c.key, c.action): c.size for c in stats.by_repository}
        assert sizes == {("a", "push"): 501, ("b", "pull"): 21}
        assert sum(c.count for c in meta.stats(0.0, 100.0, 10).by_bucket) == 1004
        assert meta.stats(2000.5, 100.0, 10).by_bucket == []
        assert meta.stats(1999.0, 1.0, 10).by_bucket[0].key == 1999
    finally:
        meta.close()


def test_stats_of_an_empty_log(tmp_path: Path) -> None:
    meta = SQLiteMeta(tmp_path / "db.sqlite3")
    meta.migrate()
    try:
        stats = meta.stats(since=0.0, bucket=10.0, repositories=10)
        assert (stats.last_id, stats.by_bucket, stats.by_repository) == (0, [], [])
    finally:
        meta.close()


# -- the web app's lifespan


async def test_lifespan_starts_and_stops_the_web_app(settings: Settings) -> None:
    svc = build(settings)
    web = svc.app.web
    assert isinstance(web, QuartWeb)
    calls: list[str] = []

    @web.app.before_serving
    async def started() -> None:
        calls.append("startup")

    @web.app.after_serving
    async def stopped() -> None:
        calls.append("shutdown")

    to_app, app_receives = anyio.create_memory_object_stream[dict[str, Any]](4)
    app_sends, from_app = anyio.create_memory_object_stream[dict[str, Any]](4)

    async def receive() -> dict[str, Any]:
        return await app_receives.receive()

    async def send(message: Any) -> None:
        await app_sends.send(dict(message))

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(svc.app, {"type": "lifespan"}, receive, send)
                await to_app.send({"type": "lifespan.startup"})
                assert (await from_app.receive())["type"] == "lifespan.startup.complete"
                assert calls == ["startup"]
                if isinstance(web.app, QuartTrio):  # its background tasks need a home
                    assert web.app.nursery is not None
                async with make_client(svc) as client:
                    assert (await client.get("/dashboard/")).status_code == 200
                await to_app.send({"type": "lifespan.shutdown"})
                assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"
                assert calls == ["startup", "shutdown"]
    finally:
        for stream in (to_app, app_receives, app_sends, from_app):
            stream.close()  # anyio warns of memory streams left open
        svc.meta.close()
