"""The metadata conformance suite against a real PostgreSQL, and what only PostgreSQL
has: migrations kept in step with SQLite's, event ids in commit order, busy inline
reads, LISTEN/NOTIFY wake-ups, and a password that never shows."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from dockyard.meta import migrations as sqlite_migrations
from dockyard.meta.postgres import PostgresMeta
from dockyard.meta.postgres import migrations as pg_migrations
from dockyard.meta.records import BlobBeingDeleted, ReferencesGone
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.meta.store import MetadataStore
from tests.meta_conformance import T0, Clock, MakeStore, MetaConformance, digest, ev, manifest
from tests.meta_conformance_cache import CacheConformance
from tests.meta_conformance_gc import CollectionConformance, doom
from tests.meta_conformance_housekeeping import HousekeepingConformance
from tests.meta_conformance_retention import RetentionConformance
from tests.pgserver import PostgresServer

# Tables only PostgreSQL has, for its own bookkeeping (the migration count and the last
# event id handed out; SQLite keeps both in its file header and sqlite_sequence).
PG_ONLY = {"schema_version", "event_counter"}


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


class TestPostgresMeta(MetaConformance, HousekeepingConformance):
    @pytest.fixture
    def make_store(self, pg_url: str) -> MakeStore:
        return lambda clock: PostgresMeta(pg_url, clock=clock)


class TestPostgresRetentionStore(RetentionConformance):
    @pytest.fixture
    def make_store(self, pg_url: str) -> MakeStore:
        return lambda clock: PostgresMeta(pg_url, clock=clock)


class TestPostgresCacheStore(CacheConformance):
    @pytest.fixture
    def make_store(self, pg_url: str) -> MakeStore:
        return lambda clock: PostgresMeta(pg_url, clock=clock)


class TestPostgresCollection(CollectionConformance):
    @pytest.fixture
    def make_store(self, pg_url: str) -> MakeStore:
        return lambda clock: PostgresMeta(pg_url, clock=clock)


@pytest.fixture
def meta(pg_url: str) -> Iterator[PostgresMeta]:
    store = PostgresMeta(pg_url)
    store.migrate()
    yield store
    store.close()


def pg_columns(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        if table not in PG_ONLY:
            out.setdefault(table, []).append(column)
    return out


def sqlite_columns(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    out = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in sorted(tables)}
    conn.close()
    return out


def test_migrations_keep_both_dialects_in_step(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    assert len(pg_migrations.MIGRATIONS) == len(sqlite_migrations.MIGRATIONS)
    for version in range(1, len(pg_migrations.MIGRATIONS) + 1):
        url = postgres_server.new_database()
        with psycopg.connect(url, autocommit=True) as conn:
            assert pg_migrations.apply(conn, upto=version) == version
        path = tmp_path / f"v{version}.sqlite3"
        conn3 = sqlite3.connect(path, isolation_level=None)
        conn3.execute("BEGIN IMMEDIATE")
        for script in sqlite_migrations.MIGRATIONS[:version]:
            for statement in script.split(";"):
                if statement.strip():
                    conn3.execute(statement)
        conn3.execute("COMMIT")
        conn3.close()
        assert pg_columns(url) == sqlite_columns(path), f"after migration {version}"


def test_migrating_from_an_older_version_keeps_data(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        pg_migrations.apply(conn, upto=2)
        conn.execute("INSERT INTO repositories (id, name, created) VALUES (1, 'repo', 0)")
        conn.execute(
            "INSERT INTO manifests (repository_id, digest, media_type, size, payload, pushed)"
            " VALUES (1, 'sha256:m', 'application/json', 2, '\\x7b7d'::bytea, 0)"
        )
        conn.execute(
            "INSERT INTO tags (repository_id, name, digest, pushed, pulled)"
            " VALUES (1, 'v1', 'sha256:m', 0, 5)"
        )
    store = PostgresMeta(url)
    store.migrate()
    store.migrate()
    tagged = store.get_tagged_manifest("repo", "v1")
    assert tagged is not None and (tagged.digest, tagged.payload) == ("sha256:m", b"{}")
    store.close()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        assert row == (len(pg_migrations.MIGRATIONS),)


def test_processes_starting_at_once_migrate_once(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    stores = [PostgresMeta(url) for _ in range(6)]
    errors: list[BaseException] = []

    def migrate(store: PostgresMeta) -> None:
        try:
            store.migrate()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stores[0].link_blob("repo", digest("a"), 1, [ev("push-blob")])
    assert stores[5].linked_blob_size("repo", digest("a")) == 1
    for s in stores:
        s.close()


def test_event_ids_follow_commit_order(meta: PostgresMeta, pg_url: str) -> None:
    """An appender that has taken ids holds back the next one until it commits: a reader
    tailing the log never sees a higher id while a lower one may still commit."""
    other = PostgresMeta(pg_url)
    done: list[float] = []

    def append_second() -> None:
        other.append_events([ev("second")])
        done.append(time.monotonic())

    # An appender mid-transaction, exactly as core._append leaves it before its commit.
    with psycopg.connect(pg_url, autocommit=True) as raw:
        with raw.transaction():
            raw.execute("UPDATE event_counter SET last = last + 1")
            raw.execute("INSERT INTO events (id, ts, action, body) VALUES (1, 0, 'first', '{}')")
            t = threading.Thread(target=append_second)
            t.start()
            time.sleep(0.3)
            # The second appender waits for the first: nothing is visible yet, so a reader
            # at cursor 0 cannot move past id 1.
            assert done == [] and meta.events_after(0, 10) == []
            committed_at = time.monotonic()
        t.join(10)
    assert done and done[0] >= committed_at
    log = meta.events_after(0, 10)
    assert [(e.id, e.action) for e in log] == [(1, "first"), (2, "second")]
    other.close()


def test_inline_read_of_a_broken_connection_is_store_busy(meta: PostgresMeta) -> None:
    from dockyard.meta.records import StoreBusy

    meta.link_blob("repo", digest("a"), 3, [])
    with meta.inline_reads():
        assert meta.linked_blob_size("repo", digest("a")) == 3
    # Kill the inline connection from the server side, as a restart or failover would.
    conn = meta._local.inline_conn
    with psycopg.connect(meta.url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(StoreBusy), meta.inline_reads():
        meta.linked_blob_size("repo", digest("a"))
    # Worker-thread calls (the retry) go through the pool and still answer.
    assert meta.linked_blob_size("repo", digest("a")) == 3


def test_inline_read_gives_up_on_a_server_that_stops_answering(meta: PostgresMeta) -> None:
    """A hung database server (its process stopped; the kernel still takes the bytes):
    statement_timeout cannot fire, so the event loop's own deadline must."""
    import os
    import signal

    from dockyard.meta.postgres.core import INLINE_BACKOFF, INLINE_DEADLINE
    from dockyard.meta.records import StoreBusy

    meta.put_manifest(manifest("repo", "m", tags=["v1"]), [])
    with meta.inline_reads():
        found = meta.get_tagged_manifest("repo", "v1")
        assert found is not None and found.digest == digest("m")
        assert meta.get_tagged_manifest("repo", "v2") is None
        assert meta.get_manifest("repo", digest("other")) is None
        assert meta.get_tagged_manifest("repo", "v1\x00x") is None  # not cut to "v1"
    conn = meta._local.inline_conn
    backend = conn.info.backend_pid
    os.kill(backend, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusy), meta.inline_reads():
            meta.get_tagged_manifest("repo", "v1")
        waited = time.monotonic() - started
    finally:
        os.kill(backend, signal.SIGCONT)
    assert INLINE_DEADLINE * 0.9 < waited < INLINE_DEADLINE + 1.0
    assert conn.closed  # its statement may still be in flight: never reused
    # The retry in a worker thread answers; after the back-off a new inline connection
    # prepares its statements again.
    assert meta.get_tagged_manifest("repo", "v1") == found
    time.sleep(INLINE_BACKOFF + 0.1)
    for _ in range(50):
        try:
            with meta.inline_reads():
                assert meta.get_tagged_manifest("repo", "v1") == found
            break
        except StoreBusy:  # still connecting in its helper thread
            time.sleep(0.05)
    else:
        pytest.fail("inline reads did not come back")
    assert meta._local.inline_conn is not conn


