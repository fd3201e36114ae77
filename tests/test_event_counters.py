"""The pull-event writer and the event hub keep running through failures, and count
what they drop in their ``statistics()``; the one list of event actions."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

from dockyard.actions import ACTIONS
from dockyard.events.hub import EventHub
from dockyard.events.pulls import PullEventWriter
from dockyard.events.schema import EventFilter
from dockyard.meta.records import Event, PullTime
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.meta.store import Database


def pull(digest: str) -> Event:
    return Event("pull", "app", digest, "application/octet-stream", 1, body={}, ts=1.0)


@pytest.fixture
def meta(tmp_path: Path) -> SQLiteMeta:
    meta = SQLiteMeta(tmp_path / "dockyard.sqlite3", 1.0)
    meta.migrate()
    return meta


async def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if condition():
                return
            await anyio.sleep(0.005)


async def test_pull_writer_survives_a_failed_write(
    meta: SQLiteMeta, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first batch fails as a locked database would; the writer must log it, count it
    # and keep going (it runs in the worker's lifespan nursery: its death is the worker's).
    real = meta.record_pulls  # the writer's one call: events and pulled times together
    calls: list[int] = []

    def flaky(
        events: Sequence[Event], tags: Sequence[PullTime], manifests: Sequence[PullTime]
    ) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        real(events, tags, manifests)

    monkeypatch.setattr(meta, "record_pulls", flaky)
    monkeypatch.setattr("dockyard.events.pulls.RETRY_AFTER", 0.01)
    writer = PullEventWriter(Database(meta, 2), buffer=100, flush_interval=0.01)
    try:
        async with anyio.create_task_group() as nursery:
            await nursery.start(writer.run)
            writer.record(pull("sha256:lost"))
            await wait_until(lambda: calls)
            writer.record(pull("sha256:kept"))
            await wait_until(lambda: writer.statistics().written == 1)
            writer.close()
            await writer.wait_finished()
        stats = writer.statistics()
        assert (stats.written, stats.write_failures, stats.failed) == (1, 1, 1)
        assert [e.digest for e in meta.events_after(0, 10)] == ["sha256:kept"]
    finally:
        meta.close()


async def test_pull_writer_counts_events_dropped_when_its_buffer_is_full(
    meta: SQLiteMeta,
) -> None:
    writer = PullEventWriter(Database(meta, 2), buffer=2, flush_interval=0.01)
    try:
        for i in range(5):  # nothing is writing yet: from the third on, events find a full buffer
            writer.record(pull(f"sha256:{i}"))
        assert (writer.statistics().queued, writer.statistics().dropped) == (2, 3)
        writer.close()
        writer.record(pull("sha256:late"))  # after close: dropped too
        assert writer.statistics().dropped == 4
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(writer.run)
            await writer.wait_finished()
        assert writer.statistics().written == 2
    finally:
        meta.close()


async def test_hub_counts_the_events_a_cut_off_subscriber_never_got(meta: SQLiteMeta) -> None:
    hub = EventHub(Database(meta, 2), poll_interval=0.01)
    got: list[int] = []
    try:
        async with anyio.create_task_group() as nursery:
            await nursery.start(hub.run)
            async with hub.subscribe(EventFilter(), buffer=2) as sub:

                async def stalled_reader() -> None:
                    async with aclosing(sub.events()) as events:
                        async for event in events:
                            got.append(event.id)
                            await anyio.sleep_forever()  # takes one event, then stalls

                nursery.start_soon(stalled_reader)
                await wait_until(lambda: hub.statistics().subscribers == 1)
                meta.append_events([pull("sha256:first")])
                hub.notify()
                await wait_until(lambda: got)
                # 2 fit in its channel, the third does not: it is cut off, 3 dropped;
                # the last two are never offered to it.
                meta.append_events([pull(f"sha256:{i}") for i in range(5)])
                hub.notify()
                await wait_until(lambda: hub.statistics().lagged == 1)
                stats = hub.statistics()
                assert (stats.subscribers, stats.dropped, stats.cursor) == (0, 3, 6)
                nursery.cancel_scope.cancel()
    finally:
        meta.close()


def test_the_dashboard_lists_the_same_actions() -> None:
    import dockyard

    script = (Path(dockyard.__file__).parent / "dashboard" / "dashboard.js").read_text()
    assert f"const ACTIONS = {json.dumps(list(ACTIONS))};" in script


async def test_a_hub_nobody_listens_to_reads_nothing(meta: SQLiteMeta) -> None:
    """No subscriber and nobody waiting past an id: no reads of the log at all (it polled
    40 times a second); a subscriber or a waiter that comes later misses nothing."""
    reads: list[str] = []
    hub = EventHub(Database(meta, 2, lambda name, _s, _f: reads.append(name)), poll_interval=0.01)
    try:
        async with anyio.create_task_group() as nursery:
            await nursery.start(hub.run)
            reads.clear()
            meta.append_events([pull("sha256:while-unheard")])
            hub.notify()
            await anyio.sleep(0.3)  # 30 polls' worth
            assert reads == []
            with anyio.fail_after(5):
                assert await hub.wait_past(0) == 1
            async with hub.subscribe(EventFilter(), since=0) as sub:
                got: list[str | None] = []

                async def read() -> None:
                    async with aclosing(sub.events()) as events:
                        async for event in events:
                            got.append(event.digest)

                nursery.start_soon(read)
                await wait_until(lambda: got == ["sha256:while-unheard"])
                meta.append_events([pull("sha256:live")])  # another process's: no notify
                await wait_until(lambda: got == ["sha256:while-unheard", "sha256:live"])
                nursery.cancel_scope.cancel()
    finally:
        meta.close()
