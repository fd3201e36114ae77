"""The event feed against real ``dockyard serve`` processes.

- With ``--workers 2`` an event made in either process reaches subscribers connected to
  both (which process holds a websocket is read from /proc, as in ``test_workers.py``).
- A subscriber that resumes with ``since`` after the server was killed (SIGKILL) and
  started again on the same port loses and duplicates nothing, including events made
  while it was away.
- A plain-TCP feed's frames are written straight to its socket (``FrameWriter``) on
  every worker, trio's and asyncio's (uvloop: scripts/test's second pass), not through
  ASGI: the server's ``dockyard_feed_direct_subscribers`` gauge says so.
- ``dockyard events tail --json`` as a subprocess prints pushes, survives such a restart,
  resumes by itself after being cut off as lagged (close code 4008), and exits quietly on
  Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from dockyard.events.schema import native
from dockyard.meta.records import Event
from dockyard.meta.sqlite import SQLiteMeta
from tests.conftest import fake_digest, random_blob
from tests.e2e.conftest import server_events
from tests.e2e.test_workers import fresh_request, serving_pid
from tests.feedclient import Feed, open_feed
from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e


def check_log(server: DockyardServer) -> None:
    text = server.log_path.read_text(errors="replace")
    if "Traceback" in text:
        pytest.fail(f"dockyard logged an unhandled error:\n{text[-8000:]}", pytrace=False)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[DockyardServer]:
    """A one-worker server this test may kill and start again (same port and data)."""
    server = DockyardServer(
        tmp_path / "data",
        env={"DOCKYARD_SERVER_INSTANCE": "e2e", "DOCKYARD_EVENTS_FEED_BUFFER": "8"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
    check_log(server)


async def push(server: DockyardServer, repo: str) -> str:
    """One blob pushed on a connection of its own; its digest."""
    data = random_blob(64)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        r = await http.post(
            f"/v2/{repo}/blobs/uploads/",
            params={"digest": "sha256:" + hashlib.sha256(data).hexdigest()},
            content=data,
        )
        assert r.status_code == 201, r.text
        return str(r.headers["docker-content-digest"])


def logged(server: DockyardServer, after: int = 0) -> list[dict[str, Any]]:
    return [native(e) for e in server_events(server) if e.id > after]


# -- several worker processes


async def test_events_reach_subscribers_on_every_worker(registry2: DockyardServer) -> None:
    if sys.platform != "linux":
        pytest.skip("which worker holds a connection is read from /proc (Linux)")
    async with AsyncExitStack() as stack:
        feeds: list[tuple[Feed, int]] = []
        # Connections are spread over the workers by the kernel: open until both serve.
        for _ in range(40):
            feed = await stack.enter_async_context(
                open_feed(registry2.port, {"repository": "workers/*"})
            )
            pid = serving_pid(registry2, feed.local_port)
            assert pid is not None, "no worker holds the connection"
            feeds.append((feed, pid))
            if len(feeds) >= 4 and len({p for _, p in feeds}) == 2:
                break
        pids = {p for _, p in feeds}
        assert len(pids) == 2, f"every feed connection went to one worker: {pids}"

        # Pushes on fresh connections, so they too are made by both workers. The kernel
        # may hand a run of connections to one worker (seen: 12 in a row on a loaded
        # 2-core machine), so allow as many tries as the feeds get.
        digests: list[str] = []
        push_pids: set[int | None] = set()
        for i in range(40):
            data = random_blob(64 + i)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            r, pid = await fresh_request(
                registry2,
                "POST",
                f"/v2/workers/r{i % 3}/blobs/uploads/",
                params={"digest": digest},
                content=data,
            )
            assert r.status_code == 201, r.text
            digests.append(digest)
            push_pids.add(pid)
            if i >= 5 and pids <= push_pids:
                break
        assert pids <= push_pids, f"the pushes were not made by both workers: {push_pids}"

        expected = [
            e for e in logged(registry2) if e["target"]["repository"].startswith("workers/")
        ]
        assert [e["target"]["digest"] for e in expected] == digests
        for feed, _ in feeds:
            assert await feed.events(len(digests), timeout=10) == expected
            assert await feed.quiet(0.1) == []


# -- how frames are written


def feed_gauges(server: DockyardServer) -> tuple[float, float]:
    """The server's ``dockyard_feed_subscribers`` and ``dockyard_feed_direct_subscribers``."""
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    found = {s.name: s.value for f in text_string_to_metric_families(r.text) for s in f.samples}
    return (
        found.get("dockyard_feed_subscribers", 0.0),
        found.get("dockyard_feed_direct_subscribers", 0.0),
    )


async def test_plain_tcp_feeds_are_written_straight_to_their_socket(
    own_server: DockyardServer,
) -> None:
    # Through ASGI ``websocket.send`` a message costs several times the server CPU
    # (docs/events.md, Capacity): a worker that falls back to it must fail here.
    server = own_server
    async with open_feed(server.port, {"repository": "direct/*"}) as feed:
        digest = await push(server, "direct/a")
        assert (await feed.event())["target"]["digest"] == digest
        with trio.fail_after(15):  # the gauges are sampled every second
            while (gauges := feed_gauges(server))[0] != 1:  # noqa: ASYNC110 (a remote gauge)
                await trio.sleep(0.2)
        assert gauges == (1, 1), "the feed is sent through ASGI, not by a FrameWriter"