def test_wait_for_events_wakes_on_another_handles_commit(meta: PostgresMeta, pg_url: str) -> None:
    other = PostgresMeta(pg_url)
    other.migrate()
    assert meta.wait_for_events(0.01) is True  # the first call starts listening
    assert meta.wait_for_events(0.05) is False
    started = time.monotonic()
    timer = threading.Timer(0.2, lambda: other.append_events([ev("push")]))
    timer.start()
    assert meta.wait_for_events(5.0) is True
    waited = time.monotonic() - started
    assert 0.15 < waited < 2.0
    # A change that appends no events sends no wake-up.
    other.link_blob("repo", digest("a"), 1, [])
    assert meta.wait_for_events(0.2) is False
    timer.join()
    other.close()


def test_password_never_in_repr(meta: PostgresMeta, postgres_server: PostgresServer) -> None:
    assert postgres_server.password in meta.url
    assert postgres_server.password not in repr(meta)
    assert "<redacted>" in repr(meta)


def test_same_answers_as_sqlite_for_byte_order(meta: PostgresMeta, tmp_path: Path) -> None:
    """Listings page in byte order whatever the database collation (COLLATE "C")."""
    lite = SQLiteMeta(tmp_path / "m.sqlite3")
    lite.migrate()
    names = ["b", "B", "a", "a-b", "a_b", "a.b", "Z", "é", "ab"]
    stores: list[MetadataStore] = [meta, lite]
    for store in stores:
        for name in names:
            store.put_manifest(manifest(name, "m", tags=[name, name + "x"]), [])
    assert meta.list_repositories(None, 100) == lite.list_repositories(None, 100)
    assert meta.list_repositories(None, 100) == sorted(names, key=str.encode)
    assert meta.list_tags("a", None, 10) == lite.list_tags("a", None, 10)
    lite.close()


