"""The metadata store protocol that ``core/``, ``events/`` and ``http/`` depend on, and
``Database``, which runs a store's blocking calls off the event loop.

A store's methods are synchronous: the drivers block (sqlite3; psycopg's sync API for
PostgreSQL, whose async API is asyncio-only), so ``Database.run`` calls them in worker
threads through one bounded limiter. Each domain is its own small protocol;
``MetadataStore`` is all of them, and ``tests/meta_conformance.py`` is the contract every
implementation passes unchanged.

Every method that takes ``events`` appends them in the same transaction as its change
(the transactional outbox): the event log never misses or invents a change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

import anyio

from dockyard.meta.cached import CachedContent
from dockyard.meta.gcrecords import Doomed, GcBlob, GcRepository
from dockyard.meta.prune import EventPruner
from dockyard.meta.records import (
    Conflict,
    Event,
    InventoryRecord,
    ManifestRecord,
    NewManifest,
    PullTime,
    ReferrerRecord,
    RetentionTag,
    StatsRecord,
    StoreBusy,
    StoredEvent,
    UploadRecord,
    WebhookCursor,
    WebhookFailure,
)
from dockyard.meta.replication import ReplicationRun
from dockyard.meta.repository_admin import RepositoryManagement
from dockyard.meta.robots import RobotRecords
from dockyard.meta.scans import NewScan, ScanOutcome, ScanRecord
from dockyard.meta.usage import QuotaExceeded, QuotaScope, UsageReports

P = ParamSpec("P")
T = TypeVar("T")


class Lifecycle(Protocol):
    def migrate(self) -> None:
        """Create or upgrade the schema (idempotent; safe with several processes)."""

    def close(self) -> None: ...

    def inline_reads(self) -> AbstractContextManager[None]:
        """Calls in this block are point reads made on the event loop thread: they must
        not wait for locks, and raise ``StoreBusy`` instead."""

    def change_marker(self) -> int | None:
        """A value that differs once any connection of any process has committed a change
        since the last call from this thread; None when the store cannot tell cheaply
        (then nothing is answered from memory, ``http/answers.py``)."""


class Repositories(Protocol):
    def repository_exists(self, name: str) -> bool: ...

    def list_repositories(self, last: str | None, limit: int) -> list[str]:
        """Names after ``last`` in byte order, at most ``limit``."""


class BlobLinks(Protocol):
    def blob_size(self, digest: str) -> int | None: ...

    def linked_blob_size(self, repository: str, digest: str) -> int | None:
        """The blob's size if ``repository`` may serve it (it is linked there)."""

    def repositories_linking(
        self, digest: str, limit: int = 100, after: str | None = None
    ) -> list[str]:
        """Names of the repositories that link ``digest``, in byte order, after ``after``."""

    def link_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        events: Sequence[Event],
        finished_upload: str | None = None,
        quota: QuotaScope | None = None,
    ) -> None:
        """Record a stored blob and link it to ``repository`` (idempotent); deletes the
        upload session ``finished_upload`` in the same transaction. With ``quota``, raises
        ``QuotaExceeded`` (and changes nothing) if the link would exceed it."""

    def unlink_blob(self, repository: str, digest: str, events: Sequence[Event]) -> bool: ...

    def linked_blobs(self, repository: str, digests: Sequence[str]) -> dict[str, int]:
        """Of ``digests``, those linked to ``repository``, with their sizes."""


class Manifests(Protocol):
    def existing_manifests(self, repository: str, digests: Sequence[str]) -> dict[str, int]:
        """Of ``digests``, the manifests stored in ``repository``, with their sizes."""

    def put_manifest(
        self, m: NewManifest, events: Sequence[Event], quota: QuotaScope | None = None
    ) -> None:
        """Store a manifest, its references and tags; raises ``TagImmutable`` (changing
        nothing) if one of ``m.immutable_tags`` exists with another digest; with ``quota``,
        raises ``QuotaExceeded`` as ``link_blob`` does."""

    def get_manifest(self, repository: str, digest: str) -> ManifestRecord | None: ...

    def get_tagged_manifest(self, repository: str, tag: str) -> ManifestRecord | None: ...

    def delete_manifest(
        self,
        repository: str,
        digest: str,
        events: Sequence[Event],
        immutable: Callable[[str], bool] | None = None,
    ) -> bool:
        """Delete a manifest and every tag of it in ``repository``; raises ``TagImmutable``
        (changing nothing) if ``immutable`` accepts one of those tags."""

    def delete_tag(
        self, repository: str, tag: str, make_events: Callable[[str], Sequence[Event]]
    ) -> str | None:
        """Delete one tag; returns the digest it pointed to, or None if there was no tag."""

    def list_tags(self, repository: str, last: str | None, limit: int) -> list[str] | None:
        """Tags after ``last`` in byte order; None if the repository does not exist."""

    def referrers(
        self, repository: str, subject: str, artifact_type: str | None, last: str | None, limit: int
    ) -> list[ReferrerRecord]: ...


