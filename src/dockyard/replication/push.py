"""Push-mode replication: the event log copied to remote registries, at least once.

Shaped like webhook delivery (``events/webhooks.py``; read it first): one consumer per
(push rule, target), named ``replication:<rule>:<target url>[/<prefix>]``, whose cursor,
lease and failed events are rows of the webhook tables (``webhook_cursors``,
``webhook_failures``; the same store methods). Sharing them gives replication the event
pruner's floor (``meta/prune.py``): no event a target has not received is pruned.

Every worker process runs a task per consumer; the tasks of one consumer, in every worker
and instance, compete for its lease; the holder copies and renews it every third of
``lease_seconds``, the others stand by. The holder's loop::

    copy the consumer's events marked for redelivery
    read the log after the cursor, a page at a time
    for each event the rule wants (rules.RuleMatcher.wanted):
        copy the image (copy.copy_image) to the target
        the target unavailable (transport, timeout, 5xx, 429; or this database or blob
        store): wait backoff_initial doubling to backoff_max and try again, forever,
        the cursor still (an outage delays, loses nothing)
        a referrer whose subject the target does not have: nothing (it goes with its
        subject if that is copied later)
        any other failure (Rejected, Denied, an unparsable manifest, ...): an attempt;
        after max_attempts record it as failed and move on (the image deleted here
        since: recorded as failed at once, no retry can bring it back)
        done: cursor := event id
    nothing new: wait for the event hub or IDLE_CHECK seconds

A crash repeats at most the image in flight (a copy is idempotent: what the target has is
not sent again). Deletes are not replicated. A new consumer starts at the end of the log
as it is when a server first runs with it (``webhook_init``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from dockyard.config import ReplicationEndpoint, ReplicationRule
from dockyard.core.errors import RegistryError
from dockyard.core.registry import Registry
from dockyard.events.hub import PAGE, EventHub
from dockyard.events.outage import log_failure
from dockyard.meta.records import StoredEvent, StoreUnavailable
from dockyard.meta.store import Database
from dockyard.replication.copy import (
    ContentGone,
    CopyReport,
    InvalidContent,
    LocalSource,
    MountMemory,
    RemoteDestination,
    copy_image,
    remote_repository,
)
from dockyard.replication.metrics import ReplicationMetrics
from dockyard.replication.rules import RuleMatcher, WantedImage, consumer_name
from dockyard.storage.base import BlobNotFound, BlobStore, StorageError
from dockyard.upstream.client import RegistryClient, Unavailable, UpstreamError

log = logging.getLogger("dockyard.replication")

# Seconds between looks at redelivery requests and at a lease held by another process.
IDLE_CHECK = 1.0
# Failures that are about the image or the target's answer: logged without a traceback.
EXPECTED_FAILURES = (UpstreamError, ContentGone, InvalidContent, RegistryError)


def is_transient(error: BaseException) -> bool:
    """A failure that says nothing about the image: retried without counting attempts."""
    if isinstance(error, BlobNotFound):
        return False
    return isinstance(error, Unavailable | StoreUnavailable | StorageError)


@dataclass(slots=True)
class ConsumerStatistics:
    holding_lease: bool = False
    images: int = 0
    manifests: int = 0
    blobs: int = 0
    mounted: int = 0
    bytes: int = 0
    retries: int = 0
    failed_events: int = 0


@dataclass
class Consumer:
    rule: ReplicationRule
    target: ReplicationEndpoint
    name: str
    matcher: RuleMatcher
    mounts: MountMemory
    stats: ConsumerStatistics


class ReplicationPusher:
    """Copies the event log to every push rule's targets; ``run`` in a nursery."""

    def __init__(
        self,
        db: Database,
        hub: EventHub,
        registry: Registry,
        storage: BlobStore,
        rules: Sequence[ReplicationRule],
        *,
        instance: str,
        lease_seconds: float,
        metrics: ReplicationMetrics | None = None,
    ) -> None:
        self.db = db
        self.hub = hub
        self.source = LocalSource(registry, storage)
        self.lease_seconds = lease_seconds
        self.metrics = metrics
        # The instance name first: `dockyard serve` frees leases that start with it.
        self.lease = f"{instance}/{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.consumers = [
            Consumer(
                rule,
                target,
                consumer_name(rule, target),
                RuleMatcher(rule),
                MountMemory(),
                ConsumerStatistics(),
            )
            for rule in rules
            if rule.mode == "push"
            for target in rule.targets
        ]

    def statistics(self) -> dict[str, ConsumerStatistics]:
        return {c.name: dataclasses.replace(c.stats) for c in self.consumers}

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.consumers:
            task_status.started()
            return
        # Before the server answers requests: pushes from now on reach new targets.
        await self.db.run(self.db.meta.webhook_init, [c.name for c in self.consumers])
        async with trio.open_nursery() as nursery:
            for consumer in self.consumers:
                nursery.start_soon(self._consumer, consumer, name=consumer.name)
            task_status.started()

    async def _consumer(self, c: Consumer) -> None:
        client = RegistryClient.from_settings(c.target)
        try:
            while True:
                try:
                    cursor = await self._acquire(c.name)
                except Exception:
                    log_failure(log, "%s: taking the lease failed; will retry", c.name)
                    cursor = None
                if cursor is None:
                    await trio.sleep(IDLE_CHECK)
                    continue
                log.info("%s: replicating from event %d", c.name, cursor)
                c.stats.holding_lease = True
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._keep_lease, c.name, nursery.cancel_scope)
                        await self._follow(c, client, cursor)
                        nursery.cancel_scope.cancel()
                finally:
                    c.stats.holding_lease = False
                log.warning("%s: lost the lease; standing by", c.name)
        finally:
            with trio.move_on_after(2) as scope:
                scope.shield = True
                await client.aclose()
                try:
                    await self.db.run(self.db.meta.webhook_release, c.name, self.lease)
                except Exception:  # it expires by itself
                    log_failure(log, "%s: releasing the lease failed", c.name)

    async def _acquire(self, name: str) -> int | None:
        meta = self.db.meta
        if not await self.db.run(meta.webhook_lease_free, name, self.lease):
            return None
        return await self.db.run(meta.webhook_acquire, name, self.lease, self.lease_seconds)

    async def _keep_lease(self, name: str, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(self.lease_seconds / 3)
            try:
                held = await self.db.run(
                    self.db.meta.webhook_renew, name, self.lease, self.lease_seconds
                )
            except Exception:
                log_failure(log, "%s: renewing the lease failed", name)
                continue
            if not held:
                scope.cancel()
                return

    async def _follow(self, c: Consumer, client: RegistryClient, cursor: int) -> None:
        """Copy while holding the lease; returns when a write finds the lease gone."""
        db, meta = self.db, self.db.meta
        destination = RemoteDestination(client, c.mounts)
        handled = saved = cursor
        while True:
            try:
                for event_id in await db.run(meta.webhook_to_redeliver, c.name, 100):
                    if not await self._redeliver(c, destination, event_id):
                        return
                rows = await db.run(meta.events_after, handled, PAGE)
                for row in rows:
                    wanted = c.matcher.wanted(row)
                    if wanted is not None:
                        if not await self._copy_one(c, destination, row, wanted):
                            return
                        saved = row.id
                    handled = row.id
                if handled != saved:  # events the rule does not want: move past them
                    if not await db.run(meta.webhook_advance, c.name, self.lease, handled, False):
                        return
                    saved = handled
            except Exception:
                log_failure(log, "%s: replication loop failed; retrying", c.name)
                await trio.sleep(IDLE_CHECK)
                continue
            if rows:
                continue
            with trio.move_on_after(IDLE_CHECK):
                await self.hub.wait_past(handled)

    async def _copy_one(
        self, c: Consumer, destination: RemoteDestination, event: StoredEvent, wanted: WantedImage
    ) -> bool:
        attempts, error = await self._copy(c, destination, event.id, wanted)
        meta = self.db.meta
        if error is None:
            # Shielded: the copy is done, so a graceful stop must not keep the cursor back.
            with trio.CancelScope(shield=True):
                advanced = await self.db.run(
                    meta.webhook_advance, c.name, self.lease, event.id, True
                )
            return advanced
        log.error(
            "%s: event %d (%s@%s) failed %d times, giving up (last error: %s)",
            c.name,
            event.id,
            wanted.repository,
            wanted.digest,
            attempts,
            error,
        )
        c.stats.failed_events += 1
        if self.metrics is not None:
            self.metrics.failures.labels(c.rule.name, c.target.url).inc()
        return await self.db.run(
            meta.webhook_failed, c.name, self.lease, event.id, attempts, error, True
        )

    async def _redeliver(self, c: Consumer, destination: RemoteDestination, event_id: int) -> bool:
        meta = self.db.meta
        event = await self.db.run(meta.event, event_id)
        wanted = None if event is None else c.matcher.wanted(event)
        attempts: int
        error: str | None
        if wanted is None:
            attempts, error = 0, "the event is no longer in the event log"
        else:
            log.info("%s: copying event %d again", c.name, event_id)
            attempts, error = await self._copy(c, destination, event_id, wanted)
        if error is None:
            return await self.db.run(meta.webhook_redelivered, c.name, self.lease, event_id)
        return await self.db.run(
            meta.webhook_failed, c.name, self.lease, event_id, attempts, error, False
        )

    async def _copy(
        self, c: Consumer, destination: RemoteDestination, event_id: int, wanted: WantedImage
    ) -> tuple[int, str | None]:
        """Copy until done or ``max_attempts`` countable failures: (attempts, last error)."""
        rule = c.rule
        remote = remote_repository(c.target.prefix, wanted.repository)
        delay = rule.backoff_initial
        attempts = 0
        while True:
            try:
                report = CopyReport()
                # A referrer goes where its subject went: one of an image the rule does not
                # copy stays here (and one pushed before its subject is copied with it).
                if wanted.subject is not None and not await destination.has_manifest(
                    remote, wanted.subject
                ):
                    log.info(
                        "%s: event %d: the subject of referrer %s is not on the target; not copied",
                        c.name,
                        event_id,
                        wanted.digest,
                    )
                    return attempts + 1, None
                for tag in wanted.tags or (None,):
                    report.add(
                        await copy_image(
                            self.source,
                            destination,
                            wanted.repository,
                            remote,
                            wanted.digest,
                            tag,
                            referrers=rule.referrers,
                        )
                    )
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                if is_transient(e):
                    c.stats.retries += 1
                    if self.metrics is not None:
                        self.metrics.retries.labels(rule.name, c.target.url).inc()
                    log.warning(
                        "%s: event %d: %s; retrying in %.3gs", c.name, event_id, error, delay
                    )
                else:
                    attempts += 1
                    if not isinstance(e, EXPECTED_FAILURES):
                        log.exception("%s: event %d: unexpected failure", c.name, event_id)
                    # Deleted here since: final (content is committed before its event,
                    # and a push again is a new event), so no retry would help.
                    if attempts >= rule.max_attempts or isinstance(e, ContentGone):
                        return attempts, error
                    log.warning(
                        "%s: event %d attempt %d/%d failed (%s); retrying in %.3gs",
                        c.name,
                        event_id,
                        attempts,
                        rule.max_attempts,
                        error,
                        delay,
                    )
                await trio.sleep(delay)
                delay = min(delay * 2, rule.backoff_max)
                continue
            self._count(c, report)
            log.info(
                "%s: copied %s@%s%s to %s (%d manifests, %d blobs, %d mounted, %d bytes)",
                c.name,
                wanted.repository,
                wanted.digest,
                f" ({', '.join(wanted.tags)})" if wanted.tags else "",
                remote,
                report.manifests,
                report.blobs,
                report.mounted,
                report.bytes,
            )
            return attempts + 1, None

    def _count(self, c: Consumer, report: CopyReport) -> None:
        s = c.stats
        s.images += 1
        s.manifests += report.manifests
        s.blobs += report.blobs
        s.mounted += report.mounted
        s.bytes += report.bytes
        if self.metrics is not None:
            self.metrics.copied(c.rule.name, c.target.url, report)
