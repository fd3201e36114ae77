"""Garbage collection's store methods (``meta/store.py`` ``Collection``), written once over
both dialects: ``CollectStore`` is a mixin both cores inherit, its SQL written with ``?``
and rewritten to the store's parameter mark (``lease_sql.mark``).

Every delete is CONDITIONAL, evaluated at delete time, never trusted from the collector's
earlier reads alone (``core/gc.py`` states the whole protocol):

- a manifest goes only if it has no tag, no manifest references it as a child, and it
  was not pushed or relied on (``touched``) since the cutoff;
- a link goes only if no manifest of its repository references the blob and it was not
  linked or relied on since the cutoff;
- a blob row goes only if no repository links it and it was not touched since the
  cutoff; it moves to ``blob_deletions`` in the same transaction, and no upload relies on
  stored bytes of a digest listed there (``claim_blob``).

The other side of each race refreshes the row it relies on in its own transaction
(``touch_references`` in ``put_manifest``, ``claim_blob``, ``link_stored_blob``): on
SQLite writes are serialized; on PostgreSQL (READ COMMITTED) a DELETE that waited for
the refreshing UPDATE's row lock re-checks its condition on the new row version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from dockyard.meta.gcrecords import Doomed, GcBlob, GcLink, GcManifest, GcReference, GcRepository
from dockyard.meta.leases import Connection, LeaseSQL
from dockyard.meta.records import BlobBeingDeleted, Event, ReferencesGone

GC_JOB = "gc"


def _rewrite(sql: str, mark: str) -> str:
    return sql if mark == "?" else sql.replace("?", mark)


_DELETE_MANIFEST = (
    "DELETE FROM manifests WHERE repository_id = ? AND digest = ?"
    " AND COALESCE(touched, pushed) < ?"
    " AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = manifests.repository_id"
    " AND t.digest = manifests.digest)"
    " AND NOT EXISTS (SELECT 1 FROM manifest_references r"
    " WHERE r.repository_id = manifests.repository_id AND r.child_digest = manifests.digest"
    " AND r.kind = 'manifest')"
    # A referrer stays while its subject is tagged or was pushed since the cutoff.
    " AND NOT EXISTS (SELECT 1 FROM manifests s WHERE s.repository_id = manifests.repository_id"
    " AND s.digest = manifests.subject AND (COALESCE(s.touched, s.pushed) >= ?"
    " OR EXISTS (SELECT 1 FROM tags st WHERE st.repository_id = s.repository_id"
    " AND st.digest = s.digest)))"
)
_DELETE_LINK = (
    "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ? AND linked < ?"
    " AND NOT EXISTS (SELECT 1 FROM manifest_references r"
    " WHERE r.repository_id = repository_blobs.repository_id"
    " AND r.child_digest = repository_blobs.digest AND r.kind = 'blob')"
)
_MARK_BLOB = (
    "DELETE FROM blobs WHERE digest = ? AND COALESCE(touched, created) < ?"
    " AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = blobs.digest)"
)
_COLLECTOR_ALIVE = (
    "SELECT 1 FROM job_leases WHERE name = ? AND lease IS NOT NULL AND lease_expires >= ?"
)


class CollectStore:
    """The ``Collection`` methods of a store, over its dialect, transactions and clock."""

    lease_sql: LeaseSQL
    # A statement that locks one digest until the transaction ends (binds the digest), or
    # None where write transactions are serialized anyway (SQLite). It orders an upload's
    # claim and the collector's mark of the same digest: on PostgreSQL neither sees the
    # other's uncommitted rows, and a new row locks nothing the other waits for.
    digest_lock: str | None = None
    _clock: Callable[[], float]

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _lock_digest(self, conn: Any, digest: str) -> None:
        if self.digest_lock is not None:
            conn.execute(self.digest_lock, (digest,))

    def _snapshot(self) -> AbstractContextManager[Any]:
        """A read-only transaction: one consistent view for several SELECTs."""
        raise NotImplementedError

    def _repo_id(self, conn: Any, name: str, create: bool = False) -> int | None:
        raise NotImplementedError

    def _append(self, conn: Any, events: Sequence[Event]) -> None:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return _rewrite(sql, self.lease_sql.mark)

    # -- reading what there is

    def gc_repository_names(self) -> list[str]:
        with self._snapshot() as conn:
            rows = conn.execute("SELECT name FROM repositories ORDER BY name").fetchall()
        return [str(r[0]) for r in rows]

    def gc_repository(self, name: str) -> GcRepository | None:
        """Everything of ``name`` the collector decides on, read in one transaction."""
        q = self._q
        with self._snapshot() as conn:
            repo_id = self._repo_id(conn, name)
            if repo_id is None:
                return None

            def rows(sql: str) -> list[Any]:
                return list(conn.execute(q(sql), (repo_id,)).fetchall())

            manifests = [
                GcManifest(str(d), str(mt), int(size), subject, float(touched), bool(tagged))
                for d, mt, size, subject, touched, tagged in rows(
                    "SELECT m.digest, m.media_type, m.size, m.subject,"
                    " COALESCE(m.touched, m.pushed), EXISTS (SELECT 1 FROM tags t"
                    " WHERE t.repository_id = m.repository_id AND t.digest = m.digest)"
                    " FROM manifests m WHERE m.repository_id = ?"
                )
            ]
            references = [
                GcReference(str(m), str(c), str(k))
                for m, c, k in rows(
                    "SELECT manifest_digest, child_digest, kind FROM manifest_references"
                    " WHERE repository_id = ?"
                )
            ]
            links = [
                GcLink(str(d), int(size), float(linked))
                for d, size, linked in rows(
                    "SELECT rb.digest, b.size, rb.linked FROM repository_blobs rb"
                    " JOIN blobs b ON b.digest = rb.digest WHERE rb.repository_id = ?"
                )
            ]
        return GcRepository(repo_id, name, manifests, references, links)

    def gc_blobs(self, after: str | None, limit: int) -> list[GcBlob]:
        """Blob rows after ``after`` in digest order, with how many repositories link each."""
        with self._snapshot() as conn:
            rows = conn.execute(
                self._q(
                    "SELECT b.digest, b.size, COALESCE(b.touched, b.created),"
                    " (SELECT COUNT(*) FROM repository_blobs rb WHERE rb.digest = b.digest)"
                    " FROM blobs b WHERE b.digest > ? ORDER BY b.digest LIMIT ?"
                ),
                (after or "", limit),
            ).fetchall()
        return [GcBlob(str(d), int(s), float(t), int(n)) for d, s, t, n in rows]

    def gc_known_digests(self, digests: Sequence[str]) -> set[str]:
        """Of ``digests``, those with a blob row or a deletion row (not stray bytes)."""
        found: set[str] = set()
        with self._snapshot() as conn:
            for d in digests:
                row = conn.execute(
                    self._q(
                        "SELECT 1 FROM blobs WHERE digest = ?"
                        " UNION ALL SELECT 1 FROM blob_deletions WHERE digest = ?"
                    ),
                    (d, d),
                ).fetchone()
                if row is not None:
                    found.add(d)
        return found

    def gc_pending_deletions(self, limit: int) -> list[str]:
        """Digests whose rows are gone and whose bytes may still be stored."""
        with self._snapshot() as conn:
            rows = conn.execute(
                self._q("SELECT digest FROM blob_deletions ORDER BY digest LIMIT ?"), (limit,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    # -- deleting, each conditional

    def gc_delete_manifests(self, repository_id: int, doomed: Sequence[Doomed]) -> list[str]:
        """Delete those of ``doomed`` still unneeded, with their references; in order (a
        parent before the child it references). The digests deleted."""
        deleted: list[str] = []
        with self._write() as conn:
            events: list[Event] = []
            for d in doomed:
                cur = conn.execute(
                    self._q(_DELETE_MANIFEST), (repository_id, d.digest, d.cutoff, d.cutoff)
                )
                if cur.rowcount != 1:
                    continue
                conn.execute(
                    self._q(
                        "DELETE FROM manifest_references"
                        " WHERE repository_id = ? AND manifest_digest = ?"
                    ),
                    (repository_id, d.digest),
                )
                deleted.append(d.digest)
                events.append(d.event)
            self._append(conn, events)
        return deleted

    def gc_delete_links(self, repository_id: int, doomed: Sequence[Doomed]) -> list[str]:
        """Unlink those of ``doomed`` no manifest of the repository references."""
        deleted: list[str] = []
        with self._write() as conn:
            events: list[Event] = []
            for d in doomed:
                cur = conn.execute(self._q(_DELETE_LINK), (repository_id, d.digest, d.cutoff))
                if cur.rowcount == 1:
                    deleted.append(d.digest)
                    events.append(d.event)
            self._append(conn, events)
        return deleted

    def gc_mark_blobs(self, doomed: Sequence[Doomed]) -> list[str]:
        """Delete the blob rows of ``doomed`` no repository links, each moved to
        ``blob_deletions`` in the same transaction: their bytes may go next."""
        marked: list[str] = []
        with self._write() as conn:
            now = self._clock()
            events: list[Event] = []
            for d in sorted(doomed, key=lambda d: d.digest):  # locks in one order
                self._lock_digest(conn, d.digest)
                cur = conn.execute(self._q(_MARK_BLOB), (d.digest, d.cutoff))
                if cur.rowcount != 1:
                    continue
                conn.execute(
                    self._q(
                        "INSERT INTO blob_deletions (digest, marked) VALUES (?, ?)"
                        " ON CONFLICT (digest) DO UPDATE SET marked = excluded.marked"
                    ),
                    (d.digest, now),
                )
                marked.append(d.digest)
                events.append(d.event)
            self._append(conn, events)
        return marked

    def gc_mark_stray_bytes(self, digests: Sequence[str]) -> list[str]:
        """Mark stored bytes that have no blob row (a crash between an upload's commit and
        its link) for deletion; a digest an upload claimed meanwhile is left alone."""
        marked: list[str] = []
        with self._write() as conn:
            now = self._clock()
            for d in sorted(digests):
                self._lock_digest(conn, d)
                cur = conn.execute(
                    self._q(
                        "INSERT INTO blob_deletions (digest, marked) SELECT ?, ?"
                        " WHERE NOT EXISTS (SELECT 1 FROM blobs WHERE digest = ?)"
                        " ON CONFLICT (digest) DO NOTHING"
                    ),
                    (d, now, d),
                )
                if cur.rowcount == 1:
                    marked.append(d)
        return marked

    def gc_unmark_blobs(self, digests: Sequence[str]) -> None:
        """The bytes of ``digests`` are deleted: forget their deletion rows."""
        with self._write() as conn:
            for d in digests:
                conn.execute(self._q("DELETE FROM blob_deletions WHERE digest = ?"), (d,))

    # -- the other side of the races

    def claim_blob(self, digest: str, size: int, lease_seconds: float) -> None:
        """Before an upload commits bytes (which may dedupe onto stored ones): record that
        it relies on ``digest``. Raises ``BlobBeingDeleted`` while a collector deletes
        them; a deletion left by a collector that is gone (no live "gc" lease, marked
        over ``2 * lease_seconds`` ago) is taken over: this upload writes the bytes."""
        q = self._q
        with self._write() as conn:
            self._lock_digest(conn, digest)
            now = self._clock()
            row = conn.execute(
                q("SELECT marked FROM blob_deletions WHERE digest = ?"), (digest,)
            ).fetchone()
            if row is not None:
                alive = conn.execute(q(_COLLECTOR_ALIVE), (GC_JOB, now)).fetchone() is not None
                if alive or float(row[0]) >= now - 2 * lease_seconds:
                    raise BlobBeingDeleted(f"blob {digest} is being deleted")
                conn.execute(q("DELETE FROM blob_deletions WHERE digest = ?"), (digest,))
            conn.execute(
                q(
                    "INSERT INTO blobs (digest, size, created, touched) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (digest) DO UPDATE SET touched = excluded.touched"
                ),
                (digest, size, now, now),
            )

    def link_stored_blob(self, repository: str, digest: str, events: Sequence[Event]) -> bool:
        """Link a blob whose row exists (a cross-repository mount), refreshing the row so
        the collector keeps it; False, and nothing linked, if there is no row."""
        q = self._q
        with self._write() as conn:
            now = self._clock()
            cur = conn.execute(q("UPDATE blobs SET touched = ? WHERE digest = ?"), (now, digest))
            if cur.rowcount != 1:
                return False
            repo_id = self._repo_id(conn, repository, create=True)
            conn.execute(
                q(
                    "INSERT INTO repository_blobs (repository_id, digest, linked) VALUES (?, ?, ?)"
                    " ON CONFLICT (repository_id, digest) DO UPDATE SET linked = excluded.linked"
                ),
                (repo_id, digest, now),
            )
            self._append(conn, events)
            return True


def touch_references(
    conn: Connection,
    mark: str,
    repository_id: int,
    blobs: Sequence[str],
    children: Sequence[str],
    now: float,
) -> None:
    """Inside ``put_manifest``'s transaction: refresh every blob link and stored child the
    push checked, so a collector that has not deleted them yet no longer will; raise
    ``ReferencesGone`` (the caller's transaction rolls back) if one is already gone."""
    for d in dict.fromkeys(blobs):
        cur = conn.execute(
            _rewrite(
                "UPDATE repository_blobs SET linked = ? WHERE repository_id = ? AND digest = ?",
                mark,
            ),
            (now, repository_id, d),
        )
        if cur.rowcount != 1:
            raise ReferencesGone(f"blob {d} was removed from the repository", d)
    for d in dict.fromkeys(children):
        cur = conn.execute(
            _rewrite(
                "UPDATE manifests SET touched = ? WHERE repository_id = ? AND digest = ?", mark
            ),
            (now, repository_id, d),
        )
        if cur.rowcount != 1:
            raise ReferencesGone(f"manifest {d} was removed from the repository", d)
