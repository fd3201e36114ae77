"""A graceful stop of ``dockyard serve`` tells connected feeds to go away at once.

Issue 14: with a subscriber connected, SIGTERM waited the whole ``graceful_timeout``
(the feed never ends by itself) and then dropped the connection without a close frame.
Now each feed is closed with 1001 (going away) as soon as the stop begins, so clients
reconnect elsewhere and the server exits promptly. ``graceful_timeout`` is 30 s here;
the bound on the exit is a correctness bound (well under it), not a timing benchmark.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from tests.e2e.test_event_feed import check_log
from tests.feedclient import open_feed
from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e

GRACEFUL_TIMEOUT = 30.0
PROMPT = 10.0  # seconds: a third of graceful_timeout, many times what a stop takes


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_graceful_stop_closes_feeds_with_1001(tmp_path: Path, workers: int) -> None:
    server = DockyardServer(
        tmp_path / "data",
        workers=workers,
        env={"DOCKYARD_SERVER_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT)},
    )
    server.start()
    try:
        assert server.proc is not None
        proc = server.proc
        async with open_feed(server.port, {"since": 0}) as one, open_feed(server.port) as two:
            started = trio.current_time()
            os.killpg(proc.pid, signal.SIGTERM)  # as systemd stops the unit
            for feed in (one, two):
                close, _ = await feed.closed(timeout=PROMPT)
                assert close.code == 1001, close
            code = await trio.to_thread.run_sync(proc.wait, GRACEFUL_TIMEOUT + 10)
            took = trio.current_time() - started
        assert code == 0
        assert took < PROMPT, f"the stop took {took:.1f} s with feeds connected"
    finally:
        server.kill()
    check_log(server)
