"""One consumer of the durable event log, at least once: the cursor, the lease and the
loop that webhook endpoints (``events/webhooks.py``) and push replication
(``replication/push.py``) share; each brings a ``Handler`` that says which events it
wants and what handling one means.

Deliveries read the ``events`` table, not an in-memory queue: every change commits its
event with the change, so what the log holds is exactly what happened, and a restart or
a crash loses no event the consumer has not yet handled.

A consumer is a row of ``webhook_cursors`` (its cursor, its lease) and its given-up
events are rows of ``webhook_failures``, whatever kind of consumer it is (the event
pruner's floor, ``meta/prune.py``, so covers every consumer). Every worker process runs
one ``LogConsumer`` per consumer; those of one consumer, in every worker and instance
sharing the database, compete for its lease; the holder handles events, renews the lease
every third of ``lease_seconds``, and the others stand by, taking over when the lease is
released (a graceful stop) or expires (a crash; ``dockyard serve`` also frees its own
instance's leases when it starts). Consumers never wait for one another.

The holder's loop::

    handle the consumer's events marked for redelivery
    read the log after the cursor, a page at a time
    for each event the handler wants:
        handle it (the handler retries as it sees fit)
        done:     cursor := event id (shielded: a graceful stop arriving after the
                  handling must not leave the cursor behind)
        gave up:  record (consumer, event, attempts, last error, time) as failed and
                  cursor := event id, in one transaction
    events nobody wants: cursor := the last of them
    nothing new: wait for the event hub (new events, at once) or IDLE_CHECK seconds

Every write is conditional on still holding the lease, so a process that lost it (it
stalled past its expiry and another process took over) changes nothing and stops. The
cursor moves only after the event was handled or recorded as failed: a crash repeats at
most the event in flight, never skips one. Events are handled in log order, except
redelivered ones, which are handled when asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import anyio

from dockyard.events.hub import PAGE, EventHub
from dockyard.events.outage import log_failure
from dockyard.meta.records import StoredEvent
from dockyard.meta.store import Database

# Seconds between looks at redelivery requests and at a lease held by another process.
IDLE_CHECK = 1.0
# Failed events handled again per look at the redelivery requests.
REDELIVER_BATCH = 100

W = TypeVar("W")


class Handler(Protocol[W]):
    """What one consumer does with the events it wants (``W``: what ``wants`` found in an
    event, handed to ``handle``)."""

    name: str  # the consumer's row (webhook_cursors.name)
    label: str  # how logs name it ("webhook hook-1", "replication:rule:url")

    def wants(self, event: StoredEvent) -> W | None:
        """What to do with ``event``, or None: not this consumer's."""
        ...

    async def handle(self, event: StoredEvent, work: W) -> tuple[int, str | None]:
        """Handle one event, retrying as the handler sees fit: (attempts, None) when done,
        (attempts, last error) when it gave up."""
        ...

    async def aclose(self) -> None:
        """Free what the handler holds (its HTTP client); called once, shielded."""
        ...