def test_clock_reaches_leases(pg_url: str) -> None:
    clock = Clock()
    store = PostgresMeta(pg_url, clock=clock)
    store.migrate()
    store.create_upload("u", "repo", "sha256", {})
    assert store.claim_upload("u", 0, "a/1", 10)
    assert not store.claim_upload("u", 0, "b/1", 10)
    clock.advance(11)
    assert store.claim_upload("u", 0, "b/1", 10)
    store.close()


def test_inline_read_does_not_wait_for_a_lock(meta: PostgresMeta, pg_url: str) -> None:
    from dockyard.meta.records import StoreBusy

    meta.link_blob("repo", digest("a"), 3, [])
    with psycopg.connect(pg_url, autocommit=True) as locker, locker.transaction():
        locker.execute("LOCK TABLE blobs IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StoreBusy), meta.inline_reads():
            meta.linked_blob_size("repo", digest("a"))
        assert time.monotonic() - started < 2.0
    # The lock is gone: inline reads answer again once the back-off has passed.
    assert meta.linked_blob_size("repo", digest("a")) == 3


def test_webhooks_cli_reads_the_postgres_database(
    meta: PostgresMeta,
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from dockyard import cli

    meta.append_events([ev("push"), ev("push")])
    meta.webhook_init(["ci"])
    conf = tmp_path / "dockyard.toml"
    conf.write_text(
        f"[storage]\nroot = {json.dumps(str(tmp_path / 'data'))}\n"
        f"[database]\nurl = {json.dumps(pg_url)}\n"
        '[[webhooks]]\nname = "ci"\nurl = "http://127.0.0.1:9/hook"\n'
    )
    monkeypatch.setenv("DOCKYARD_CONFIG", str(conf))
    assert cli.main(["events", "webhooks", "list", "--json", "--config", str(conf)]) == 0
    (row,) = json.loads(capsys.readouterr().out)["endpoints"]
    assert (row["name"], row["cursor"], row["log_end"]) == ("ci", 2, 2)
    # No SQLite file was made in the data directory.
    assert not (tmp_path / "data" / "dockyard.sqlite3").exists()


def test_inline_read_never_waits_long_for_a_connection() -> None:
    """A database host that accepts TCP but never answers (a hung server, a black hole):
    the event loop gives up after a moment, not after the connect timeout."""
    import socket

    from dockyard.meta.records import StoreBusy

    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        port = mute.getsockname()[1]
        store = PostgresMeta(f"postgresql://nobody:pw@127.0.0.1:{port}/db")
        started = time.monotonic()
        with pytest.raises(StoreBusy), store.inline_reads():
            store.blob_size(digest("a"))
        assert time.monotonic() - started < 1.0
        store.close()


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` in a thread; its result (or exception) lands in the returned list."""
    out: list[object] = []

    def target() -> None:
        try:
            out.append(fn())
        except Exception as e:
            out.append(e)

    t = threading.Thread(target=target)
    t.start()
    return t, out


def test_a_push_holding_its_link_wins_over_a_waiting_sweep(pg_url: str) -> None:
    """READ COMMITTED: the collector's DELETE waits for the push's row lock, then re-checks
    its condition on the refreshed row and deletes nothing."""
    clock = Clock()
    meta = PostgresMeta(pg_url, clock=clock)
    meta.migrate()
    meta.link_blob("repo", digest("layer"), 5, [])
    rid = _repo_id(meta)
    with psycopg.connect(pg_url, autocommit=True) as raw:
        with raw.transaction():
            # What put_manifest's touch_references does, mid-transaction.
            raw.execute("UPDATE repository_blobs SET linked = %s", (T0 + 100,))
            t, out = _in_thread(lambda: meta.gc_delete_links(rid, [doom("layer", T0 + 50)]))
            time.sleep(0.3)
            assert out == []  # waiting for the row lock
        t.join(10)
    assert out == [[]]
    assert meta.linked_blob_size("repo", digest("layer")) == 5
    meta.close()


def test_a_push_waiting_for_a_sweep_fails_cleanly(pg_url: str) -> None:
    """The collector deletes first (uncommitted); the push's touch waits, finds the link
    gone and raises ReferencesGone: no manifest, no event."""
    meta = PostgresMeta(pg_url, clock=Clock())
    meta.migrate()
    meta.link_blob("repo", digest("layer"), 5, [])
    pushed = dataclasses.replace(
        manifest("repo", "m", blobs=[digest("layer")], tags=["v1"]),
        required_blobs=[digest("layer")],
    )
    with psycopg.connect(pg_url, autocommit=True) as raw:
        with raw.transaction():
            raw.execute("DELETE FROM repository_blobs")
            t, out = _in_thread(lambda: meta.put_manifest(pushed, [ev("push")]))
            time.sleep(0.3)
            assert out == []
        t.join(10)
    assert len(out) == 1 and isinstance(out[0], ReferencesGone)
    assert meta.get_manifest("repo", digest("m")) is None and meta.last_event_id() == 0
    meta.close()


def test_a_claim_holding_the_blob_row_wins_over_a_waiting_mark(pg_url: str) -> None:
    clock = Clock()
    meta = PostgresMeta(pg_url, clock=clock)
    meta.migrate()
    meta.claim_blob(digest("b"), 3, 60)
    with psycopg.connect(pg_url, autocommit=True) as raw:
        with raw.transaction():
            # What claim_blob (or a mount's link_stored_blob) does, mid-transaction.
            raw.execute("UPDATE blobs SET touched = %s", (T0 + 100,))
            t, out = _in_thread(lambda: meta.gc_mark_blobs([doom("b", T0 + 50)]))
            time.sleep(0.3)
            assert out == []
        t.join(10)
    assert out == [[]] and meta.blob_size(digest("b")) == 3
    assert meta.gc_pending_deletions(10) == []
    meta.close()


def _repo_id(meta: PostgresMeta) -> int:
    found = meta.gc_repository("repo")
    assert found is not None
    return found.id


CLAIM_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"


def test_a_mark_waits_for_a_claim_of_new_bytes(pg_url: str) -> None:
    """An upload re-sending bytes a crash left without rows claims the digest (a NEW blob
    row, which locks nothing) while the storage walk marks those bytes: the digest lock
    orders them, and the walk then sees the row and leaves the bytes alone."""
    meta = PostgresMeta(pg_url, clock=Clock())
    meta.migrate()
    with psycopg.connect(pg_url, autocommit=True) as raw:
        with raw.transaction():
            # What claim_blob does, mid-transaction.
            raw.execute(CLAIM_LOCK, (digest("b"),))
            raw.execute(
                "INSERT INTO blobs (digest, size, created, touched) VALUES (%s, 3, %s, %s)",
                (digest("b"), T0, T0),
            )
            t, out = _in_thread(lambda: meta.gc_mark_stray_bytes([digest("b")]))
            time.sleep(0.3)
            assert out == []
        t.join(10)
    assert out == [[]] and meta.gc_pending_deletions(10) == []
    meta.close()


def test_a_claim_waits_for_a_mark_and_sees_it(pg_url: str) -> None:
    """The collector marks first (uncommitted): the claim waits for it, then sees the
    deletion row and refuses, instead of re-creating the row over bytes about to go."""
    meta = PostgresMeta(pg_url, clock=Clock())
    meta.migrate()
    meta.claim_blob(digest("b"), 3, 60)
    assert meta.job_acquire("gc", "collector/1", 60)
    with psycopg.connect(pg_url, autocommit=True) as raw:
        with raw.transaction():
            # What gc_mark_blobs does, mid-transaction.
            raw.execute(CLAIM_LOCK, (digest("b"),))
            raw.execute("DELETE FROM blobs WHERE digest = %s", (digest("b"),))
            raw.execute(
                "INSERT INTO blob_deletions (digest, marked) VALUES (%s, %s)", (digest("b"), T0)
            )
            t, out = _in_thread(lambda: meta.claim_blob(digest("b"), 3, 60))
            time.sleep(0.3)
            assert out == []
        t.join(10)
    assert len(out) == 1 and isinstance(out[0], BlobBeingDeleted)
    assert meta.blob_size(digest("b")) is None
    meta.close()
