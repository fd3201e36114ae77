"""What retention needs of a store, written once for both dialects: the tags of a
repository with their push and pull times, deleting tags only if they are unchanged, and
last-pulled times kept from the batched pull events.

``RetentionStore`` is a mixin both ``SQLiteMeta`` and ``PostgresMeta`` inherit; its SQL
is written with ``?`` and bound to the store's parameter mark (``lease_sql.mark``).

Lock order on PostgreSQL (no deadlock with the other writers): ``record_pulls`` updates
manifests, then tags, each in key order; ``delete_manifest`` also takes the manifest row
before its tags; pushes and ``delete_tags_if_unchanged`` take tags only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from dockyard.meta.leases import LeaseSQL
from dockyard.meta.records import Event, PullTime, RetentionTag, TagImmutable

_REPO = "(SELECT id FROM repositories WHERE name = ?)"

_TAG_DETAILS = (
    "SELECT t.name, t.digest, m.media_type, m.size, m.size + COALESCE((SELECT SUM(b.size)"
    " FROM manifest_references mr JOIN blobs b ON b.digest = mr.child_digest"
    " WHERE mr.repository_id = t.repository_id AND mr.manifest_digest = t.digest"
    " AND mr.kind = 'blob'), 0), t.pushed, t.pulled, m.pulled"
    " FROM tags t JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest"
    f" WHERE t.repository_id = {_REPO} ORDER BY t.name"
)
# Deleted only if the tag still points where the policy saw it and was not pushed since.
_DELETE_UNCHANGED = (
    f"DELETE FROM tags WHERE repository_id = {_REPO} AND name = ? AND digest = ? AND pushed = ?"
)
# Only ever forward: a late batch never moves a newer time back.
_TAG_PULLED = (
    "UPDATE tags SET pulled = ?"
    f" WHERE repository_id = {_REPO} AND name = ? AND digest = ? AND (pulled IS NULL OR pulled < ?)"
)
_MANIFEST_PULLED = (
    "UPDATE manifests SET pulled = ?"
    f" WHERE repository_id = {_REPO} AND digest = ? AND (pulled IS NULL OR pulled < ?)"
)


# An immutable tag is created, or re-pushed with the same digest; never moved (no row
# changes: the caller raises TagImmutable and the transaction rolls back).
_IMMUTABLE_TAG_UPSERT = (
    "INSERT INTO tags (repository_id, name, digest, pushed) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (repository_id, name) DO UPDATE SET pushed = excluded.pushed"
    " WHERE tags.digest = excluded.digest"
)


def put_immutable_tags(
    conn: Any, mark: str, repo_id: int | None, tags: Sequence[str], digest: str, now: float
) -> None:
    """Inside a push's transaction: point ``tags`` (immutable ones) at ``digest`` unless one
    already points elsewhere (``TagImmutable``). Race-free: the upsert's condition is
    checked on the row as it is when the statement runs (PostgreSQL locks it first)."""
    sql = _IMMUTABLE_TAG_UPSERT.replace("?", mark)
    for tag in tags:
        if conn.execute(sql, (repo_id, tag, digest, now)).rowcount == 0:
            raise TagImmutable(tag)


def delete_tags_of(
    conn: Any,
    mark: str,
    repo_id: int,
    digest: str,
    immutable: Callable[[str], bool] | None,
) -> None:
    """Inside a manifest delete's transaction: delete the manifest's tags, refusing
    (``TagImmutable``) if ``immutable`` accepts one of the tags the statement removed."""
    cur = conn.execute(
        f"DELETE FROM tags WHERE repository_id = {mark} AND digest = {mark} RETURNING name",
        (repo_id, digest),
    )
    removed = [str(r[0]) for r in cur.fetchall()]
    for tag in removed:
        if immutable is not None and immutable(tag):
            raise TagImmutable(tag)


def _latest(pulled: Any, manifest_pulled: Any) -> float | None:
    times = [float(t) for t in (pulled, manifest_pulled) if t is not None]
    return max(times) if times else None


class RetentionStore:
    """The ``TagRetention`` methods (``meta/store.py``) over a store's dialect, write
    transaction, reads and event append."""

    lease_sql: LeaseSQL

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _append(self, conn: Any, events: Sequence[Event]) -> None:
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.lease_sql.mark)

    def retention_tags(self, repository: str) -> list[RetentionTag]:
        with self._read() as conn:
            rows = conn.execute(self._sql(_TAG_DETAILS), (repository,)).fetchall()
        return [
            RetentionTag(
                repository, r[0], r[1], r[2], int(r[3]), int(r[4]), float(r[5]), _latest(r[6], r[7])
            )
            for r in rows
        ]

    def delete_tags_if_unchanged(
        self,
        repository: str,
        tags: Sequence[RetentionTag],
        make_events: Callable[[RetentionTag], Sequence[Event]],
    ) -> list[RetentionTag]:
        deleted: list[RetentionTag] = []
        with self._write() as conn:
            for t in tags:
                cur = conn.execute(
                    self._sql(_DELETE_UNCHANGED), (repository, t.tag, t.digest, t.pushed)
                )
                if cur.rowcount == 1:
                    deleted.append(t)
            self._append(conn, [e for t in deleted for e in make_events(t)])
        return deleted

    def record_pulls(
        self, events: Sequence[Event], tags: Sequence[PullTime], manifests: Sequence[PullTime]
    ) -> None:
        def order(p: PullTime) -> tuple[str, str]:
            return (p.repository, p.reference)

        with self._write() as conn:
            for p in sorted(manifests, key=order):
                conn.execute(self._sql(_MANIFEST_PULLED), (p.ts, p.repository, p.digest, p.ts))
            for p in sorted(tags, key=order):
                conn.execute(
                    self._sql(_TAG_PULLED), (p.ts, p.repository, p.reference, p.digest, p.ts)
                )
            self._append(conn, events)