class LogConsumer(Generic[W]):
    def __init__(
        self,
        db: Database,
        hub: EventHub,
        handler: Handler[W],
        *,
        lease: str,
        lease_seconds: float,
        log: logging.Logger,
        holding: Callable[[bool], None] = lambda held: None,
    ) -> None:
        self.db = db
        self.hub = hub
        self.handler = handler
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.log = log
        self._holding = holding  # told when this process takes and loses the lease

    async def run(self) -> None:
        label = self.handler.label
        try:
            while True:
                try:
                    cursor = await self._acquire()
                except Exception:
                    log_failure(self.log, "%s: taking the lease failed; will retry", label)
                    cursor = None
                if cursor is None:
                    await anyio.sleep(IDLE_CHECK)
                    continue
                self.log.info("%s: handling events from %d", label, cursor)
                self._holding(True)
                try:
                    async with anyio.create_task_group() as nursery:
                        nursery.start_soon(self._keep_lease, nursery.cancel_scope)
                        await self._follow(cursor)
                        nursery.cancel_scope.cancel()
                finally:
                    self._holding(False)
                self.log.warning("%s: lost the lease; standing by", label)
        finally:
            # A graceful stop hands the consumer to another process at once.
            with anyio.move_on_after(2) as scope:
                scope.shield = True
                await self.handler.aclose()
                try:
                    await self.db.run(self.db.meta.webhook_release, self.handler.name, self.lease)
                except Exception:  # it expires by itself
                    log_failure(self.log, "%s: releasing the lease failed", label)

    async def _acquire(self) -> int | None:
        """Take the lease if it is free or expired (a read first: standing by is cheap)."""
        meta, name = self.db.meta, self.handler.name
        if not await self.db.run(meta.webhook_lease_free, name, self.lease):
            return None
        return await self.db.run(meta.webhook_acquire, name, self.lease, self.lease_seconds)

    async def _keep_lease(self, scope: anyio.CancelScope) -> None:
        meta, name = self.db.meta, self.handler.name
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            try:
                held = await self.db.run(meta.webhook_renew, name, self.lease, self.lease_seconds)
            except Exception:  # e.g. the database is busy: the next renewal may succeed
                log_failure(self.log, "%s: renewing the lease failed", self.handler.label)
                continue
            if not held:
                scope.cancel()
                return

    async def _follow(self, cursor: int) -> None:
        """Handle events while holding the lease; returns when a write finds it gone."""
        db, meta, name = self.db, self.db.meta, self.handler.name
        handled = saved = cursor  # handled in memory / recorded in the database
        while True:
            try:
                for event_id in await db.run(meta.webhook_to_redeliver, name, REDELIVER_BATCH):
                    if not await self._redeliver(event_id):
                        return
                rows = await db.run(meta.events_after, handled, PAGE)
                for row in rows:
                    work = self.handler.wants(row)
                    if work is not None:
                        if not await self._handle_one(row, work):
                            return
                        saved = row.id
                    handled = row.id
                if handled != saved:  # events nobody wants: move past them too
                    if not await db.run(meta.webhook_advance, name, self.lease, handled, False):
                        return
                    saved = handled
            except Exception:  # a bug or a database error: log it, keep the consumer going
                log_failure(self.log, "%s: the loop failed; retrying", self.handler.label)
                await anyio.sleep(IDLE_CHECK)
                continue
            if rows:
                continue
            with anyio.move_on_after(IDLE_CHECK):
                await self.hub.wait_past(handled)

    async def _handle_one(self, event: StoredEvent, work: W) -> bool:
        """Handle ``event`` and record the outcome; False: the lease is gone."""
        meta, name = self.db.meta, self.handler.name
        attempts, error = await self.handler.handle(event, work)
        if error is None:
            # Shielded: the event is handled, so a graceful stop arriving now must not
            # keep the cursor from moving (the next holder would handle it again).
            with anyio.CancelScope(shield=True):
                advanced = await self.db.run(meta.webhook_advance, name, self.lease, event.id, True)
            return advanced
        self.log.error(
            "%s: event %d failed %d times, giving up (last error: %s)",
            self.handler.label,
            event.id,
            attempts,
            error,
        )
        return await self.db.run(
            meta.webhook_failed, name, self.lease, event.id, attempts, error, True
        )

    async def _redeliver(self, event_id: int) -> bool:
        meta, name = self.db.meta, self.handler.name
        event = await self.db.run(meta.event, event_id)
        work = None if event is None else self.handler.wants(event)
        attempts: int
        error: str | None
        if event is None or work is None:
            attempts, error = 0, "the event is no longer in the event log"
        else:
            self.log.info("%s: handling event %d again", self.handler.label, event_id)
            attempts, error = await self.handler.handle(event, work)
        if error is None:
            return await self.db.run(meta.webhook_redelivered, name, self.lease, event_id)
        self.log.error("%s: event %d failed again: %s", self.handler.label, event_id, error)
        return await self.db.run(
            meta.webhook_failed, name, self.lease, event_id, attempts, error, False
        )
