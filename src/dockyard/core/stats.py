"""Registry statistics for the live dashboard: repositories, totals, recent activity.

``Statistics.snapshot`` reads everything in one database transaction (``SQLiteMeta.stats``)
and shapes it: every time bucket of the window (empty ones too) with its event count per
action and the bytes pushed and pulled, the window's totals, and the most active
repositories. The snapshot names the last event id it covers (``last_id``): a dashboard
adds the live events after that id from the websocket feed, with no gap and no double
count at the seam.

Bytes in are the sizes of ``push`` events (blobs and manifests received), bytes out the
sizes of ``pull`` events (blobs and manifests served; a ranged GET counts the whole blob).
Mounts move no bytes.

Snapshots are cached for ``cache_seconds`` (per parameters, the newest only), so many open
dashboards that refresh after each push cost one query.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dockyard.actions import ACTIONS
from dockyard.core.errors import ParameterInvalid
from dockyard.meta.records import BucketActivity, RepositorySummary
from dockyard.meta.store import Database

DEFAULT_WINDOW = 900
DEFAULT_BUCKET = 10
DEFAULT_REPOSITORIES = 500
MAX_WINDOW = 24 * 3600
MAX_BUCKET = 3600
MAX_BUCKETS = 1440
MAX_REPOSITORIES = 5000
TOP_REPOSITORIES = 10


def _counts() -> dict[str, int]:
    return dict.fromkeys(ACTIONS, 0)


@dataclass
class Bucket:
    start: int  # epoch seconds, a multiple of the bucket length
    counts: dict[str, int] = field(default_factory=_counts)
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class RepositoryActivity:
    repository: str
    counts: dict[str, int] = field(default_factory=_counts)
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def events(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Totals:
    repositories: int
    tags: int
    manifests: int
    blobs: int
    blob_bytes: int  # stored content, each blob once however many repositories link it


@dataclass(frozen=True)
class Snapshot:
    now: float
    last_id: int
    window: int
    bucket: int
    repositories: list[RepositorySummary]
    totals: Totals
    buckets: list[Bucket]  # oldest first; the last one is the current, partial bucket
    actions: dict[str, int]  # events per action in the window
    bytes_in: int
    bytes_out: int
    top: list[RepositoryActivity]  # most events in the window first
    # Events per bucket and repository, read only to filter (not part of the JSON).
    detail: list[BucketActivity] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "last_id": self.last_id,
            "window": self.window,
            "bucket": self.bucket,
            "totals": {
                "repositories": self.totals.repositories,
                "tags": self.totals.tags,
                "manifests": self.totals.manifests,
                "blobs": self.totals.blobs,
                "blob_bytes": self.totals.blob_bytes,
            },
            "repositories": [
                {
                    "name": r.name,
                    "tags": r.tags,
                    "manifests": r.manifests,
                    "size": r.size,
                    "updated": r.updated,
                }
                for r in self.repositories
            ],
            "repositories_truncated": len(self.repositories) < self.totals.repositories,
            "activity": {
                "actions": self.actions,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "buckets": [
                    {"start": b.start, **b.counts, "bytes_in": b.bytes_in, "bytes_out": b.bytes_out}
                    for b in self.buckets
                ],
                "top": [
                    {
                        "repository": a.repository,
                        "events": a.events,
                        **a.counts,
                        "bytes_in": a.bytes_in,
                        "bytes_out": a.bytes_out,
                    }
                    for a in self.top
                ],
            },
        }


def _bytes(action: str, size: int) -> tuple[int, int]:
    if action == "push":
        return size, 0
    if action == "pull":
        return 0, size
    return 0, 0


class Statistics:
    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        cache_seconds: float = 1.0,
    ) -> None:
        self.db = db
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cached: tuple[tuple[int, int, int, bool], float, Snapshot] | None = None

    async def snapshot(
        self,
        window: int = DEFAULT_WINDOW,
        bucket: int = DEFAULT_BUCKET,
        repositories: int = DEFAULT_REPOSITORIES,
        visible: Callable[[str], bool] | None = None,
    ) -> Snapshot:
        """Repositories, totals and the last ``window`` seconds in ``bucket``-second
        buckets (the window is rounded up to whole buckets). With ``visible``, only the
        repositories it accepts are named (see ``filtered``)."""
        if not 1 <= bucket <= MAX_BUCKET:
            raise ParameterInvalid(f"bucket must be 1 to {MAX_BUCKET} seconds, not {bucket}")
        if not bucket <= window <= MAX_WINDOW:
            raise ParameterInvalid(
                f"window must be {bucket} (the bucket) to {MAX_WINDOW} seconds, not {window}"
            )
        count = math.ceil(window / bucket)
        if count > MAX_BUCKETS:
            raise ParameterInvalid(
                f"window/bucket gives {count} buckets; at most {MAX_BUCKETS} are allowed"
            )
        if not 1 <= repositories <= MAX_REPOSITORIES:
            raise ParameterInvalid(
                f"repositories must be 1 to {MAX_REPOSITORIES}, not {repositories}"
            )
        if visible is not None:
            # Every repository (up to the maximum) and the activity per repository, so
            # the filter keeps enough and can count what it keeps.
            full = await self._snapshot(count, bucket, MAX_REPOSITORIES, detailed=True)
            shown = [r.name for r in full.repositories if visible(r.name)]
            blobs = await self.db.run(self.db.meta.blob_totals, shown)
            return filtered(full, visible, repositories, blobs)
        return await self._snapshot(count, bucket, repositories, detailed=False)

    async def _snapshot(
        self, count: int, bucket: int, repositories: int, detailed: bool
    ) -> Snapshot:
        key = (count, bucket, repositories, detailed)
        cached = self._cached
        if (
            cached is not None
            and cached[0] == key
            and time.monotonic() - cached[1] < self._cache_seconds
        ):
            return cached[2]
        snap = await self._read(count, bucket, repositories, detailed)
        self._cached = (key, time.monotonic(), snap)
        return snap

    async def _read(self, count: int, bucket: int, repositories: int, detailed: bool) -> Snapshot:
        now = self._clock()
        last = math.floor(now / bucket)  # the current bucket
        first = last - count + 1
        record = await self.db.run(
            self.db.meta.stats, first * bucket, bucket, repositories, per_repository=detailed
        )
        activity = _Activity(first, count, bucket)
        for c in record.by_bucket:
            assert isinstance(c.key, int)
            activity.add_to_bucket(c.key, c.action, c.count, c.size)
        for c in record.by_repository:
            activity.add_to_repository(str(c.key), c.action, c.count, c.size)
        return Snapshot(
            now=now,
            last_id=record.last_id,
            window=count * bucket,
            bucket=bucket,
            repositories=record.repositories,
            totals=Totals(
                record.repository_count,
                record.tag_count,
                record.manifest_count,
                record.blob_count,
                record.blob_bytes,
            ),
            buckets=activity.buckets,
            actions=activity.actions,
            bytes_in=activity.bytes_in,
            bytes_out=activity.bytes_out,
            top=activity.top(),
            detail=record.by_bucket_and_repository,
        )


class _Activity:
    """Event counts of a window added up per bucket and per repository."""

    def __init__(self, first: int, count: int, bucket: int) -> None:
        self.first, self.count = first, count
        self.buckets = [Bucket((first + i) * bucket) for i in range(count)]
        self.actions = _counts()
        self.bytes_in = self.bytes_out = 0
        self.by_repository: dict[str, RepositoryActivity] = {}

    def add_to_bucket(self, key: int, action: str, count: int, size: int) -> None:
        # Events stamped after `now` (another instance's clock) go in the last bucket.
        b = self.buckets[min(max(key - self.first, 0), self.count - 1)]
        b.counts[action] = b.counts.get(action, 0) + count
        moved_in, moved_out = _bytes(action, size)
        b.bytes_in += moved_in
        b.bytes_out += moved_out
        self.actions[action] = self.actions.get(action, 0) + count
        self.bytes_in += moved_in
        self.bytes_out += moved_out

    def add_to_repository(self, name: str, action: str, count: int, size: int) -> None:
        a = self.by_repository.setdefault(name, RepositoryActivity(name))
        a.counts[action] = a.counts.get(action, 0) + count
        moved_in, moved_out = _bytes(action, size)
        a.bytes_in += moved_in
        a.bytes_out += moved_out

    def top(self) -> list[RepositoryActivity]:
        ranked = sorted(self.by_repository.values(), key=lambda a: (-a.events, a.repository))
        return ranked[:TOP_REPOSITORIES]


def filtered(
    snap: Snapshot, visible: Callable[[str], bool], limit: int, blobs: tuple[int, int]
) -> Snapshot:
    """``snap`` (read with its ``detail``) as a caller who may see only some repositories
    sees it: the repository list and its totals, the activity and the most active
    repositories count those alone; ``blobs`` are the blob count and bytes of those
    repositories (each blob once)."""
    shown = [r for r in snap.repositories if visible(r.name)]
    totals = Totals(
        repositories=len(shown),
        tags=sum(r.tags for r in shown),
        manifests=sum(r.manifests for r in shown),
        blobs=blobs[0],
        blob_bytes=blobs[1],
    )
    activity = _Activity(snap.buckets[0].start // snap.bucket, len(snap.buckets), snap.bucket)
    for d in snap.detail:
        if visible(d.repository):
            activity.add_to_bucket(d.bucket, d.action, d.count, d.size)
            activity.add_to_repository(d.repository, d.action, d.count, d.size)
    return dataclasses.replace(
        snap,
        repositories=shown[:limit],
        totals=totals,
        buckets=activity.buckets,
        actions=activity.actions,
        bytes_in=activity.bytes_in,
        bytes_out=activity.bytes_out,
        top=activity.top(),
        detail=[],
    )