class Uploads(Protocol):
    def create_upload(
        self, upload_id: str, repository: str, algorithm: str, driver_state: dict[str, Any]
    ) -> None: ...

    def get_upload(self, upload_id: str) -> UploadRecord | None: ...

    def claim_upload(self, upload_id: str, offset: int, lease: str, seconds: float) -> bool:
        """Take the upload for one request if it is at ``offset`` and nobody holds it."""

    def renew_lease(self, upload_id: str, lease: str, seconds: float) -> bool: ...

    def save_upload(
        self,
        upload_id: str,
        lease: str,
        offset: int,
        hash_state: bytes | None,
        driver_state: dict[str, Any],
    ) -> None:
        """Record progress and release the lease."""

    def release_upload(self, upload_id: str, lease: str) -> None: ...

    def release_leases_of(self, instance: str) -> int:
        """Free the upload leases an earlier run of ``instance`` held (it cannot still be
        writing). Matches the instance name exactly."""

    def delete_upload(self, upload_id: str) -> bool: ...

    def stale_uploads(self, touched_before: float) -> list[UploadRecord]: ...

    def upload_ids(self) -> set[str]: ...


class EventLog(Protocol):
    # Called (from the worker thread) after a transaction that appended events commits.
    on_events_committed: Callable[[], None] | None

    def append_events(self, events: Sequence[Event]) -> None: ...

    def last_event_id(self) -> int: ...

    def events_after(self, after: int, limit: int) -> list[StoredEvent]: ...

    def event(self, event_id: int) -> StoredEvent | None: ...


@runtime_checkable
class EventWakeups(Protocol):
    """Optional: a store that can tell a process at once when any process appended events
    (PostgreSQL's LISTEN/NOTIFY). Without it the event hub finds them by polling."""

    def wait_for_events(self, timeout: float) -> bool:
        """Block (in a thread of its own) until events may have been committed anywhere
        (True) or ``timeout`` seconds pass (False). One caller at a time."""


class Statistics(Protocol):
    def stats(
        self,
        since: float,
        bucket: float,
        repositories: int,
        slack: float = 120.0,
        per_repository: bool = False,
    ) -> StatsRecord:
        """Repositories, totals and event counts per action, read in one snapshot; with
        ``per_repository`` also per bucket and repository."""

    def inventory(self) -> InventoryRecord:
        """Repositories, tags, manifests by kind (``index``: an image index or manifest
        list; ``artifact``: a manifest whose artifactType or config media type is not an
        image config; ``image``: the rest), blobs and their bytes (each blob once), upload
        sessions, the last event id and each webhook endpoint's cursor, in one snapshot."""

    def blob_totals(self, repositories: Sequence[str]) -> tuple[int, int]:
        """The blobs linked into any of ``repositories`` and their bytes, each blob once
        however many of them link it."""


class Webhooks(Protocol):
    def webhook_init(self, names: Sequence[str]) -> None:
        """Give endpoints seen for the first time a cursor at the current end of the log."""

    def webhook_acquire(self, name: str, lease: str, seconds: float) -> int | None:
        """Take (or keep) the endpoint's lease if it is free or expired; its cursor, or None."""

    def webhook_lease_free(self, name: str, lease: str) -> bool:
        """Whether ``webhook_acquire`` could succeed now (a read: cheap to ask often)."""

    def webhook_renew(self, name: str, lease: str, seconds: float) -> bool: ...

    def webhook_advance(self, name: str, lease: str, cursor: int, delivered: bool) -> bool:
        """Move the cursor to ``cursor`` (every event up to it is handled)."""

    def webhook_release(self, name: str, lease: str) -> None: ...

    def webhook_release_leases_of(self, instance: str) -> int:
        """Free the webhook leases an earlier run of ``instance`` held."""

    def webhook_failed(
        self,
        name: str,
        lease: str,
        event_id: int,
        attempts: int,
        error: str,
        advance: bool,
    ) -> bool:
        """Record that ``event_id`` failed ``attempts`` more times; with ``advance`` move
        the cursor past it."""

    def webhook_redelivered(self, name: str, lease: str, event_id: int) -> bool:
        """A failed event was delivered after all: forget the failure."""

    def webhook_to_redeliver(self, name: str, limit: int) -> list[int]: ...

    def webhook_mark_redeliver(self, name: str, event_id: int | None) -> int:
        """Ask the deliverer to send failed events again (one, or all of the endpoint's)."""

    def webhook_cursors(self) -> list[WebhookCursor]: ...

    def webhook_failures(self, name: str | None = None) -> list[WebhookFailure]: ...


