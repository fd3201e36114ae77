"""A subscriber without a query string gets every event from the moment it connected.

The server waits up to ``SUBSCRIBE_WAIT`` seconds for an optional ``subscribe`` message;
events committed during that wait are delivered once the subscription is known (issue
14: they were dropped, the subscription started "from now on" after the wait). A late
subscribe message with ``since`` still replays from there, and its filter applies to
what happened during the wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from dockyard.events.feed import SUBSCRIBE_WAIT
from dockyard.services import Services
from tests.conftest import push_blob
from tests.feedclient import LoopbackServer, open_feed, serve_app


@pytest.fixture
async def server(services: Services) -> AsyncIterator[LoopbackServer]:
    async with serve_app(services.app) as s:
        yield s


@pytest.fixture
async def http(server: LoopbackServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c


async def test_events_during_the_subscribe_wait_are_delivered(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    before = await push_blob(http, "early", b"before the connection")
    with anyio.fail_after(SUBSCRIBE_WAIT + 10):
        async with open_feed(server.port, welcome=False) as feed:
            # The handshake is done: these happen while the server waits for a message.
            during = [await push_blob(http, "early", f"during {i}".encode()) for i in range(3)]
            welcome = await feed.message(SUBSCRIBE_WAIT + 5)
            assert welcome["type"] == "welcome", welcome
            got = [e["target"]["digest"] for e in await feed.events(3)]
            assert got == during
            assert before not in got
            after = await push_blob(http, "early", b"after the welcome")
            assert (await feed.event())["target"]["digest"] == after


async def test_a_late_subscribe_message_filters_the_wait_and_replays_its_since(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    first = await push_blob(http, "team/a", b"first")
    since = services.meta.last_event_id() - 1
    with anyio.fail_after(SUBSCRIBE_WAIT + 10):
        async with (
            open_feed(server.port, welcome=False) as filtered,
            open_feed(server.port, welcome=False) as replaying,
        ):
            during = await push_blob(http, "team/a", b"during")
            await push_blob(http, "other", b"not team")
            await anyio.sleep(SUBSCRIBE_WAIT / 4)
            await filtered.ws.send_message('{"type": "subscribe", "repository": "team/*"}')
            await replaying.ws.send_message(f'{{"type": "subscribe", "since": {since}}}')
            assert (await filtered.message())["type"] == "welcome"
            assert (await filtered.event())["target"]["digest"] == during
            assert await filtered.quiet(0.2) == []
            assert (await replaying.message())["since"] == since
            got = [e["target"]["digest"] for e in await replaying.events(3)]
            assert got[:2] == [first, during]
