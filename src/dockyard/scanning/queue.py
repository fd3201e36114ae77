"""The scan queue: the event log turned into rows of ``scans`` (``meta/scans.py``), and
workers that scan them.

Three kinds of task run in every worker process (``ScanQueue.run``):

- the consumer (with ``on_push``): a consumer of the event log named ``scanning``
  (``events/consumer.py``: its cursor and lease are a row of the webhook tables, as every
  consumer's), so the event pruner's floor (``meta/prune.py``) keeps every event it has
  not read. One holder at a time across every worker and instance. Each
  manifest push in ``repositories`` becomes rows (``rows_for_push``):

      an image manifest (OCI or Docker, config an image config)  a row, queued
      an index                     its row, and a row per stored child that is an image
      a manifest with a subject    none: referrers (signatures, our own reports, SBOMs)
                                   are not scanned
      any other artifact           a row, status "unsupported"

- ``concurrency`` workers: each takes one due row at a time under a lease
  (``scans_claim``, renewed while it scans), so no row is scanned by two workers at once,
  here or in another instance. An image is pulled by the scanner from this registry
  (``ScanRequest.registry``) and its report pushed back as a referrer (``report.py``);
  the summary, the findings and a ``scan`` event are written in one transaction. An
  index's row waits (not counted as an attempt) until every child row is done, then
  stores their findings together.

- the push watcher: a subscriber of this process's event hub (every worker's and
  instance's events) noting when the last push happened (not counting the queue's own
  pushes of reports and SBOMs). A worker starts a scan only once none came for ``quiet`` seconds, or
  after waiting ``quiet_max``: pushes come in storms, and a scan during one takes the CPU
  and disk the storm's pushes wait for (perf/scan.py measures it).

- the rescan schedule: every ``rescan_interval``, whoever takes the job lease
  ``scan.db`` asks the scanner for its database version and queues again, a batch at a
  time, the rows a different version scanned (oldest first).

Failures (``ScanFailed`` or anything unexpected): the row's attempts + 1, its
``last_error``, and it is queued again after ``backoff_initial`` doubling per attempt up
to ``backoff_max`` (or the scanner's Retry-After, if later); a report the registry would
not store (a quota, the blob store down) likewise, as reason "report". Never dropped: a scanner
outage or a missing database delays scans, loses none; a restart loses none (rows and
cursor are in the database, a dead worker's lease expires). "unsupported" from the
scanner is final. Nothing of this runs on a push's request path: the push writes its
event as always, and the consumer reads it afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from dockyard.config import ScanningSettings
from dockyard.core.common import EventMaker, RequestInfo
from dockyard.core.errors import RegistryError
from dockyard.core.registry import Registry
from dockyard.events.consumer import LogConsumer
from dockyard.events.hub import EventHub, SubscriberLagged
from dockyard.events.outage import log_failure
from dockyard.events.schema import EventFilter
from dockyard.globs import any_glob_matches
from dockyard.meta.records import Event, StoredEvent, StoreUnavailable
from dockyard.meta.scans import NewScan, ScanOutcome, ScanRecord
from dockyard.meta.store import Database, MetadataStore
from dockyard.oci.manifest import IMAGE_TYPES, INDEX_TYPES, ManifestError, parse_manifest
from dockyard.scanning.metrics import ScanMetrics
from dockyard.scanning.report import (
    REPORT_ARTIFACT_TYPE,
    SBOM_ARTIFACT_TYPE,
    SCANNER_ACTOR,
    SCANNER_METHOD,
    push_referrer,
    report_annotations,
    rfc3339,
)
from dockyard.scanning.scanner import (
    Finding,
    LocalImage,
    ScanFailed,
    Scanner,
    ScanRequest,
    ScanResult,
)
from dockyard.storage.base import StorageError

log = logging.getLogger("dockyard.scanning")

CONSUMER = "scanning"
RESCAN_JOB = "scan.db"
IMAGE_CONFIGS = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
# Seconds between looks for due rows when idle (a new row wakes the workers at once).
IDLE_CHECK = 1.0
# Seconds an index waits between looks at its platforms' rows.
INDEX_WAIT = 1.0
# Rows a rescan queues again at a time, and the pause between batches.
RESCAN_BATCH = 50
RESCAN_PAUSE = 5.0

PullCredentials = Callable[[str, float], Awaitable[tuple[str, str] | None]]


async def no_credentials(repository: str, seconds: float) -> tuple[str, str] | None:
    """Anonymous pulls: the scanner's credentials when auth is off."""
    return None


