"""The feed through plain ASGI ``websocket.send``: how it is served over TLS, HTTP/2 or by
an ASGI server without dockyard's connection hooks (``http/websocket.py``).

``tests/test_events.py`` runs against ``serve_app``, whose hypercorn has the hooks, so
there every plain-TCP feed writes its frames straight to the socket (``FrameWriter``).
Here the app is wrapped so that the scope carries no hypercorn connection, and the same
subscription must behave the same: replay then live, filters, lagged with 4008.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dockyard.events.feed import CLOSE_LAGGED
from dockyard.http.websocket import CONNECTION_KEY
from dockyard.services import Services
from tests.conftest import make_settings, open_services, push_blob, random_blob
from tests.feedclient import LoopbackServer, Message, Receive, Send, open_feed, serve_app


class _WithoutConnection:
    """The app, given scopes without the hypercorn connection (as over TLS)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.websockets = 0

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        state = scope.get("state")
        if isinstance(state, dict) and CONNECTION_KEY in state:
            scope = {**scope, "state": {k: v for k, v in state.items() if k != CONNECTION_KEY}}
        if scope["type"] == "websocket":
            self.websockets += 1
        await self.app(scope, receive, send)


@pytest.fixture
async def plain(services: Services) -> AsyncIterator[tuple[LoopbackServer, _WithoutConnection]]:
    app = _WithoutConnection(services.app)
    async with serve_app(app) as server:
        yield server, app


async def test_replay_then_live_through_asgi(
    services: Services, plain: tuple[LoopbackServer, _WithoutConnection]
) -> None:
    server, app = plain
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        first = await push_blob(http, "team/a", b"first")
        await push_blob(http, "other", b"not team")
        async with open_feed(server.port, {"since": 0, "repository": "team/*"}) as feed:
            assert (await feed.event())["target"]["digest"] == first
            live = await push_blob(http, "team/a", b"live")
            await push_blob(http, "other", b"still not team")
            assert (await feed.event())["target"]["digest"] == live
            assert await feed.quiet(0.2) == []
    assert app.websockets == 1


async def test_a_slow_subscriber_is_cut_off_through_asgi(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_EVENTS_FEED_BUFFER="8")
    async with (
        open_services(settings) as svc,
        serve_app(_WithoutConnection(svc.app)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        open_feed(server.port, {"since": 0}, receive_buffer=2048) as slow,
    ):
        pushed = 0
        with anyio.fail_after(40):
            while svc.hub.statistics().lagged == 0:
                await push_blob(http, "busy", random_blob(64))
                pushed += 1
                assert pushed < 5000, "the stalled subscriber was never cut off"
        close, before = await slow.closed(timeout=20)
        assert close.code == CLOSE_LAGGED
        got = [m["event"]["id"] for m in before[:-1]]
        assert got == list(range(1, len(got) + 1)) and len(got) < pushed
        assert before[-1] == {"type": "lagged", "last_id": got[-1]}
