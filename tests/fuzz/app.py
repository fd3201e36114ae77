"""The registry app served in a trio thread for a fuzz module: hypothesis drives requests
from the test thread (it cannot drive trio tests directly)."""

from __future__ import annotations

import functools
import threading
from typing import Any

import httpx
import trio

from dockyard.config import Settings
from tests.conftest import make_client, open_services


class App:
    """A registry served in a trio thread; ``request`` is a blocking httpx request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        async with open_services(self.settings) as svc, make_client(svc) as client:
            self.client = client
            self.token = trio.lowlevel.current_trio_token()
            self.stop = trio.Event()
            self._ready.set()
            await self.stop.wait()

    def __enter__(self) -> App:
        self._thread.start()
        assert self._ready.wait(30), "the registry did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self.stop.set, trio_token=self.token)
        self._thread.join(30)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        call = functools.partial(self.client.request, method, url, **kwargs)
        return trio.from_thread.run(call, trio_token=self.token)
