"""A PostgreSQL outage after start: the store raises ``StoreUnavailable`` (not psycopg's
errors), a request gets a 503 with Retry-After, background tasks log one line without a
traceback, and all of it recovers when the database is reachable again. The database is
made unreachable by cutting a ``TcpRelay`` between the store and a real PostgreSQL."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from dockyard.meta.postgres import PostgresMeta
from dockyard.meta.records import StoreUnavailable
from tests.conftest import make_client, make_settings, open_services
from tests.meta_conformance import ev
from tests.pgserver import PostgresServer
from tests.tcprelay import TcpRelay


@pytest.fixture
def relay(postgres_server: PostgresServer) -> Iterator[tuple[TcpRelay, str]]:
    """A relay to a new database, and the database's URL through it."""
    url = urlsplit(postgres_server.new_database())
    assert url.hostname and url.port
    with TcpRelay(url.hostname, url.port) as relay:
        credentials = url.netloc.rpartition("@")[0]
        yield relay, urlunsplit(url._replace(netloc=f"{credentials}@{relay.address}"))


def until_it_works(call: object, timeout: float = 15.0) -> None:
    """The pool reconnects in the background, with a backoff: retry for a while."""
    assert callable(call)
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_lost_database_is_store_unavailable_and_recovers(
    relay: tuple[TcpRelay, str], postgres_server: PostgresServer
) -> None:
    tcp, url = relay
    meta = PostgresMeta(url, busy_timeout=1.0)
    try:
        meta.migrate()
        meta.append_events([ev("push", "before")])
        tcp.cut()
        for call in (meta.last_event_id, lambda: meta.append_events([ev("push", "during")])):
            with pytest.raises(StoreUnavailable) as raised:
                call()
            assert "database unavailable" in str(raised.value)
            assert postgres_server.password not in str(raised.value)
        tcp.heal()
        until_it_works(lambda: meta.append_events([ev("push", "after")]))
        assert [e.repository for e in meta.events_after(0, 10)] == ["before", "after"]
    finally:
        meta.close()


async def test_requests_get_503_and_background_tasks_log_one_line(
    relay: tuple[TcpRelay, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tcp, url = relay
    settings = make_settings(
        tmp_path / "data",
        DOCKYARD_DATABASE_URL=url,
        DOCKYARD_DATABASE_BUSY_TIMEOUT="1",
        DOCKYARD_EVENTS_FALLBACK_POLL_INTERVAL="0.2",
    )
    caplog.set_level(logging.WARNING, logger="dockyard")
    async with (
        open_services(settings) as svc,
        make_client(svc) as client,
        anyio.create_task_group() as listeners,
    ):
        # Someone waiting for events (as a webhook deliverer does): a hub nobody listens
        # to reads nothing, so its reads could not fail.
        listeners.start_soon(svc.hub.wait_past, 10**12)
        r = await client.get("/v2/outage/tags/list")
        assert r.status_code == 404, r.text  # the database answers
        await anyio.to_thread.run_sync(tcp.cut)
        r = await client.get("/v2/outage/tags/list")
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "database unavailable" in r.text
        # The event hub's poll fails too: a warning, no traceback.
        for _ in range(100):
            if any("reading the event log failed" in m for m in caplog.messages):
                break
            await anyio.sleep(0.1)
        await anyio.to_thread.run_sync(tcp.heal)
        for _ in range(75):
            r = await client.get("/v2/outage/tags/list")
            if r.status_code != 503:
                break
            await anyio.sleep(0.2)
        assert r.status_code == 404, r.text
        listeners.cancel_scope.cancel()
    assert any("reading the event log failed" in m for m in caplog.messages)
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert any("database failed in GET /v2/outage/tags/list" in r.getMessage() for r in failures)
    assert failures and all(r.exc_info is None and r.levelno == logging.WARNING for r in failures)