def finding_json(f: Finding) -> dict[str, Any]:
    return {
        "id": f.id,
        "severity": f.severity,
        "package": f.package,
        "installed": f.installed,
        "fixed": f.fixed,
        "title": f.title,
    }


def is_image(payload: bytes, media_type: str) -> bool:
    try:
        manifest = parse_manifest(payload, media_type)
    except ManifestError:
        return False
    return (
        manifest.media_type in IMAGE_TYPES
        and manifest.artifact_type is None
        and bool(manifest.blobs)
        and manifest.blobs[0].media_type in IMAGE_CONFIGS
    )


def index_children(payload: bytes) -> list[tuple[str, str]]:
    """(digest, "os/architecture[/variant]") of each manifest an index lists."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return []
    out = []
    for m in doc.get("manifests") or []:
        p = m.get("platform") or {}
        platform = "/".join(
            str(x) for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x
        )
        out.append((str(m.get("digest")), platform))
    return out


def scan_rows(
    meta: MetadataStore, repository: str, digest: str, media_type: str, payload: bytes
) -> list[NewScan]:
    """The rows a manifest is scanned as (module docstring): an image, or an index and
    its stored platforms (a blocking call: run it in a database thread)."""
    if media_type in INDEX_TYPES:
        rows = [NewScan(digest, repository, media_type)]
        children = [d for d, _ in index_children(payload)]
        for child in meta.existing_manifests(repository, children):  # sparse: only stored
            record = meta.get_manifest(repository, child)
            if record is not None:
                image = is_image(record.payload, record.media_type)
                status = "queued" if image else "unsupported"
                rows.append(NewScan(child, repository, record.media_type, status))
        return rows
    status = "queued" if is_image(payload, media_type) else "unsupported"
    return [NewScan(digest, repository, media_type, status)]


@dataclass(frozen=True, slots=True)
class RegistryAddress:
    """Where scanners pull from: dockyard's own host:port, and whether it is plain HTTP."""

    host: str
    insecure: bool

    @classmethod
    def from_url(cls, url: str) -> RegistryAddress:
        scheme, _, rest = url.partition("://")
        return cls(rest.rstrip("/"), scheme == "http")


