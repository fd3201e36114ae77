"""The dashboard snapshot on SQLite: every count read in one transaction, so the
counts cover exactly the events up to the snapshot's ``last_id``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from dockyard.meta.records import (
    MANIFEST_KINDS,
    ActivityCount,
    BucketActivity,
    InventoryRecord,
    RepositorySummary,
    StatsRecord,
)
from dockyard.meta.sqlite.core import SQLiteCore
from dockyard.oci.manifest import INDEX_TYPES

# Config media types of container images; an image manifest with any other (or with an
# artifactType) is an artifact (stored as manifests.artifact_type, see referrer_artifact_type).
IMAGE_CONFIG_TYPES = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)


class StatsStore(SQLiteCore):
    def _first_event_at(self, conn: sqlite3.Connection, ts: float) -> int:
        """The id of the first event at or after ``ts``, by bisection on the id.

        ``events`` has no index on ``ts``, but ids grow with time (pull events are written
        up to a flush interval late, and instances' clocks differ a little: callers ask
        for a time somewhat earlier than they need and filter on ``ts`` too). Costs
        O(log n) primary-key lookups instead of a scan of the whole log.
        """
        low, high = conn.execute("SELECT MIN(id), MAX(id) FROM events").fetchone()
        if low is None:
            return 1
        low, high = int(low), int(high) + 1
        while low < high:
            mid = (low + high) // 2
            row = conn.execute(
                "SELECT id, ts FROM events WHERE id >= ? ORDER BY id LIMIT 1", (mid,)
            ).fetchone()
            if row is not None and row[1] < ts:
                low = int(row[0]) + 1
            else:
                high = mid
        return low

    def stats(
        self,
        since: float,
        bucket: float,
        repositories: int,
        slack: float = 120.0,
        per_repository: bool = False,
    ) -> StatsRecord:
        """Repositories (most recently pushed first, at most ``repositories``), totals,
        and the events since ``since`` counted per action by ``bucket``-second time
        bucket (bucket number ``ts // bucket``) and per repository."""
        conn = self._conn()
        conn.execute("BEGIN")  # one read snapshot for every query below
        try:
            last_id = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
            rows = conn.execute(
                "WITH m AS (SELECT repository_id, COUNT(*) AS n, SUM(size) AS bytes,"
                " MAX(pushed) AS last FROM manifests GROUP BY repository_id),"
                " t AS (SELECT repository_id, COUNT(*) AS n FROM tags GROUP BY repository_id),"
                " b AS (SELECT rb.repository_id, SUM(bl.size) AS bytes FROM repository_blobs rb"
                " JOIN blobs bl ON bl.digest = rb.digest GROUP BY rb.repository_id)"
                " SELECT r.name, COALESCE(t.n, 0), COALESCE(m.n, 0),"
                " COALESCE(b.bytes, 0) + COALESCE(m.bytes, 0), COALESCE(m.last, r.created)"
                " FROM repositories r LEFT JOIN m ON m.repository_id = r.id"
                " LEFT JOIN t ON t.repository_id = r.id LEFT JOIN b ON b.repository_id = r.id"
                " ORDER BY 5 DESC, r.name LIMIT ?",
                (repositories,),
            ).fetchall()
            summaries = [
                RepositorySummary(n, int(t), int(m), int(s), float(u)) for n, t, m, s, u in rows
            ]
            (repository_count,) = conn.execute("SELECT COUNT(*) FROM repositories").fetchone()
            (tag_count,) = conn.execute("SELECT COUNT(*) FROM tags").fetchone()
            (manifest_count,) = conn.execute("SELECT COUNT(*) FROM manifests").fetchone()
            blob_count, blob_bytes = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs"
            ).fetchone()
            first = self._first_event_at(conn, since - slack)
            window = "FROM events WHERE id >= ? AND id <= ? AND ts >= ?"
            args = (first, last_id, since)
            by_bucket = [
                ActivityCount(int(k), a, int(c), int(s))
                for k, a, c, s in conn.execute(
                    "SELECT CAST(ts / ? AS INTEGER) AS k, action, COUNT(*),"
                    f" COALESCE(SUM(size), 0) {window} GROUP BY k, action ORDER BY k",
                    (bucket, *args),
                )
            ]
            by_repository = [
                ActivityCount(str(k), a, int(c), int(s))
                for k, a, c, s in conn.execute(
                    "SELECT COALESCE(repository, ''), action, COUNT(*), COALESCE(SUM(size), 0)"
                    f" {window} GROUP BY repository, action",
                    args,
                )
            ]
            detail = []
            if per_repository:
                detail = [
                    BucketActivity(int(k), str(r), a, int(c), int(s))
                    for k, r, a, c, s in conn.execute(
                        "SELECT CAST(ts / ? AS INTEGER) AS k, COALESCE(repository, ''), action,"
                        f" COUNT(*), COALESCE(SUM(size), 0) {window}"
                        " GROUP BY k, repository, action",
                        (bucket, *args),
                    )
                ]
        finally:
            conn.execute("COMMIT")
        return StatsRecord(
            last_id,
            summaries,
            int(repository_count),
            int(tag_count),
            int(manifest_count),
            int(blob_count),
            int(blob_bytes),
            by_bucket,
            by_repository,
            detail,
        )

    def blob_totals(self, repositories: Sequence[str]) -> tuple[int, int]:
        # The names go in as one JSON array: no limit on SQL variables however many.
        count, size = (
            self._conn()
            .execute(
                "SELECT COUNT(*), COALESCE(SUM(bl.size), 0) FROM blobs bl WHERE bl.digest IN"
                " (SELECT rb.digest FROM repository_blobs rb"
                " JOIN repositories r ON r.id = rb.repository_id"
                " WHERE r.name IN (SELECT value FROM json_each(?)))",
                (json.dumps(list(repositories)),),
            )
            .fetchone()
        )
        return int(count), int(size)

    def inventory(self) -> InventoryRecord:
        conn = self._conn()
        conn.execute("BEGIN")  # one read snapshot for every count
        try:
            (repositories,) = conn.execute("SELECT COUNT(*) FROM repositories").fetchone()
            (tags,) = conn.execute("SELECT COUNT(*) FROM tags").fetchone()
            kinds = conn.execute(
                "SELECT CASE WHEN media_type IN (SELECT value FROM json_each(?)) THEN 'index'"
                " WHEN artifact_type IS NULL"
                " OR artifact_type IN (SELECT value FROM json_each(?)) THEN 'image'"
                " ELSE 'artifact' END AS kind, COUNT(*) FROM manifests GROUP BY kind",
                (json.dumps(list(INDEX_TYPES)), json.dumps(list(IMAGE_CONFIG_TYPES))),
            ).fetchall()
            blobs, blob_bytes = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs"
            ).fetchone()
            (uploads,) = conn.execute("SELECT COUNT(*) FROM uploads").fetchone()
            (last_id,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
            cursors = conn.execute("SELECT name, cursor FROM webhook_cursors").fetchall()
        finally:
            conn.execute("COMMIT")
        manifests = dict.fromkeys(MANIFEST_KINDS, 0)
        manifests.update({str(kind): int(n) for kind, n in kinds})
        return InventoryRecord(
            int(repositories),
            int(tags),
            manifests,
            int(blobs),
            int(blob_bytes),
            int(uploads),
            int(last_id),
            {str(name): int(cursor) for name, cursor in cursors},
        )
