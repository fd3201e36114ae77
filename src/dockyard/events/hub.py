"""Live fan-out of the event log to subscribers in this process.

Every worker process runs one ``EventHub``. It tails the ``events`` table by id: it wakes
at once when this process appended events (``notify``) and otherwise polls every
``poll_interval`` seconds, which is how events written by other workers or instances
arrive. A store with ``EventWakeups`` (PostgreSQL) wakes it at once for those too: a
thread waits on the store and notifies the hub, which then polls only every
``fallback_poll_interval`` seconds, in case a wake-up was lost.

Each subscriber has a bounded channel; one that falls ``buffer`` events behind is
dropped and told the last id it processed (``SubscriberLagged``), so a slow consumer never
slows the registry or grows memory.

Replay then live, with no gap and no duplicate: a subscriber with ``since`` first reads the
log from the database until it reaches the hub's cursor, and registers for live events in
the same step (no await in between), so every later event reaches it through the channel;
ids it already saw are skipped.

A subscription may instead take live events through a ``deliver`` callback, called in
the hub's own task as each event is dispatched (the event feed writes a pre-built frame
to the socket there: no channel, no task wake-up per subscriber and event); it returns
False when the subscriber is too far behind, which cuts it off like a full channel. Each
event is matched once per distinct filter, not once per subscriber.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from dockyard.events.outage import log_failure
from dockyard.events.schema import EventFilter
from dockyard.meta.records import StoredEvent
from dockyard.meta.store import Database, EventWakeups

PAGE = 500
RETRY_AFTER = 1.0  # seconds between reads of the log after one failed
# Seconds one wait for a wake-up lasts: a cancelled hub leaves its waiting thread
# behind (it cannot be interrupted), for at most this long.
WAKEUP_SLICE = 1.0

log = logging.getLogger("dockyard.events")


class SubscriberLagged(Exception):
    """The subscriber fell too far behind; resume with ``since=last_id``."""

    def __init__(self, last_id: int) -> None:
        super().__init__(f"subscriber fell behind after event {last_id}")
        self.last_id = last_id


@dataclass(frozen=True, slots=True)
class HubStatistics:
    cursor: int
    subscribers: int
    dispatched: int
    lagged: int  # subscribers cut off for falling behind
    read_failures: int = 0  # polls of the log that failed (and were retried)
    # Events cut-off subscribers never got: those queued for them, and the one that did
    # not fit (they resume from their last id, so the events are not lost to them).
    dropped: int = 0
    # Of ``subscribers``, those whose live events go to a ``deliver`` callback (the feed
    # writes their frames straight to the socket) rather than through a channel.
    direct: int = 0


Deliver = Callable[[StoredEvent], bool]


class Subscription:
    def __init__(
        self,
        hub: EventHub,
        event_filter: EventFilter,
        since: int,
        buffer: int,
        deliver: Deliver | None = None,
    ) -> None:
        self.filter = event_filter
        self.last_id = since
        self._hub = hub
        self._deliver = deliver
        self._send, self._receive = anyio.create_memory_object_stream[StoredEvent](
            0 if deliver is not None else buffer
        )
        self.lagged = False
        self.dropped = 0  # events discarded when it was cut off

    def _offer(self, event: StoredEvent) -> bool:
        """Queue (or deliver) ``event``, which matches the filter; False if this
        subscriber is too far behind."""
        if event.id <= self.last_id:
            return True
        if self._deliver is not None:  # (EventHub._dispatch inlines this case)
            self.last_id = event.id
            if self._deliver(event):
                return True
            self.lagged = True
            self.dropped += 1
            return False
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.lagged = True
            self.dropped += 1  # this one
            self._send.close()
            # Drop what it has not taken: it is told to resume after the last event it
            # did take, at once (not after draining a buffer it is too slow for), and a
            # stalled client holds no buffer of events in memory meanwhile.
            while True:
                try:
                    self._receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                self.dropped += 1
            return False
        return True

    async def _replay(self) -> AsyncGenerator[StoredEvent, None]:
        db = self._hub.db
        await self._hub._catch_up_if_unheard()
        while True:
            rows = await db.run(db.meta.events_after, self.last_id, PAGE)
            for row in rows:
                self.last_id = row.id
                if self.filter.matches(row):
                    yield row
            if len(rows) < PAGE and self.last_id >= self._hub.cursor:
                self._hub._register(self)  # same step as the check: nothing slips between
                return

    def __aiter__(self) -> AsyncGenerator[StoredEvent, None]:
        return self.events()

    async def events(self) -> AsyncGenerator[StoredEvent, None]:
        """Replayed events, then live ones; close it (``aclosing``) if you stop early.
        With ``deliver``, only the replayed ones (live ones go to ``deliver``)."""
        async with aclosing(self._replay()) as replay:
            async for event in replay:
                yield event
        if self._deliver is not None:
            return
        async for event in self._receive:
            if event.id <= self.last_id:
                continue
            self.last_id = event.id
            yield event
        if self.lagged:
            raise SubscriberLagged(self.last_id)

    def close(self) -> None:
        self._hub._unregister(self)
        self._send.close()
        self._receive.close()


class EventHub:
    def __init__(
        self, db: Database, poll_interval: float = 0.05, fallback_poll_interval: float = 1.0
    ) -> None:
        self.db = db
        self.poll_interval = poll_interval
        self.fallback_poll_interval = fallback_poll_interval
        self.cursor = 0
        # The live subscribers by filter (each event is matched once per filter; a filter
        # with none left is removed, so an empty dict means no subscriber), and the
        # filter object of each distinct filter that subscriptions hold.
        self._by_filter: dict[EventFilter, dict[Subscription, None]] = {}
        self._filters: weakref.WeakValueDictionary[EventFilter, EventFilter] = (
            weakref.WeakValueDictionary()
        )
        self._wake = anyio.Event()
        # Set when someone starts listening (a subscriber, or a wait_past caller); with
        # nobody listening the hub reads nothing (see _tail).
        self._heard = anyio.Event()
        self._waiting_past = 0
        self._started = anyio.Event()
        self._advanced = anyio.Event()  # set (and replaced) when the cursor moves
        self._dispatched = 0
        self._lagged = 0
        self._read_failures = 0
        self._dropped = 0

    def notify(self) -> None:
        """This process appended events: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.cursor = await self.db.run(self.db.meta.last_event_id)
        meta = self.db.meta
        interval = self.poll_interval
        async with anyio.create_task_group() as nursery:
            if isinstance(meta, EventWakeups):
                interval = max(interval, self.fallback_poll_interval)
                nursery.start_soon(self._wait_for_wakeups, meta)
            self._started.set()
            task_status.started()
            await self._tail(interval)

    async def _wait_for_wakeups(self, wakeups: EventWakeups) -> None:
        """Notify the hub whenever the store says events were committed anywhere."""
        while True:
            try:
                woke = await anyio.to_thread.run_sync(
                    wakeups.wait_for_events, WAKEUP_SLICE, abandon_on_cancel=True
                )
            except Exception:
                log_failure(log, "waiting for event wake-ups failed; polling meanwhile")
                await anyio.sleep(RETRY_AFTER)
                continue
            if woke:
                self.notify()

    def _unheard(self) -> bool:
        return not self._by_filter and not self._waiting_past

    async def _catch_up_if_unheard(self) -> None:
        """With nobody listening the hub stops reading the log; a subscriber about to
        replay up to the cursor first brings it to the newest event (safe while nobody is
        registered: there is nobody to hand the events between to)."""
        if self._unheard():
            latest = await self.db.run(self.db.meta.last_event_id)
            if self._unheard():
                self.cursor = max(self.cursor, latest)

    async def _tail(self, interval: float) -> None:
        while True:
            if self._unheard():
                # Nobody to hand events to and nobody waiting past an id: no reads at all
                # (40 polls a second were 90% of an idle worker's CPU, a few CPU-us of
                # every request at a CI farm's request rates) until someone listens.
                self._heard = anyio.Event()
                await self._heard.wait()
            with anyio.move_on_after(interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            before = self.cursor
            failed = False
            try:
                if not self._by_filter:
                    # Nobody to hand rows to: learn the newest id instead of reading and
                    # decoding every row (pull events make this the common case).
                    latest = await self.db.run(self.db.meta.last_event_id)
                    if not self._by_filter:  # still none after the await
                        self.cursor = max(self.cursor, latest)
                while self._by_filter:
                    rows = await self.db.run(self.db.meta.events_after, self.cursor, PAGE)
                    for row in rows:
                        self._dispatch(row)
                    if len(rows) < PAGE:
                        break
            except Exception:
                # A failed read (database busy or unavailable) must not end the hub: it
                # runs in the worker's lifespan nursery, beside the pull-event writer.
                # The cursor only moves past dispatched events, so a retry misses nothing.
                log_failure(log, "reading the event log failed; retrying")
                self._read_failures += 1
                failed = True
            if self.cursor != before:
                self._advanced.set()
                self._advanced = anyio.Event()
            if failed:
                await anyio.sleep(RETRY_AFTER)

    def _dispatch(self, event: StoredEvent) -> None:
        self.cursor = event.id
        self._dispatched += 1
        # Subscribers mostly share a few filters: match once per filter, and skip the
        # subscribers of filters the event does not match.
        for event_filter, subs in list(self._by_filter.items()):
            if not event_filter.matches(event):
                continue
            eid = event.id
            for sub in list(subs):
                # Subscription._offer with its deliver case inlined: this loop runs once
                # per subscriber and event.
                if eid <= sub.last_id:
                    continue
                deliver = sub._deliver
                if deliver is None:
                    kept = sub._offer(event)
                else:
                    sub.last_id = eid
                    kept = deliver(event)
                    if not kept:
                        sub.lagged = True
                        sub.dropped += 1
                if not kept:  # cut off
                    self._unregister(sub)
                    self._lagged += 1
                    self._dropped += sub.dropped

    async def wait_past(self, event_id: int) -> int:
        """Wait until the hub has seen an event after ``event_id``; returns its cursor.

        A wake-up for readers that tail the log themselves (webhook delivery): they learn
        of new events as soon as subscribers do, without a subscription's buffer.
        """
        await self._started.wait()
        self._waiting_past += 1
        self._heard.set()
        try:
            while self.cursor <= event_id:
                await self._advanced.wait()
        finally:
            self._waiting_past -= 1
        return self.cursor

    def _register(self, sub: Subscription) -> None:
        self._by_filter.setdefault(sub.filter, {})[sub] = None
        self._heard.set()

    def _unregister(self, sub: Subscription) -> None:
        subs = self._by_filter.get(sub.filter)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self._by_filter[sub.filter]

    async def position(self) -> int:
        """The id of the newest committed event: a subscription with this ``since`` gets
        everything from now on.

        After everything committed, not only what this hub has dispatched: events another
        worker wrote since the last poll (or this one's still on their way to the hub)
        were made before now.
        """
        await self._started.wait()
        return max(self.cursor, await self.db.run(self.db.meta.last_event_id))

    @asynccontextmanager
    async def subscribe(
        self,
        event_filter: EventFilter,
        since: int | None = None,
        buffer: int = 1000,
        deliver: Deliver | None = None,
    ) -> AsyncIterator[Subscription]:
        """A subscription to events after ``since`` (None: from now on).

        Iterate it for events; iteration raises ``SubscriberLagged`` if it falls behind.
        With ``deliver`` it yields only the replayed events, and live ones are handed to
        ``deliver`` (see the module docstring).
        """
        await self._started.wait()
        if since is None:
            since = await self.position()
        # One filter object per distinct filter: the dispatch's lookup by filter then
        # mostly compares identical objects.
        event_filter = self._filters.setdefault(event_filter, event_filter)
        sub = Subscription(self, event_filter, since, buffer, deliver)
        try:
            yield sub
        finally:
            sub.close()

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            self.cursor,
            sum(len(subs) for subs in self._by_filter.values()),
            self._dispatched,
            self._lagged,
            self._read_failures,
            self._dropped,
            sum(1 for subs in self._by_filter.values() for sub in subs if sub._deliver is not None),
        )
