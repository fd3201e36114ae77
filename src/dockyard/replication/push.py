"""Push-mode replication: the event log copied to remote registries, at least once.

One consumer of the log (``events/consumer.py``: cursor, lease, the holder's loop,
redelivery) per (push rule, target), named ``replication:<rule>:<target url>[/<prefix>]``,
whose cursor, lease and failed events are rows of the webhook tables, as every
consumer's are: replication shares the event pruner's floor (``meta/prune.py``), so no
event a target has not received is pruned. Handling one event the rule wants
(rules.RuleMatcher.wanted)::

    copy the image (copy.copy_image) to the target
    the target unavailable (transport, timeout, 5xx, 429; or this database or blob
    store): wait backoff_initial doubling to backoff_max and try again, forever,
    the cursor still (an outage delays, loses nothing)
    a referrer whose subject the target does not have: nothing (it goes with its
    subject if that is copied later)
    any other failure (Rejected, Denied, an unparsable manifest, ...): an attempt;
    after max_attempts record it as failed and move on (the image deleted here
    since: recorded as failed at once, no retry can bring it back)
    done: the cursor moves past it

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

import anyio
from anyio.abc import TaskStatus

from dockyard.config import ReplicationEndpoint, ReplicationRule
from dockyard.core.errors import RegistryError
from dockyard.core.registry import Registry
from dockyard.events.consumer import LogConsumer
from dockyard.events.hub import EventHub
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

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if not self.consumers:
            task_status.started()
            return
        # Before the server answers requests: pushes from now on reach new targets.
        await self.db.run(self.db.meta.webhook_init, [c.name for c in self.consumers])
        async with anyio.create_task_group() as nursery:
            for c in self.consumers:

                def holding(held: bool, stats: ConsumerStatistics = c.stats) -> None:
                    stats.holding_lease = held

                consumer = LogConsumer(
                    self.db,
                    self.hub,
                    _Target(self, c),
                    lease=self.lease,
                    lease_seconds=self.lease_seconds,
                    log=log,
                    holding=holding,
                )
                nursery.start_soon(consumer.run, name=c.name)
            task_status.started()

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
                await anyio.sleep(delay)
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


class _Target:
    """One (rule, target) as a consumer of the log (events/consumer.py's Handler)."""

    def __init__(self, pusher: ReplicationPusher, c: Consumer) -> None:
        self.pusher = pusher
        self.c = c
        self.name = self.label = c.name
        self.client = RegistryClient.from_settings(c.target)
        self.destination = RemoteDestination(self.client, c.mounts)

    def wants(self, event: StoredEvent) -> WantedImage | None:
        return self.c.matcher.wanted(event)

    async def handle(self, event: StoredEvent, wanted: WantedImage) -> tuple[int, str | None]:
        attempts, error = await self.pusher._copy(self.c, self.destination, event.id, wanted)
        if error is not None:
            self.c.stats.failed_events += 1
            if self.pusher.metrics is not None:
                self.pusher.metrics.failures.labels(self.c.rule.name, self.c.target.url).inc()
        return attempts, error

    async def aclose(self) -> None:
        await self.client.aclose()
