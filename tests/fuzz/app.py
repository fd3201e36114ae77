"""The registry app served in an event loop thread for a fuzz module: hypothesis drives
requests from the test thread (it cannot drive async tests directly). The loop runs on
the first of the test backends (DOCKYARD_TEST_BACKENDS, tests/conftest.py)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from dockyard.config import Settings
from tests.conftest import chosen_backends, make_client, open_services


class App:
    """A registry served in a thread of its own (an anyio blocking portal); ``request``
    is a blocking httpx request."""

    def __init__(self, settings: Settings, backend: str | None = None) -> None:
        self.settings = settings
        self.backend = backend or chosen_backends()[0]
        self._stack = ExitStack()

    def __enter__(self) -> App:
        portal: BlockingPortal = self._stack.enter_context(
            start_blocking_portal(backend=self.backend)
        )
        self._portal = portal
        self._stack.enter_context(portal.wrap_async_context_manager(self._serve()))
        return self

    @asynccontextmanager
    async def _serve(self) -> AsyncIterator[None]:
        # One task of the portal enters and leaves it (open_services has a task group).
        async with open_services(self.settings) as svc, make_client(svc) as client:
            self.client = client
            yield

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        call = functools.partial(self.client.request, method, url, **kwargs)
        return self._portal.call(call)