# -- restarts


async def test_resume_with_since_across_a_restart(own_server: DockyardServer) -> None:
    server = own_server
    before = [await push(server, "restart/a") for _ in range(3)]
    async with open_feed(server.port, {"since": 0}) as feed:
        got = await feed.events(2)  # the third is left unread: in flight at the crash
        server.kill()
        close, _ = await feed.closed(timeout=10)
        assert close.code == 1006  # no close frame: the process died
    last = got[-1]["id"]

    server.start()
    during = [await push(server, "restart/a") for _ in range(3)]  # before it reconnects
    async with open_feed(server.port, {"since": last}) as feed:
        assert feed.welcome["since"] == last
        got += await feed.events(4)
        after = [await push(server, "restart/a") for _ in range(2)]
        got += await feed.events(2)
        assert await feed.quiet(0.2) == []

    assert [e["id"] for e in got] == list(range(1, 9))
    assert [e["target"]["digest"] for e in got] == before + during + after
    assert got == logged(server)
    assert all(e["source"] == {"instance": "e2e"} for e in got)


# -- dockyard events tail


class Lines:
    """Lines from a child's stdout, read as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self, timeout: float = 15.0) -> str:
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError(f"stdout ended; left: {self.buffer!r}")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    async def events(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        out = []
        for _ in range(count):
            doc = json.loads(await self.next(timeout))
            assert isinstance(doc, dict)
            out.append(doc)
        return out


BURST = 30_000  # events, about 15 MB of feed messages


async def test_tail_json_survives_restart_and_lag(own_server: DockyardServer) -> None:
    server = own_server
    cmd = [
        sys.executable,
        "-m",
        "dockyard.cli",
        "events",
        "tail",
        "--url",
        server.url,
        "--since",
        "0",
        "--repo",
        "tail/*",
        "--json",
    ]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = b""
    try:
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        pushed = [await push(server, "tail/a") for _ in range(3)]
        await push(server, "elsewhere")  # filtered out by --repo
        printed = await lines.events(3)

        # A crash and a restart on the same port; pushes before the tail is back.
        server.kill()
        server.start()
        pushed += [await push(server, "tail/b") for _ in range(3)]
        printed += await lines.events(3)

        # A burst far beyond the 8-event feed buffer (written as another worker's
        # events would be): the server cuts the tail off (4008); it resumes by itself.
        # Far beyond what the loopback socket's buffers hold, too: the feed writes
        # frames straight to the socket, and only what the kernel does not take counts
        # against the buffer (600 events, about 300 KB, often all fitted).
        meta = SQLiteMeta(server.data_dir / "dockyard.sqlite3")
        try:
            burst = [Event("pull", "tail/c", fake_digest(), "application/octet-stream", 9)] * BURST
            meta.append_events(burst)
        finally:
            meta.close()
        printed += await lines.events(BURST)
        pushed.append(await push(server, "tail/a"))
        printed += await lines.events(1)

        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await proc.wait()
        assert proc.stderr is not None
        async with proc.stderr:
            while chunk := await proc.stderr.receive_some(65536):
                stderr += chunk
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stderr.decode(errors="replace")
    assert proc.returncode == 130, text
    assert "Traceback" not in text, text
    assert "4008" in text, text  # it was cut off as lagged, and said so

    expected = [e for e in logged(server) if e["target"]["repository"].startswith("tail/")]
    assert printed == expected  # every event once, in order, nothing else
    assert [e["target"]["digest"] for e in printed if e["action"] == "push"] == pushed


async def test_tail_rejected_filter_exits_2(own_server: DockyardServer) -> None:
    done = await trio.run_process(
        [
            sys.executable,
            "-m",
            "dockyard.cli",
            "events",
            "tail",
            "--url",
            own_server.url,
            "--action",
            "fetch",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 2
    assert b"unknown action 'fetch'" in done.stderr


async def test_feeds_that_left_do_not_hold_a_graceful_stop(tmp_path: Path) -> None:
    # graceful_timeout is how long a stop waits for work in flight: subscribers that have
    # gone are none (a websocket ping loop sleeping until its next ping kept each closed
    # connection's task alive for up to the ping interval, and every stop waited).
    server = DockyardServer(tmp_path / "data", env={"DOCKYARD_SERVER_GRACEFUL_TIMEOUT": "60"})
    server.start()
    try:
        for _ in range(3):
            async with open_feed(server.port, {"since": 0}):
                pass
        await trio.sleep(0.2)
        started = trio.current_time()
        server.stop(timeout=90)
        assert trio.current_time() - started < 10, "the stop waited for departed subscribers"
    finally:
        server.kill()
    check_log(server)