class SharedSecrets(Protocol):
    def shared_secret(self, name: str, candidate: bytes) -> bytes:
        """The secret stored under ``name``; if there is none yet, ``candidate`` is stored
        and returned. The first caller wins, so every worker and instance sharing the store
        gets the same bytes (feed-ticket and token-signing keys) with no shared disk and no
        secret to copy between machines."""


class Jobs(Protocol):
    """Leases on named jobs (``gc``, ``retention``, ``prune``): one holder at a time across
    every worker and instance, until it releases or stops renewing (``meta/leases.py``)."""

    def job_acquire(self, name: str, lease: str, seconds: float) -> bool:
        """Take (or extend) the job's lease if it is free, expired or ``lease``'s already."""

    def job_renew(self, name: str, lease: str, seconds: float) -> bool: ...

    def job_release(self, name: str, lease: str) -> None: ...


class TagRetention(Protocol):
    """What retention policies read and delete (``meta/retention.py``)."""

    def retention_tags(self, repository: str) -> list[RetentionTag]:
        """Every tag of ``repository`` with its manifest, size, push and pull times."""

    def delete_tags_if_unchanged(
        self,
        repository: str,
        tags: Sequence[RetentionTag],
        make_events: Callable[[RetentionTag], Sequence[Event]],
    ) -> list[RetentionTag]:
        """In one transaction, delete each of ``tags`` that still points at its digest and
        was not pushed again since it was read (same ``pushed``); the events of those
        deleted are appended with them. Returns those deleted."""

    def record_pulls(
        self, events: Sequence[Event], tags: Sequence[PullTime], manifests: Sequence[PullTime]
    ) -> None:
        """Append pull ``events`` and, in the same transaction, move ``tags.pulled`` and
        ``manifests.pulled`` forward to the times given (one update per key)."""


class Collection(Protocol):
    """Garbage collection (``meta/collect.py``, ``core/gc.py``): reads of what there is,
    deletes that are conditional at delete time, and the pushes' side of the races."""

    def gc_repository_names(self) -> list[str]: ...

    def gc_repository(self, name: str) -> GcRepository | None:
        """Manifests (tagged or not), references and links of ``name``, in one snapshot."""

    def gc_blobs(self, after: str | None, limit: int) -> list[GcBlob]:
        """Blob rows after ``after`` in digest order, each with its number of links."""

    def gc_known_digests(self, digests: Sequence[str]) -> set[str]:
        """Of ``digests``, those with a blob row or a deletion row."""

    def gc_pending_deletions(self, limit: int) -> list[str]:
        """Digests in ``blob_deletions``: rows gone, bytes maybe not yet."""

    def gc_delete_manifests(self, repository_id: int, doomed: Sequence[Doomed]) -> list[str]:
        """Delete untagged, unreferenced manifests not touched since each cutoff (and whose
        subject, if any, is neither tagged nor recent), with their references and events."""

    def gc_delete_links(self, repository_id: int, doomed: Sequence[Doomed]) -> list[str]:
        """Delete links no manifest of the repository references, older than each cutoff."""

    def gc_mark_blobs(self, doomed: Sequence[Doomed]) -> list[str]:
        """Move unlinked blob rows older than each cutoff to ``blob_deletions``."""

    def gc_mark_stray_bytes(self, digests: Sequence[str]) -> list[str]:
        """Mark for deletion stored digests that have no blob row."""

    def gc_unmark_blobs(self, digests: Sequence[str]) -> None:
        """Forget the deletion rows of digests whose bytes are deleted."""

    def claim_blob(self, digest: str, size: int, lease_seconds: float) -> None:
        """Before an upload's storage commit: refresh or create the blob row; raises
        ``BlobBeingDeleted`` while a live collector deletes its bytes."""

    def link_stored_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        events: Sequence[Event],
        quota: QuotaScope | None = None,
    ) -> bool:
        """Link a blob only if its row exists (mounts), refreshing it; False otherwise."""


class Replication(Protocol):
    """Pull-mode replication's runs and a push consumer's backlog (``meta/replication.py``;
    push cursors are ``Webhooks`` rows named ``replication:<rule>:<target url>``)."""

    def replication_record_run(self, run: ReplicationRun) -> None:
        """Store ``run`` as its rule's last run (replacing the one before)."""

    def replication_runs(self) -> list[ReplicationRun]:
        """Every rule's last run, by name."""

    def replication_job_holder(self, job: str, now: float) -> str | None:
        """Who holds the job lease ``job`` (a pull rule's run) at ``now``, or None."""

    def events_after_count(self, cursor: int) -> int:
        """How many events the log holds after ``cursor``."""