class ScanQueue:
    """The consumer, the workers and the rescan schedule; ``run`` in a nursery."""

    def __init__(
        self,
        db: Database,
        hub: EventHub,
        registry: Registry,
        scanner: Scanner,
        settings: ScanningSettings,
        address: RegistryAddress,
        *,
        instance: str,
        lease_seconds: float,
        credentials: PullCredentials = no_credentials,
        local_path: Callable[[str], str | None] = lambda digest: None,
        metrics: ScanMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.hub = hub
        self.registry = registry
        self.scanner = scanner
        self.settings = settings
        self.address = address
        self.lease_seconds = lease_seconds
        self.credentials = credentials
        # Where the blob store keeps a blob on this machine (filesystem driver), or None.
        self.local_path = local_path
        self.metrics = metrics
        self.clock = clock
        self.instance = instance
        self.events = EventMaker(instance, clock)
        # The instance name first: `dockyard serve` frees leases that start with it.
        self.lease = f"{instance}/{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._wakeup = anyio.Event()
        self._last_push = -float("inf")  # anyio.current_time() of the last push seen
        self._depth_seen = 0.0
        # Called with a digest whose scan changed (the pull policy's cache).
        self.on_scanned: list[Callable[[str], None]] = []

    def wake(self) -> None:
        """Tell idle workers a row may be due (after an enqueue in this process)."""
        self._wakeup.set()
        self._wakeup = anyio.Event()

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        if s.on_push:
            # Before the server answers requests: every push from now on is scanned.
            await self.db.run(self.db.meta.webhook_init, [CONSUMER])
        async with anyio.create_task_group() as nursery:
            if s.on_push:
                consumer = LogConsumer(
                    self.db,
                    self.hub,
                    _PushConsumer(self),
                    lease=self.lease,
                    lease_seconds=self.lease_seconds,
                    log=log,
                )
                nursery.start_soon(consumer.run, name="scan consumer")
            if s.quiet > 0:
                await nursery.start(self._watch_pushes, name="scan push watcher")
            for i in range(max(1, s.concurrency)):
                nursery.start_soon(self._worker, i, name=f"scan worker {i}")
            if s.rescan_interval > 0:
                nursery.start_soon(self._rescans, name="scan rescans")
            task_status.started()

    # -- enqueueing

    async def request(self, repository: str, digest: str) -> bool:
        """Queue ``digest`` of ``repository`` (again) now; False when it is not there."""
        found = await self.db.run(self.db.meta.get_manifest, repository, digest)
        if found is None:
            return False
        rows = await self.rows_for(repository, digest, found.media_type, found.payload, None)
        await self.db.run(self.db.meta.scans_enqueue, rows, True)
        self.wake()
        return True

    async def rows_for(
        self,
        repository: str,
        digest: str,
        media_type: str,
        payload: bytes,
        subject: str | None,
    ) -> list[NewScan]:
        if subject is not None:
            return []
        return await self.db.run(scan_rows, self.db.meta, repository, digest, media_type, payload)

    def wanted(self, event: StoredEvent) -> bool:
        if event.action != "push" or not event.repository or not event.digest:
            return False
        target = event.body.get("target") or {}
        if target.get("kind") != "manifest" or target.get("subject"):
            return False
        globs = self.settings.repositories
        return not globs or any_glob_matches(event.repository, globs)

    async def _enqueue_push(self, event: StoredEvent) -> None:
        """The rows a wanted push event becomes (none when its manifest was deleted)."""
        assert event.repository and event.digest
        meta = self.db.meta
        found = await self.db.run(meta.get_manifest, event.repository, event.digest)
        if found is None:  # deleted since: nothing to scan
            return
        rows = await self.rows_for(
            event.repository, event.digest, found.media_type, found.payload, None
        )
        if rows:
            await self.db.run(meta.scans_enqueue, rows, False)
            self.wake()

    # -- waiting for a quiet moment

    async def _watch_pushes(
        self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        pushes = EventFilter(actions=frozenset({"push"}))
        started = False
        while True:
            try:
                async with self.hub.subscribe(pushes) as subscription:
                    if not started:
                        task_status.started()
                        started = True
                    async for event in subscription:
                        if (event.body.get("request") or {}).get("method") != SCANNER_METHOD:
                            self._last_push = anyio.current_time()
            except SubscriberLagged:  # so many pushes that it fell behind: busy
                self._last_push = anyio.current_time()

    async def _quiet_moment(self) -> None:
        """Return once no push came for ``quiet`` seconds, or after ``quiet_max``."""
        quiet = self.settings.quiet
        if quiet <= 0:
            return
        give_up = anyio.current_time() + self.settings.quiet_max
        while True:
            now = anyio.current_time()
            wait = min(self._last_push + quiet, give_up) - now
            if wait <= 0:
                return
            await anyio.sleep(wait)

    # -- the workers

    async def _worker(self, number: int) -> None:
        lease = f"{self.lease}-w{number}"
        while True:
            await self._quiet_moment()
            try:
                claimed = await self.db.run(self.db.meta.scans_claim, lease, self.lease_seconds, 1)
            except Exception:
                log_failure(log, "scanning: taking a row failed; will retry")
                claimed = []
            if not claimed:
                await self._count_depth()
                wakeup = self._wakeup
                with anyio.move_on_after(IDLE_CHECK):
                    await wakeup.wait()
                continue
            row = claimed[0]
            try:
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(
                        self._keep_row_lease, row.digest, lease, nursery.cancel_scope
                    )
                    await self._process(row, lease)
                    nursery.cancel_scope.cancel()
            except Exception:
                log_failure(log, "scanning: %s: storing the outcome failed; will retry", row.digest)
                await anyio.sleep(IDLE_CHECK)

    async def _count_depth(self) -> None:
        if self.metrics is None or self.clock() - self._depth_seen < 5:
            return
        self._depth_seen = self.clock()
        try:
            counts = await self.db.run(self.db.meta.scans_counts)
        except Exception:
            return
        for status in ("queued", "retrying", "running"):
            self.metrics.queue_depth.labels(status).set(counts.get(status, 0))

    async def _keep_row_lease(self, digest: str, lease: str, scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            try:
                held = await self.db.run(
                    self.db.meta.scans_renew, digest, lease, self.lease_seconds
                )
            except Exception:
                log_failure(log, "scanning: renewing the lease of %s failed", digest)
                continue
            if not held:
                log.warning("scanning: lost the lease of %s; another worker has it", digest)
                scope.cancel()
                return

    async def _process(self, row: ScanRecord, lease: str) -> None:
        meta = self.db.meta
        found = await self.db.run(meta.get_manifest, row.repository, row.digest)
        if found is None:
            await self.db.run(
                meta.scans_release,
                row.digest,
                lease,
                "failed",
                None,
                f"the manifest is no longer in {row.repository}",
                False,
            )
            return
        if found.media_type in INDEX_TYPES:
            await self._aggregate(row, lease, found.payload)
            return
        if not is_image(found.payload, found.media_type):
            await self._unsupported(row, lease, "not an image")
            return
        started = time.monotonic()
        try:
            result = await self._scan(row)
            try:
                report = await self._store_reports(row, found.media_type, found.size, result)
            except (RegistryError, StorageError, StoreUnavailable) as e:
                # A quota, the blob store or the database refused the report: tried again.
                self._observe(started)
                await self._retry(row, lease, "report", f"storing the report: {e}", None)
                return
        except ScanFailed as e:
            self._observe(started)
            if e.reason == "unsupported":
                await self._unsupported(row, lease, str(e))
            else:
                await self._retry(row, lease, e.reason, str(e), e.retry_after)
            return
        except Exception as e:
            self._observe(started)
            log.exception("scanning: %s@%s: unexpected failure", row.repository, row.digest)
            await self._retry(row, lease, "crashed", f"{type(e).__name__}: {e}", None)
            return
        self._observe(started)
        counts = result.counts()
        outcome = ScanOutcome(
            result.scanner,
            result.db_version,
            result.db_updated,
            counts,
            [finding_json(f) for f in result.findings],
            report,
        )
        await self._finish(row, lease, outcome)
        if self.metrics is not None:
            vulnerable = any(counts.values())
            self.metrics.scans.labels("vulnerable" if vulnerable else "clean").inc()

    def _observe(self, started: float) -> None:
        if self.metrics is not None:
            self.metrics.duration.observe(time.monotonic() - started)

    async def _scan(self, row: ScanRecord) -> ScanResult:
        timeout = self.settings.timeout
        local = await self._local_image(row)
        # Even with a local image: the scanner falls back to pulling when it cannot link.
        creds = await self.credentials(row.repository, timeout + 60)
        request = ScanRequest(
            self.address.host,
            self.address.insecure,
            row.repository,
            row.digest,
            None if creds is None else creds[0],
            None if creds is None else creds[1],
            sbom=self.settings.sbom,
            local=local,
        )
        with anyio.move_on_after(timeout) as scope:
            return await self.scanner.scan(request)
        assert scope.cancelled_caught
        raise ScanFailed("timeout", f"the scan took longer than {timeout:g} seconds")

    async def _local_image(self, row: ScanRecord) -> LocalImage | None:
        """The image as the blob store's own files, when it keeps them on this machine and
        holds every blob: the scanner then reads them in place, and the registry serves
        nothing to it (its HTTP workers are the pushes' and pulls')."""
        found = await self.db.run(self.db.meta.get_manifest, row.repository, row.digest)
        if found is None:
            return None
        try:
            manifest = parse_manifest(found.payload, found.media_type)
        except ManifestError:
            return None
        blobs: list[tuple[str, str]] = []
        for descriptor in manifest.blobs:
            path = self.local_path(str(descriptor.digest))
            if path is None:
                return None
            blobs.append((str(descriptor.digest), path))
        return LocalImage(found.media_type, found.payload, tuple(blobs))

    async def _store_reports(
        self, row: ScanRecord, media_type: str, size: int, result: ScanResult
    ) -> str:
        subject = (media_type, row.digest, size)
        annotations = report_annotations(
            result.scanner, result.counts(), result.db_updated, self.clock()
        )
        report = await push_referrer(
            self.registry,
            row.repository,
            REPORT_ARTIFACT_TYPE,
            subject,
            result.report,
            result.report_media_type,
            annotations,
        )
        if result.sbom is not None:
            await push_referrer(
                self.registry,
                row.repository,
                SBOM_ARTIFACT_TYPE,
                subject,
                result.sbom,
                result.sbom_media_type or "application/vnd.cyclonedx+json",
                annotations,
            )
        return report

    def _scan_event(self, row: ScanRecord, outcome: ScanOutcome) -> Event:
        return self.events(
            RequestInfo(method=SCANNER_METHOD, actor=SCANNER_ACTOR),
            "scan",
            row.repository,
            row.digest,
            row.media_type,
            kind="manifest",
            status="done",
            scanner=outcome.scanner,
            summary=outcome.counts,
            report=outcome.report_digest,
            dbUpdated=None if outcome.db_updated is None else rfc3339(outcome.db_updated),
        )

    async def _finish(self, row: ScanRecord, lease: str, outcome: ScanOutcome) -> None:
        event = self._scan_event(row, outcome)
        if await self.db.run(self.db.meta.scans_finish, row.digest, lease, outcome, [event]):
            log.info(
                "scanning: %s@%s scanned: %s",
                row.repository,
                row.digest,
                ", ".join(f"{n} {s}" for s, n in outcome.counts.items() if n) or "no findings",
            )
            for callback in self.on_scanned:
                callback(row.digest)

    async def _unsupported(self, row: ScanRecord, lease: str, why: str) -> None:
        log.info("scanning: %s@%s not scanned: %s", row.repository, row.digest, why)
        await self.db.run(
            self.db.meta.scans_release, row.digest, lease, "unsupported", None, why, False
        )
        if self.metrics is not None:
            self.metrics.scans.labels("unsupported").inc()

    async def _retry(
        self, row: ScanRecord, lease: str, reason: str, message: str, retry_after: float | None
    ) -> None:
        s = self.settings
        delay = min(s.backoff_initial * 2 ** min(row.attempts, 30), s.backoff_max)
        if retry_after is not None:
            delay = max(delay, retry_after)
        log.warning(
            "scanning: %s@%s failed (%s: %s, attempt %d); trying again in %.3gs",
            row.repository,
            row.digest,
            reason,
            message,
            row.attempts + 1,
            delay,
        )
        await self.db.run(
            self.db.meta.scans_release,
            row.digest,
            lease,
            "queued",
            self.clock() + delay,
            f"{reason}: {message}",
            True,
        )
        if self.metrics is not None:
            self.metrics.scans.labels("failed").inc()
            self.metrics.failures.labels(reason).inc()

    async def _aggregate(self, row: ScanRecord, lease: str, payload: bytes) -> None:
        """An index: its platforms' findings together once every platform row is final."""
        children = [d for d, _ in index_children(payload)]
        found = await self.db.run(self.db.meta.scans_get, children)
        pending = [r for r in found.values() if r.status in ("queued", "running")]
        if pending:
            await self.db.run(
                self.db.meta.scans_release,
                row.digest,
                lease,
                "queued",
                self.clock() + INDEX_WAIT,
                None,
                False,
            )
            return
        done = [r for r in found.values() if r.status == "done" and r.counts is not None]
        if not done:
            await self._unsupported(row, lease, "no platform is a scannable image")
            return
        counts: dict[str, int] = {}
        findings: list[dict[str, Any]] = []
        for r in done:
            for severity, n in (r.counts or {}).items():
                counts[severity] = counts.get(severity, 0) + n
            findings += r.findings
        versions = {r.db_version for r in done}
        updated = [r.db_updated for r in done if r.db_updated is not None]
        outcome = ScanOutcome(
            done[0].scanner or "",
            versions.pop() if len(versions) == 1 else None,
            min(updated) if updated else None,
            counts,
            findings,
            None,
        )
        await self._finish(row, lease, outcome)

    # -- rescans

    async def _rescans(self) -> None:
        interval = self.settings.rescan_interval
        token = f"{self.lease}-rescan"
        meta = self.db.meta
        while True:
            await anyio.sleep(interval)
            try:
                # Held for the interval and never released: one look per interval.
                if not await self.db.run(
                    meta.job_acquire, RESCAN_JOB, f"{token}-{self.clock()}", interval * 0.9
                ):
                    continue
                version = await self.scanner.database_version()
                if version is None:
                    continue
                await self.rescan(version)
            except Exception:
                log_failure(log, "scanning: the rescan check failed; will retry")

    async def rescan(self, version: str) -> int:
        """Queue again, a batch at a time, what another database version scanned."""
        total = 0
        while True:
            n = await self.db.run(self.db.meta.scans_requeue_stale, version, RESCAN_BATCH)
            total += n
            if n:
                log.info("scanning: database %s: %d manifests queued for a rescan", version, n)
                self.wake()
            if n < RESCAN_BATCH:
                return total
            await anyio.sleep(RESCAN_PAUSE)


class _PushConsumer:
    """The queue's side of the event log (events/consumer.py's Handler): each wanted
    manifest push becomes rows of ``scans``; an error is retried by the consumer's loop
    (the cursor stays), so no push is ever left unscanned."""

    name = label = CONSUMER

    def __init__(self, queue: ScanQueue) -> None:
        self.queue = queue

    def wants(self, event: StoredEvent) -> bool | None:
        return True if self.queue.wanted(event) else None

    async def handle(self, event: StoredEvent, work: bool) -> tuple[int, str | None]:
        await self.queue._enqueue_push(event)
        return 1, None

    async def aclose(self) -> None:
        pass
