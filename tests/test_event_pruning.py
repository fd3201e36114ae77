"""Pruning the event log: the pruner with a controllable clock, a webhook endpoint that
holds events back, the scheduled run in the server, `dockyard events prune`, the feed and
the dashboard after a prune, and the query plans on SQLite (indexed, never a scan)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio

from dockyard.core.prune import DAY, EventPruner
from dockyard.meta.prune import PruneSQL
from dockyard.meta.records import Event
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.services import Services
from tests.conftest import events, make_client, make_settings, open_services, push_image
from tests.feedclient import open_feed, serve_app


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def old(action: str, days_ago: float, repository: str = "app") -> Event:
    return Event(action, repository, body={"target": {}}, ts=time.time() - days_ago * DAY)


def pruner(svc: Services, clock: Clock | None = None, **kw: float) -> EventPruner:
    args = {"keep_pulls_days": 30.0, "keep_days": 0.0, "batch_size": 3, **kw}
    return EventPruner(
        svc.db,
        instance="test",
        keep_pulls_days=args["keep_pulls_days"],
        keep_days=args["keep_days"],
        batch_size=int(args["batch_size"]),
        clock=clock or time.time,
    )


async def test_pruner_deletes_by_age_with_a_controllable_clock(services: Services) -> None:
    t0 = time.time()
    services.meta.append_events([old("pull", 0)] * 5 + [old("push", 0)] * 2)
    services.meta.append_events([old("pull", 0)])  # the newest event
    clock = Clock(t0 + 29 * DAY)
    assert (await pruner(services, clock).run()).deleted == 0  # type: ignore[union-attr]
    clock.now = t0 + 31 * DAY
    dry = await pruner(services, clock).run(dry_run=True)
    assert dry is not None and (dry.deleted_pulls, dry.deleted_others) == (5, 0)
    assert len(events(services)) == 8
    report = await pruner(services, clock).run()
    assert report is not None
    assert (report.deleted_pulls, report.deleted_others, report.batches) == (5, 0, 2)
    assert [e.action for e in events(services)] == ["push", "push", "pull"]
    report = await pruner(services, clock, keep_days=10).run()
    assert report is not None and report.deleted_others == 2
    assert [e.id for e in events(services)] == [8]


async def test_one_pruner_at_a_time(services: Services) -> None:
    assert await services.db.run(services.meta.job_acquire, "prune", "other/x", 60)
    assert await pruner(services).run() is None
    await services.db.run(services.meta.job_release, "prune", "other/x")
    assert await pruner(services).run() is not None


async def test_the_server_prunes_on_its_schedule(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_EVENTS_PRUNE_INTERVAL="0.2")
    async with open_services(settings) as svc:
        svc.meta.append_events([old("pull", 40), old("pull", 40), old("push", 40)])
        svc.meta.append_events([old("push", 0)])
        with anyio.fail_after(10):
            while True:  # polls the database: nothing to wait on in this process
                if len(events(svc)) <= 2:
                    break
                await anyio.sleep(0.05)
        assert [(e.id, e.action) for e in events(svc)] == [(3, "push"), (4, "push")]


async def test_a_webhook_endpoint_behind_keeps_its_events(services: Services) -> None:
    services.meta.append_events([old("pull", 40)] * 2)
    services.meta.webhook_init(["hook"])  # starts after event 2
    services.meta.append_events([old("pull", 40)] * 3 + [old("push", 0)])
    report = await pruner(services).run()
    assert report is not None and report.deleted_pulls == 2
    assert report.held_back and report.held_by == "webhook:hook" and report.floor == 3
    assert [e.id for e in events(services)] == [3, 4, 5, 6]


async def test_the_feed_replays_what_remains_after_a_prune(services: Services) -> None:
    services.meta.append_events([old("pull", 40)] * 4 + [old("push", 0), old("push", 0)])
    await pruner(services).run()
    async with serve_app(services.app) as server, open_feed(server.port, {"since": 1}) as feed:
        replayed = await feed.events(2)
    assert [e["id"] for e in replayed] == [5, 6]


async def test_the_dashboard_counts_what_is_left(services: Services) -> None:
    """Old pulls pruned from the start of the log: the window (bisected by id over what
    remains) still counts every event in it."""
    services.meta.append_events([old("pull", 40)] * 3)
    async with make_client(services) as client:
        await push_image(client, "app", "v1")
        services.meta.append_events([old("pull", 0.001)] * 2)
        report = await pruner(services).run()
        assert report is not None and report.deleted_pulls == 3
        stats = (await client.get("/v2/_dockyard/stats", params={"window": 3600})).json()
    assert stats["activity"]["actions"]["push"] == 4  # config, 2 layers, the manifest
    assert stats["activity"]["actions"]["pull"] == 2
    assert stats["last_id"] == 9


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    return subprocess.run(
        [sys.executable, "-m", "dockyard.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_prune_dry_run_and_json(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    meta = SQLiteMeta(root / "dockyard.sqlite3")
    meta.migrate()
    meta.append_events([old("pull", 40)] * 3 + [old("delete", 400), old("push", 0)])
    meta.close()
    env = {"DOCKYARD_STORAGE_ROOT": str(root), "DOCKYARD_EVENTS_KEEP_DAYS": "365"}
    dry = run_cli("events", "prune", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert (doc["dry_run"], doc["deleted_pulls"], doc["deleted_others"]) == (True, 3, 1)
    done = run_cli("events", "prune", env=env)
    assert done.returncode == 0, done.stderr
    assert "deleted 4 events (3 pull, 1 other)" in done.stdout
    meta = SQLiteMeta(root / "dockyard.sqlite3")
    assert [e.id for e in meta.events_after(0, 10)] == [5]
    meta.close()
    missing = run_cli("events", "prune", env={"DOCKYARD_STORAGE_ROOT": str(tmp_path / "x")})
    assert missing.returncode == 1 and "no database" in missing.stderr


def test_cli_usage(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    meta = SQLiteMeta(root / "dockyard.sqlite3")
    meta.migrate()
    shared = "sha256:" + "a" * 64
    meta.link_blob("team/a", shared, 1000, [])
    meta.link_blob("team/b", shared, 1000, [])
    meta.link_blob("solo", "sha256:" + "b" * 64, 10, [])
    meta.close()
    result = run_cli("usage", "--json", env={"DOCKYARD_STORAGE_ROOT": str(root)})
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["total"]["bytes"] == 1010
    assert [(u["name"], u["bytes"]) for u in doc["namespaces"]] == [("team", 1000), ("solo", 10)]
    assert [u["bytes"] for u in doc["repositories"]] == [1000, 1000, 10]
    text = run_cli("usage", env={"DOCKYARD_STORAGE_ROOT": str(root)})
    assert "1000 B  team" in text.stdout


# -- query plans


def plan(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> str:
    rows = conn.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall()
    return "\n".join(str(r[-1]) for r in rows)


def test_prune_and_stats_queries_use_indexes(tmp_path: Path) -> None:
    meta = SQLiteMeta(tmp_path / "m.sqlite3")
    meta.migrate()
    meta.append_events([old("pull", 40)] * 50)
    meta.close()
    conn = sqlite3.connect(tmp_path / "m.sqlite3")
    conn.execute("ANALYZE")
    sql = PruneSQL("?")
    cut = (1.0, 1.0)
    plans = {
        "end": plan(conn, sql.end_by_time(), (1.0,)),
        "batch": plan(conn, sql.batch_end(), (0, 100, *cut, 10)),
        "delete": plan(
            conn,
            sql.delete().replace("DELETE FROM", "SELECT * FROM").replace(" RETURNING action", ""),
            (0, 10, *cut),
        ),
        "count": plan(conn, sql.count(), (100, *cut)),
        "stats window": plan(
            conn,
            "SELECT action, COUNT(*) FROM events WHERE id >= ? AND id <= ? AND ts >= ?"
            " GROUP BY action",
            (1, 50, 1.0),
        ),
    }
    conn.close()
    for name, found in plans.items():
        events_lines = [line for line in found.splitlines() if "events" in line]
        assert events_lines, (name, found)
        for line in events_lines:
            assert line.startswith("SEARCH"), (name, found)  # not "SCAN events"
    assert "events_by_ts" in plans["end"]
