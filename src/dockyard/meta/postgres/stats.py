"""The dashboard snapshot on PostgreSQL: every count read in one REPEATABLE READ
transaction, so the counts cover exactly the events up to the snapshot's ``last_id``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from dockyard.meta.postgres.core import Conn, PostgresCore
from dockyard.meta.records import (
    MANIFEST_KINDS,
    ActivityCount,
    BucketActivity,
    InventoryRecord,
    RepositorySummary,
    StatsRecord,
)
from dockyard.meta.sqlite.stats import IMAGE_CONFIG_TYPES
from dockyard.oci.manifest import INDEX_TYPES


class StatsStore(PostgresCore):
    @contextmanager
    def _snapshot(self) -> Iterator[Conn]:
        with self._read() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

    def _first_event_at(self, conn: Conn, ts: float) -> int:
        """The id of the first event at or after ``ts``, by bisection on the id (see
        ``meta/sqlite/stats.py``: ``events`` has no index on ``ts``)."""
        bounds = conn.execute("SELECT MIN(id), MAX(id) FROM events").fetchone()
        if bounds is None or bounds[0] is None:
            return 1
        low, high = int(bounds[0]), int(bounds[1]) + 1
        while low < high:
            mid = (low + high) // 2
            row = conn.execute(
                "SELECT id, ts FROM events WHERE id >= %s ORDER BY id LIMIT 1", (mid,)
            ).fetchone()
            if row is not None and row[1] < ts:
                low = int(row[0]) + 1
            else:
                high = mid
        return low

    def _one(self, conn: Conn, sql: str) -> tuple[int, ...]:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return tuple(int(v) for v in row)

    def stats(
        self,
        since: float,
        bucket: float,
        repositories: int,
        slack: float = 120.0,
        per_repository: bool = False,
    ) -> StatsRecord:
        """Repositories (most recently pushed first, at most ``repositories``), totals,
        and the events since ``since`` counted per action by time bucket and repository."""
        with self._snapshot() as conn:
            (last_id,) = self._one(conn, "SELECT COALESCE(MAX(id), 0) FROM events")
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
                " ORDER BY 5 DESC, r.name LIMIT %s",
                (repositories,),
            ).fetchall()
            summaries = [
                RepositorySummary(n, int(t), int(m), int(s), float(u)) for n, t, m, s, u in rows
            ]
            (repository_count,) = self._one(conn, "SELECT COUNT(*) FROM repositories")
            (tag_count,) = self._one(conn, "SELECT COUNT(*) FROM tags")
            (manifest_count,) = self._one(conn, "SELECT COUNT(*) FROM manifests")
            blob_count, blob_bytes = self._one(
                conn, "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs"
            )
            first = self._first_event_at(conn, since - slack)
            window = "FROM events WHERE id >= %s AND id <= %s AND ts >= %s"
            args = (first, last_id, since)
            by_bucket = [
                ActivityCount(int(k), a, int(c), int(s))
                for k, a, c, s in conn.execute(
                    "SELECT floor(ts / %s)::bigint AS k, action, COUNT(*),"
                    f" COALESCE(SUM(size), 0) {window} GROUP BY k, action ORDER BY k",
                    (bucket, *args),
                ).fetchall()
            ]
            by_repository = [
                ActivityCount(str(k), a, int(c), int(s))
                for k, a, c, s in conn.execute(
                    "SELECT COALESCE(repository, ''), action, COUNT(*), COALESCE(SUM(size), 0)"
                    f" {window} GROUP BY repository, action",
                    args,
                ).fetchall()
            ]
            detail = []
            if per_repository:
                detail = [
                    BucketActivity(int(k), str(r), a, int(c), int(s))
                    for k, r, a, c, s in conn.execute(
                        "SELECT floor(ts / %s)::bigint AS k, COALESCE(repository, ''), action,"
                        f" COUNT(*), COALESCE(SUM(size), 0) {window}"
                        " GROUP BY k, repository, action",
                        (bucket, *args),
                    ).fetchall()
                ]
        return StatsRecord(
            last_id,
            summaries,
            repository_count,
            tag_count,
            manifest_count,
            blob_count,
            blob_bytes,
            by_bucket,
            by_repository,
            detail,
        )

    def blob_totals(self, repositories: Sequence[str]) -> tuple[int, int]:
        with self._read() as conn:
            row = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(bl.size), 0) FROM blobs bl WHERE bl.digest IN"
                " (SELECT rb.digest FROM repository_blobs rb"
                " JOIN repositories r ON r.id = rb.repository_id WHERE r.name = ANY(%s::text[]))",
                (list(repositories),),
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def inventory(self) -> InventoryRecord:
        with self._snapshot() as conn:
            (repositories,) = self._one(conn, "SELECT COUNT(*) FROM repositories")
            (tags,) = self._one(conn, "SELECT COUNT(*) FROM tags")
            kinds = conn.execute(
                "SELECT CASE WHEN media_type = ANY(%s::text[]) THEN 'index'"
                " WHEN artifact_type IS NULL OR artifact_type = ANY(%s::text[]) THEN 'image'"
                " ELSE 'artifact' END AS kind, COUNT(*) FROM manifests GROUP BY kind",
                (list(INDEX_TYPES), list(IMAGE_CONFIG_TYPES)),
            ).fetchall()
            blobs, blob_bytes = self._one(
                conn, "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs"
            )
            (uploads,) = self._one(conn, "SELECT COUNT(*) FROM uploads")
            (last_id,) = self._one(conn, "SELECT COALESCE(MAX(id), 0) FROM events")
            cursors = conn.execute("SELECT name, cursor FROM webhook_cursors").fetchall()
        manifests = dict.fromkeys(MANIFEST_KINDS, 0)
        manifests.update({str(kind): int(n) for kind, n in kinds})
        return InventoryRecord(
            repositories,
            tags,
            manifests,
            blobs,
            blob_bytes,
            uploads,
            last_id,
            {str(name): int(cursor) for name, cursor in cursors},
        )
