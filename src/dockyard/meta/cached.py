"""What the pull-through cache (``cache/``) needs of a store, written once for both
dialects: ``CacheStore`` is a mixin both ``SQLiteMeta`` and ``PostgresMeta`` inherit, its
SQL written with ``?`` and bound to the store's parameter mark (``lease_sql.mark``).

Cached content carries the name of the ``[[upstreams]]`` registry it came from
(``manifests.upstream``, ``repository_blobs.upstream``; NULL: pushed here), and a cached
tag the last time it was resolved upstream (``tags.resolved``). Otherwise it is content
like any other: garbage collection and retention treat it as they treat pushed content.

A cached manifest is stored sparse: its blobs and an index's children need not be stored
(they are fetched when asked for), so nothing is required and no reference is refreshed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from dockyard.meta.leases import LeaseSQL
from dockyard.meta.records import NewManifest

_REPO = "(SELECT id FROM repositories WHERE name = ?)"

_CACHED_TAG = (
    "SELECT t.digest, t.resolved FROM tags t JOIN repositories r ON r.id = t.repository_id"
    " WHERE r.name = ? AND t.name = ?"
)
_PUT_MANIFEST = (
    "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject,"
    " size, payload, annotations, pushed, touched, upstream)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repository_id, digest)"
    " DO UPDATE SET touched = excluded.touched,"
    " upstream = COALESCE(manifests.upstream, excluded.upstream)"
)
_PUT_REFERENCE = (
    "INSERT INTO manifest_references (repository_id, manifest_digest, child_digest, kind)"
    " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
# A cached tag follows the upstream: it moves to whatever digest the upstream names.
_PUT_TAG = (
    "INSERT INTO tags (repository_id, name, digest, pushed, resolved) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest,"
    " pushed = CASE WHEN tags.digest = excluded.digest THEN tags.pushed"
    " ELSE excluded.pushed END, resolved = excluded.resolved"
)
_RESOLVED = (
    f"UPDATE tags SET resolved = ? WHERE repository_id = {_REPO} AND name = ? AND digest = ?"
)
_PUT_BLOB = (
    "INSERT INTO blobs (digest, size, created, touched) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (digest) DO UPDATE SET touched = excluded.touched"
)
_LINK_BLOB = (
    "INSERT INTO repository_blobs (repository_id, digest, linked, upstream) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (repository_id, digest) DO UPDATE SET linked = excluded.linked"
)
_MANIFEST_FROM = (
    "SELECT m.upstream FROM manifests m JOIN repositories r ON r.id = m.repository_id"
    " WHERE r.name = ? AND m.digest = ?"
)
_BLOB_FROM = (
    "SELECT rb.upstream FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id"
    " WHERE r.name = ? AND rb.digest = ?"
)
# A job row that no holder keeps (released, or expired): gone once its job is done.
_FORGET_JOB = "DELETE FROM job_leases WHERE name = ? AND (lease IS NULL OR lease = ?)"


@dataclass(frozen=True, slots=True)
class CachedTag:
    digest: str
    # When the tag was last resolved upstream (None: never, e.g. pushed before caching).
    resolved: float | None


class CachedContent(Protocol):
    """The pull-through cache's reads and writes (``meta/cached.py``)."""

    def cached_tag(self, repository: str, tag: str) -> CachedTag | None:
        """The digest a tag names and when it was last resolved upstream."""

    def put_cached_manifest(self, m: NewManifest, upstream: str, resolved: float | None) -> None:
        """Store a manifest fetched from ``upstream`` (sparse: nothing is required) with
        its references, and point ``m.tags`` at it with ``resolved`` (one transaction)."""

    def resolve_cached_tag(self, repository: str, tag: str, digest: str, resolved: float) -> bool:
        """The upstream still names ``digest``: set the tag's ``resolved``; False if the
        tag points elsewhere now (or is gone)."""

    def link_cached_blob(self, repository: str, digest: str, size: int, upstream: str) -> None:
        """Record a blob whose bytes were committed from ``upstream`` and link it to
        ``repository`` (idempotent; call ``claim_blob`` before the storage commit)."""

    def cached_from(self, repository: str, digest: str) -> str | None:
        """The upstream a manifest (or else a blob link) of ``repository`` came from."""

    def job_forget(self, name: str, lease: str) -> bool:
        """Delete a job's lease row if it is free or held by ``lease`` (per-digest fill
        leases would otherwise pile up)."""


class CacheStore:
    lease_sql: LeaseSQL
    _clock: Callable[[], float]

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _repo_id(self, conn: Any, name: str, create: bool = False) -> int | None:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        mark = self.lease_sql.mark
        return sql if mark == "?" else sql.replace("?", mark)

    def cached_tag(self, repository: str, tag: str) -> CachedTag | None:
        with self._read() as conn:
            row = conn.execute(self._sql(_CACHED_TAG), (repository, tag)).fetchone()
        if row is None:
            return None
        return CachedTag(row[0], None if row[1] is None else float(row[1]))

    def put_cached_manifest(self, m: NewManifest, upstream: str, resolved: float | None) -> None:
        with self._write() as conn:
            now = self._clock()
            repo_id = self._repo_id(conn, m.repository, create=True)
            conn.execute(
                self._sql(_PUT_MANIFEST),
                (
                    repo_id,
                    m.digest,
                    m.media_type,
                    m.artifact_type,
                    m.subject,
                    len(m.payload),
                    m.payload,
                    json.dumps(m.annotations) if m.annotations else None,
                    now,
                    now,
                    upstream,
                ),
            )
            refs = [(repo_id, m.digest, d, "blob") for d in m.blob_refs]
            refs += [(repo_id, m.digest, d, "manifest") for d in m.manifest_refs]
            # One statement per row: psycopg's Connection has no executemany (a manifest
            # has tens of references, not thousands).
            for ref in refs:
                conn.execute(self._sql(_PUT_REFERENCE), ref)
            for tag in m.tags:
                conn.execute(self._sql(_PUT_TAG), (repo_id, tag, m.digest, now, resolved))

    def resolve_cached_tag(self, repository: str, tag: str, digest: str, resolved: float) -> bool:
        with self._write() as conn:
            cur = conn.execute(self._sql(_RESOLVED), (resolved, repository, tag, digest))
            return bool(cur.rowcount == 1)

    def link_cached_blob(self, repository: str, digest: str, size: int, upstream: str) -> None:
        with self._write() as conn:
            now = self._clock()
            conn.execute(self._sql(_PUT_BLOB), (digest, size, now, now))
            repo_id = self._repo_id(conn, repository, create=True)
            conn.execute(self._sql(_LINK_BLOB), (repo_id, digest, now, upstream))

    def cached_from(self, repository: str, digest: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(self._sql(_MANIFEST_FROM), (repository, digest)).fetchone()
            if row is None:
                row = conn.execute(self._sql(_BLOB_FROM), (repository, digest)).fetchone()
        return None if row is None else row[0]

    def job_forget(self, name: str, lease: str) -> bool:
        with self._write() as conn:
            return bool(conn.execute(self._sql(_FORGET_JOB), (name, lease)).rowcount == 1)
