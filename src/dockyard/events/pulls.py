"""Pull events, written in batches off the request path.

Pulls change nothing, so their events need no transaction with a change; they are the
high-volume kind (a CI farm pulls thousands of layers a minute), so a pull only puts its
event on a bounded channel and returns. One task writes whatever has accumulated in one
transaction every ``flush_interval`` seconds. When the channel is full, events are
dropped and counted (``statistics().dropped``) rather than slowing pulls or growing memory.

The same transaction keeps the last-pulled times retention reads (``tags.pulled`` for a
pull by tag, ``manifests.pulled`` for any manifest pull): one update per distinct tag or
manifest in the batch, to the batch's latest time (``pull_times``), not one per pull.

A failed write (the database locked or unavailable) never ends ``run``: it runs in the
worker's lifespan nursery, so its death would fail the worker's lifespan and hypercorn
would kill the worker. The failure is logged and counted (``write_failures``, and the
batch's events in ``failed``), and the writer waits ``RETRY_AFTER`` before the next batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from dockyard.events.outage import log_failure
from dockyard.meta.records import Event, PullTime
from dockyard.meta.store import Database

MAX_BATCH = 1000
RETRY_AFTER = 1.0  # seconds before the next write after one failed

log = logging.getLogger("dockyard.events")


def pull_times(batch: list[Event]) -> tuple[list[PullTime], list[PullTime]]:
    """The latest pull of each tag and each manifest in ``batch`` (blob pulls: none)."""
    tags: dict[tuple[str, str, str], float] = {}
    manifests: dict[tuple[str, str, str], float] = {}
    for e in batch:
        if e.action != "pull" or e.digest is None:
            continue
        if e.body.get("target", {}).get("kind") != "manifest":
            continue
        ts = e.ts or time.time()  # 0: "when appended", as the event append reads it
        key = (e.repository, e.digest, e.digest)
        manifests[key] = max(manifests.get(key, ts), ts)
        if e.tag is not None:
            key = (e.repository, e.tag, e.digest)
            tags[key] = max(tags.get(key, ts), ts)
    return (
        [PullTime(r, ref, d, ts) for (r, ref, d), ts in tags.items()],
        [PullTime(r, ref, d, ts) for (r, ref, d), ts in manifests.items()],
    )


@dataclass(frozen=True, slots=True)
class PullEventStatistics:
    queued: int  # waiting in the channel
    written: int
    dropped: int  # refused: the channel was full, or the writer closed
    write_failures: int = 0  # transactions that failed
    failed: int = 0  # events lost with those transactions


class PullEventWriter:
    def __init__(
        self, db: Database, buffer: int, flush_interval: float, enabled: bool = True
    ) -> None:
        self._db = db
        self._enabled = enabled
        self._send, self._receive = anyio.create_memory_object_stream[Event](buffer)
        self._flush_interval = flush_interval
        self._written = 0
        self._dropped = 0
        self._write_failures = 0
        self._failed = 0
        self._finished = anyio.Event()
        self._closed = anyio.Event()

    def record(self, event: Event) -> None:
        if not self._enabled:
            return
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self._dropped += 1
        except anyio.ClosedResourceError:
            self._dropped += 1

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write batches until ``close`` is called, then write what is left and return.

        After the first event of a batch arrives, wait ``flush_interval`` for more (cut
        short by ``close``) before writing: under load a batch then holds what a whole
        interval brought, one transaction for hundreds of pulls. Writing as soon as
        anything was queued made batches of a few events and cost a transaction and two
        thread hops per handful of GETs (a fifth of a manifest GET's CPU, measured).
        """
        task_status.started()
        try:
            await self._write_batches()
        finally:
            # Closed, not left to the garbage collector (anyio warns of that); a pull
            # after a cancelled run is then dropped like one after ``close``.
            self._send.close()
            self._receive.close()
        self._finished.set()

    async def _write_batches(self) -> None:
        done = False
        while not done:
            batch: list[Event] = []
            try:
                batch.append(await self._receive.receive())
            except anyio.EndOfStream:
                done = True
            if not done and self._receive.statistics().current_buffer_used < MAX_BATCH:
                with anyio.move_on_after(self._flush_interval):
                    await self._closed.wait()
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except anyio.WouldBlock:
                    break
                except anyio.EndOfStream:
                    done = True
                    break
            if batch and not await self._write(batch) and not done:
                # Give a locked or unavailable database a moment (cut short by close).
                with anyio.move_on_after(RETRY_AFTER):
                    await self._closed.wait()

    async def _write(self, batch: list[Event]) -> bool:
        """Append ``batch`` in one transaction; False (logged and counted) if that failed.

        A failed batch is dropped, not retried: pull events are best-effort (a full channel
        drops them too), they record no change, and holding a batch for a database that
        keeps failing would only grow memory while the channel fills and drops anyway.
        Pushes, mounts and deletes are different: their events commit with the change.
        """
        try:
            with anyio.CancelScope(shield=True):
                tags, manifests = pull_times(batch)
                await self._db.run(self._db.meta.record_pulls, batch, tags, manifests)
        except Exception:
            log_failure(log, "writing %d pull events failed; they are dropped", len(batch))
            self._write_failures += 1
            self._failed += len(batch)
            return False
        self._written += len(batch)
        return True

    def close(self) -> None:
        self._send.close()
        self._closed.set()

    async def wait_finished(self) -> None:
        """Wait until ``run`` has written everything queued before ``close``."""
        await self._finished.wait()

    def statistics(self) -> PullEventStatistics:
        return PullEventStatistics(
            self._receive.statistics().current_buffer_used,
            self._written,
            self._dropped,
            self._write_failures,
            self._failed,
        )
