"""The metadata conformance suite against each store (adding one is a line in STORES),
and what only SQLite has: upgrading old database files, inline reads retried when busy."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.meta import migrations
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.meta.store import Database
from tests.meta_conformance import MakeStore, MetaConformance
from tests.meta_conformance_cache import CacheConformance
from tests.meta_conformance_gc import CollectionConformance
from tests.meta_conformance_housekeeping import HousekeepingConformance
from tests.meta_conformance_retention import RetentionConformance


def sqlite_store(tmp_path: Path) -> MakeStore:
    return lambda clock: SQLiteMeta(tmp_path / "meta.sqlite3", clock=clock)


STORES: dict[str, Callable[[Path], MakeStore]] = {
    "sqlite": sqlite_store,
}


class TestMetadataStore(MetaConformance, HousekeepingConformance):
    @pytest.fixture(params=sorted(STORES))
    def make_store(self, request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
        return STORES[request.param](tmp_path)


class TestRetentionStore(RetentionConformance):
    @pytest.fixture(params=sorted(STORES))
    def make_store(self, request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
        return STORES[request.param](tmp_path)


class TestCacheStore(CacheConformance):
    @pytest.fixture(params=sorted(STORES))
    def make_store(self, request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
        return STORES[request.param](tmp_path)


def test_migrating_a_version_2_database_keeps_its_tags(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for script in migrations.MIGRATIONS[:2]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO repositories (id, name, created) VALUES (1, 'repo', 0)")
    conn.execute(
        "INSERT INTO manifests (repository_id, digest, media_type, size, payload, pushed)"
        " VALUES (1, 'sha256:m', 'application/json', 2, X'7b7d', 0)"
    )
    conn.execute(
        "INSERT INTO tags (repository_id, name, digest, pushed) VALUES (1, 'v1', 'sha256:m', 0)"
    )
    conn.execute("COMMIT")
    conn.close()

    meta = SQLiteMeta(path)
    meta.migrate()
    meta.migrate()
    tagged = meta.get_tagged_manifest("repo", "v1")
    assert tagged is not None and (tagged.digest, tagged.payload) == ("sha256:m", b"{}")
    meta.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(migrations.MIGRATIONS) == 7
    columns = [row[1] for row in conn.execute("PRAGMA table_info(tags)")]
    # Migration 3 dropped a pulled column that was never written; 5 adds the one retention
    # reads; 6 the time a cached tag was resolved upstream.
    assert columns == ["repository_id", "name", "digest", "pushed", "pulled", "resolved"]
    touched = conn.execute("SELECT touched FROM manifests WHERE digest = 'sha256:m'").fetchone()
    assert touched == (0,)  # an old manifest counts as touched when it was pushed
    conn.close()


async def test_inline_read_runs_on_the_calling_thread(tmp_path: Path) -> None:
    meta = SQLiteMeta(tmp_path / "m.sqlite3")
    meta.migrate()
    db = Database(meta, 2)
    seen: list[str] = []

    def where() -> bool:
        seen.append(threading.current_thread().name)
        return meta.repository_exists("nope")

    assert await db.read(where) is False
    assert seen == [threading.current_thread().name]
    meta.close()


async def test_busy_inline_read_is_retried_in_a_worker_thread(tmp_path: Path) -> None:
    meta = SQLiteMeta(tmp_path / "m.sqlite3")
    meta.migrate()
    db = Database(meta, 2)
    caller = threading.current_thread()
    calls: list[bool] = []

    def busy_on_the_loop() -> str:
        on_loop = threading.current_thread() is caller
        calls.append(on_loop)
        if on_loop:
            raise sqlite3.OperationalError("database is locked")
        return "answered"

    assert await db.read(busy_on_the_loop) == "answered"
    assert calls == [True, False]
    meta.close()


class TestMetadataStoreCollection(CollectionConformance):
    @pytest.fixture(params=sorted(STORES))
    def make_store(self, request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
        return STORES[request.param](tmp_path)
