"""The online garbage collector: deletes what nothing needs while the registry serves.

A run (``Collector.run``) holds the "gc" job lease (one collector across every worker and
instance), renews it between batches and stops cleanly if it is lost. In order:

1. finish the byte deletions a killed run left in ``blob_deletions``;
2. per repository, read one snapshot, compute the live set (``core/gcplan.py``) and
   delete the dead manifests (parents first; their references go with them), then the
   links nothing left references;
3. move the blob rows no repository links to ``blob_deletions`` (one transaction per
   batch, the rows deleted and marked together), delete their bytes, drop the marks;
4. optionally (``walk_storage``) list the stored bytes and reclaim those with no row at
   all and older than the grace period (mark, delete, unmark, the same way).

Every delete is conditional in the store, re-evaluated at delete time (``meta/collect.py``):
a push that refreshed a row in the meantime wins, however stale this run's snapshot is.

Invariants (they hold after ``kill -9`` at any point, since each step is one transaction
or idempotent):

- metadata never points at missing bytes: a blob row is deleted (and marked in
  ``blob_deletions``) in the transaction before its bytes are deleted, and an upload
  never relies on stored bytes of a marked digest (``claim_blob`` waits for the mark to
  go, or takes over the mark of a collector that is gone);
- bytes without rows (a mark left by a killed run, a crash between an upload's commit
  and its link) are reclaimed by the next run (step 1) or the storage walk (step 4);
- nothing touched within the grace period is deleted: the window between a layer's
  upload and its manifest's PUT.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dockyard.config.model import GcSettings, RetentionPolicy
from dockyard.core.common import EventMaker, RequestInfo
from dockyard.core.gcplan import dead_links, plan_manifests, untagged_days
from dockyard.core.jobs import JobLease
from dockyard.meta.collect import GC_JOB
from dockyard.meta.gcrecords import Doomed, GcRepository
from dockyard.meta.store import Database
from dockyard.storage.base import BlobStore

# Entries listed in a report; the totals count everything beyond.
MAX_ITEMS = 10000
# Digests read per page when listing blob rows or stored bytes.
PAGE = 1000

Progress = Callable[[str], None]


@dataclass
class GcReport:
    dry_run: bool
    deleted_blobs: int = 0
    deleted_manifests: int = 0
    deleted_links: int = 0
    deleted_tags: int = 0  # gc never deletes tags (retention does)
    freed_bytes: int = 0
    duration_seconds: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)
    items_truncated: bool = False

    def add(self, kind: str, repository: str, digest: str, size: int, reason: str) -> None:
        if len(self.items) < MAX_ITEMS:
            self.items.append(
                {
                    "kind": kind,
                    "repository": repository,
                    "digest": digest,
                    "size": size,
                    "reason": reason,
                }
            )
        else:
            self.items_truncated = True

    def blobs(self, digests: Sequence[str], sizes: dict[str, int], kind: str, reason: str) -> None:
        for digest in digests:
            self.deleted_blobs += 1
            self.freed_bytes += sizes[digest]
            self.add(kind, "", digest, sizes[digest], reason)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted_blobs": self.deleted_blobs,
            "deleted_manifests": self.deleted_manifests,
            "deleted_links": self.deleted_links,
            "deleted_tags": self.deleted_tags,
            "freed_bytes": self.freed_bytes,
            "duration_seconds": round(self.duration_seconds, 3),
            "items": self.items,
            "items_truncated": self.items_truncated,
        }


def _batches(items: Sequence[Doomed], size: int) -> list[Sequence[Doomed]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Collector:
    def __init__(
        self,
        db: Database,
        storage: BlobStore,
        events: EventMaker,
        settings: GcSettings,
        policies: Sequence[RetentionPolicy] = (),
        *,
        instance: str,
        clock: Callable[[], float] = time.time,
        progress: Progress | None = None,
    ) -> None:
        self.db = db
        self.meta = db.meta
        self.storage = storage
        self._event = events
        self.settings = settings
        self.policies = policies
        self.instance = instance
        self._clock = clock
        self._progress = progress or (lambda _: None)
        self._held: JobLease | None = None  # the "gc" lease while a run holds it
        self._ctx = RequestInfo(method="GC", actor="gc")

    async def run(self, dry_run: bool = False, walk_storage: bool | None = None) -> GcReport:
        """One collection; raises ``JobBusy`` if another collector holds the lease."""
        started = time.monotonic()
        token = f"{self.instance}/gc-{uuid.uuid4().hex}"
        self._ctx = RequestInfo(id=token, method="GC", actor="gc")
        report = GcReport(dry_run)
        seconds = self.settings.lease_seconds
        busy = "another garbage collection is running"
        async with JobLease.hold(self.db, GC_JOB, token, seconds, busy) as held:
            self._held = held
            if not dry_run:
                await self._finish_pending()
            removed_links = await self._repositories(report, dry_run)
            await self._blobs(report, dry_run, removed_links)
            walk = self.settings.walk_storage if walk_storage is None else walk_storage
            if walk:
                await self._walk(report, dry_run)
        report.duration_seconds = time.monotonic() - started
        return report

    async def _renew(self) -> None:
        """Keep the lease (``core/jobs.py``); ``LeaseLost`` if another collector took it.
        Row deletions are safe without it (each is conditional); deleting bytes is not."""
        assert self._held is not None
        await self._held.keep("the garbage collection lease was lost; stopping")

    def _doom(
        self, cutoff: float, repository: str, digest: str, size: int, kind: str, reason: str
    ) -> Doomed:
        """A deletion to ask of the store, with its ``delete`` event."""
        media_type = "application/octet-stream"
        event = self._event(
            self._ctx, "delete", repository, digest, media_type, size, kind=kind, reason=reason,
            by="gc",
        )  # fmt: skip
        return Doomed(digest, cutoff, event)

    async def _delete_marked(self, digests: Sequence[str]) -> None:
        """Delete the bytes of digests marked in ``blob_deletions`` (only after the commit
        that made them unreachable), then the marks. The lease is renewed as it goes: an
        upload may take over a mark once the lease expired (``claim_blob``), so a run that
        lost it must not delete one more byte."""
        for digest in digests:
            await self._renew()
            await self.storage.delete(digest)
        await self.db.run(self.meta.gc_unmark_blobs, digests)

    # -- 1. what a killed run left

    async def _finish_pending(self) -> None:
        while pending := await self.db.run(self.meta.gc_pending_deletions, PAGE):
            await self._renew()
            await self._delete_marked(pending)
            self._progress(f"finished {len(pending)} deletions of an earlier run")

    # -- 2. manifests and links

    async def _repositories(self, report: GcReport, dry_run: bool) -> Counter[str]:
        """Collect each repository; the links removed (or to remove) per digest."""
        removed: Counter[str] = Counter()
        names = await self.db.run(self.meta.gc_repository_names)
        for i, name in enumerate(names, 1):
            self._progress(f"repository {i}/{len(names)}: {name}")
            repo = await self.db.run(self.meta.gc_repository, name)
            if repo is not None:
                for digest in await self._repository(repo, report, dry_run):
                    removed[digest] += 1
        return removed

    async def _repository(self, repo: GcRepository, report: GcReport, dry_run: bool) -> list[str]:
        now = self._clock()
        days = untagged_days(repo.name, self.policies)
        plan = plan_manifests(repo, now, self.settings.grace_period, days)
        doomed = []
        for d in plan.manifests:
            m = d.manifest
            doom = self._doom(d.cutoff, repo.name, m.digest, m.size, "manifest", d.reason)
            doomed.append(replace(doom, event=replace(doom.event, media_type=m.media_type)))
        deleted: set[str] = set()
        if dry_run:
            deleted = {d.digest for d in doomed}
        else:
            for batch in _batches(doomed, self.settings.batch_size):
                await self._renew()
                deleted.update(await self.db.run(self.meta.gc_delete_manifests, repo.id, batch))
        for d in plan.manifests:
            if d.manifest.digest in deleted:
                m = d.manifest
                report.deleted_manifests += 1
                report.add("manifest", repo.name, m.digest, m.size, d.reason)

        cutoff = now - self.settings.grace_period
        links = dead_links(repo, plan, deleted, cutoff)
        sizes = {link.digest: link.size for link in links}
        doomed = [
            self._doom(cutoff, repo.name, link.digest, link.size, "link", "unreferenced")
            for link in links
        ]
        unlinked: list[str] = []
        if dry_run:
            unlinked = [d.digest for d in doomed]
        else:
            for batch in _batches(doomed, self.settings.batch_size):
                await self._renew()
                unlinked += await self.db.run(self.meta.gc_delete_links, repo.id, batch)
        for digest in unlinked:
            report.deleted_links += 1
            report.add("link", repo.name, digest, sizes[digest], "unreferenced")
        return unlinked

    # -- 3. blob rows, then their bytes

    async def _blobs(self, report: GcReport, dry_run: bool, removed_links: Counter[str]) -> None:
        cutoff = self._clock() - self.settings.grace_period
        after: str | None = None
        while page := await self.db.run(self.meta.gc_blobs, after, PAGE):
            after = page[-1].digest
            self._progress(f"blobs up to {after[:19]}")
            unneeded = [
                b
                for b in page
                if b.touched < cutoff and b.links - (removed_links[b.digest] if dry_run else 0) <= 0
            ]
            sizes = {b.digest: b.size for b in unneeded}
            doomed = [
                self._doom(cutoff, "", b.digest, b.size, "blob", "unreferenced") for b in unneeded
            ]
            for batch in _batches(doomed, self.settings.batch_size):
                if dry_run:
                    marked = [d.digest for d in batch]
                else:
                    await self._renew()
                    marked = await self.db.run(self.meta.gc_mark_blobs, batch)
                    await self._delete_marked(marked)
                report.blobs(marked, sizes, "blob", "unreferenced")

    # -- 4. bytes with no metadata at all

    async def _walk(self, report: GcReport, dry_run: bool) -> None:
        cutoff = self._clock() - self.settings.grace_period
        page: dict[str, int] = {}
        async for stored in self.storage.list_blob_details():
            # Bytes written since the cutoff may be an upload about to claim them.
            if stored.modified < cutoff:
                page[stored.digest] = stored.size
            if len(page) >= PAGE:
                await self._reclaim_stray(page, report, dry_run)
                page = {}
        if page:
            await self._reclaim_stray(page, report, dry_run)

    async def _reclaim_stray(self, page: dict[str, int], report: GcReport, dry_run: bool) -> None:
        self._progress(f"storage walk at {max(page)[:19]}")
        known = await self.db.run(self.meta.gc_known_digests, list(page))
        stray = [digest for digest in page if digest not in known]
        if not stray:
            return
        if dry_run:
            marked = stray
        else:
            await self._renew()
            marked = await self.db.run(self.meta.gc_mark_stray_bytes, stray)
            await self._delete_marked(marked)
        report.blobs(marked, page, "bytes", "no metadata")