class Scans(Protocol):
    """The scan queue and results (``meta/scans.py``: the row's life, the lease)."""

    def scans_enqueue(self, scans: Sequence[NewScan], again: bool = False) -> int:
        """Rows due now (a digest with a row keeps it unless ``again``); how many changed."""

    def scans_claim(self, lease: str, seconds: float, limit: int) -> list[ScanRecord]:
        """Take up to ``limit`` due rows under ``lease`` (status running)."""

    def scans_renew(self, digest: str, lease: str, seconds: float) -> bool: ...

    def scans_finish(
        self, digest: str, lease: str, outcome: ScanOutcome, events: Sequence[Event]
    ) -> bool:
        """Store the result (done) and append ``events`` in the same transaction."""

    def scans_release(
        self,
        digest: str,
        lease: str,
        status: str,
        next_attempt: float | None,
        error: str | None,
        count_attempt: bool,
    ) -> bool:
        """Give a running row back: queued at ``next_attempt``, or unsupported/failed."""

    def scans_release_leases_of(self, instance: str) -> int:
        """Free the rows an earlier run of ``instance`` was scanning."""

    def scans_get(self, digests: Sequence[str]) -> dict[str, ScanRecord]: ...

    def scans_counts(self) -> dict[str, int]:
        """Rows per status (queued rows that failed before: ``retrying``)."""

    def scans_failing(self, limit: int) -> list[ScanRecord]: ...

    def scans_requeue_stale(self, db_version: str, limit: int) -> int:
        """Queue again done rows scanned with another database version, oldest first."""


class MetadataStore(
    Scans,
    CachedContent,
    RobotRecords,
    Replication,
    EventPruner,
    UsageReports,
    RepositoryManagement,
    Lifecycle,
    SharedSecrets,
    Jobs,
    TagRetention,
    Collection,
    Repositories,
    BlobLinks,
    Manifests,
    Uploads,
    EventLog,
    Statistics,
    Webhooks,
    Protocol,
):
    """Everything dockyard keeps besides blob bytes, in one transactional store."""


CallTimer = Callable[[str, float, bool], None]
"""Told each call's name, the seconds it took and whether it failed (an exception other
than ``Conflict``, which is an answer): the metrics' database latency and errors."""


class Database:
    """Runs a store's blocking calls in worker threads through one bounded limiter."""

    def __init__(self, meta: MetadataStore, threads: int, timer: CallTimer | None = None) -> None:
        self.meta = meta
        self._limiter = anyio.CapacityLimiter(threads)
        self.timer = timer

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        timer = self.timer
        if timer is None:
            return await anyio.to_thread.run_sync(
                lambda: fn(*args, **kwargs), limiter=self._limiter, abandon_on_cancel=False
            )
        started = time.perf_counter()
        failed = False
        try:
            return await anyio.to_thread.run_sync(
                lambda: fn(*args, **kwargs), limiter=self._limiter, abandon_on_cancel=False
            )
        except (Conflict, QuotaExceeded):  # answers, not failures
            raise
        except Exception:
            failed = True
            raise
        finally:
            timer(getattr(fn, "__name__", "other"), time.perf_counter() - started, failed)

    def change_marker(self) -> int | None:
        """The store's change marker, read on this (the event loop's) thread; None if the
        store cannot tell or the read failed."""
        try:
            return self.meta.change_marker()
        except Exception:  # a store in trouble: answer from the database, which says so
            return None

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A point read (one indexed lookup) run right here on the event loop thread.

        For the hottest requests (manifest and blob GET/HEAD) a thread hop costs more
        than the query: inline, a manifest HEAD cost 538 instead of 1084 server CPU-us
        (``python -m perf.floor``, one worker, same run; hypercorn-trio's own floor is
        about 430).
        ``fn`` must only read. If the store is busy, the call is retried in a worker
        thread, where waiting does not stall the event loop.
        """
        timer = self.timer
        started = time.perf_counter() if timer is not None else 0.0
        try:
            with self.meta.inline_reads():
                result = fn(*args, **kwargs)
        except StoreBusy:
            return await self.run(fn, *args, **kwargs)
        except Exception as e:
            if timer is not None:
                failed = not isinstance(e, Conflict | QuotaExceeded)
                timer(getattr(fn, "__name__", "other"), time.perf_counter() - started, failed)
            raise
        if timer is not None:
            timer(getattr(fn, "__name__", "other"), time.perf_counter() - started, False)
        return result
