"""Pull events, written in batches off the request path.

Pulls change nothing, so their events need no transaction with a change; they are the
high-volume kind (a CI farm pulls thousands of layers a minute), so a pull only puts its
event on a bounded channel and returns. One task writes whatever has accumulated in one
transaction every ``flush_interval`` seconds. When the channel is full, events are
dropped and counted (``statistics().dropped``) rather than slowing pulls or growing memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from dockyard.meta.sqlite import Database, Event

MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class PullEventStatistics:
    queued: int
    written: int
    dropped: int


class PullEventWriter:
    def __init__(
        self, db: Database, buffer: int, flush_interval: float, enabled: bool = True
    ) -> None:
        self._db = db
        self._enabled = enabled
        self._send, self._receive = trio.open_memory_channel[Event](buffer)
        self._flush_interval = flush_interval
        self._written = 0
        self._dropped = 0
        self._finished = trio.Event()

    def record(self, event: Event) -> None:
        if not self._enabled:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self._dropped += 1
        except trio.ClosedResourceError:
            self._dropped += 1

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until ``close`` is called, then write what is left and return."""
        task_status.started()
        done = False
        while not done:
            batch: list[Event] = []
            with trio.move_on_after(self._flush_interval):
                try:
                    batch.append(await self._receive.receive())
                except trio.EndOfChannel:
                    done = True
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
                except trio.EndOfChannel:
                    done = True
                    break
            if batch:
                with trio.CancelScope(shield=True):
                    await self._db.run(self._db.meta.append_events, batch)
                self._written += len(batch)
        self._finished.set()

    def close(self) -> None:
        self._send.close()

    async def wait_finished(self) -> None:
        """Wait until ``run`` has written everything queued before ``close``."""
        await self._finished.wait()

    def statistics(self) -> PullEventStatistics:
        return PullEventStatistics(
            self._receive.statistics().current_buffer_used, self._written, self._dropped
        )
