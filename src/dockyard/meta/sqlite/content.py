"""Repositories, blob links, manifests, tags and referrers on SQLite.

A repository row is created by the first blob link or manifest push into it and never
deleted. A blob may be served from a repository only while it is linked there
(``repository_blobs``). Deleting a manifest deletes its tags and references too. Each
change appends its events in its own transaction (``SQLiteCore._write``).

``get_manifest``, ``get_tagged_manifest`` and ``linked_blob_size`` run inline on the event
loop for every manifest and blob HEAD/GET (``Database.read``): each is one indexed query
and no Python work besides building the record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from dockyard.meta.collect import touch_references
from dockyard.meta.records import Event, ManifestRecord, NewManifest, ReferrerRecord
from dockyard.meta.sqlite.core import SQLiteCore


class ContentStore(SQLiteCore):
    def repository_exists(self, name: str) -> bool:
        return self._repo_id(self._conn(), name) is not None

    def list_repositories(self, last: str | None, limit: int) -> list[str]:
        rows = (
            self._conn()
            .execute(
                "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?",
                (last or "", limit),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    # -- blobs

    def blob_size(self, digest: str) -> int | None:
        row = self._conn().execute("SELECT size FROM blobs WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else int(row[0])

    def linked_blob_size(self, repository: str, digest: str) -> int | None:
        row = (
            self._conn()
            .execute(
                "SELECT b.size FROM repository_blobs rb"
                " JOIN repositories r ON r.id = rb.repository_id"
                " JOIN blobs b ON b.digest = rb.digest"
                " WHERE r.name = ? AND rb.digest = ?",
                (repository, digest),
            )
            .fetchone()
        )
        return None if row is None else int(row[0])

    def repositories_linking(
        self, digest: str, limit: int = 100, after: str | None = None
    ) -> list[str]:
        rows = (
            self._conn()
            .execute(
                "SELECT r.name FROM repository_blobs rb"
                " JOIN repositories r ON r.id = rb.repository_id"
                " WHERE rb.digest = ? AND r.name > ? ORDER BY r.name LIMIT ?",
                (digest, after or "", limit),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def link_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        events: Sequence[Event],
        finished_upload: str | None = None,
    ) -> None:
        """Record a stored blob and link it to ``repository`` (idempotent)."""
        with self._write() as conn:
            now = self._clock()
            conn.execute(
                "INSERT INTO blobs (digest, size, created, touched) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (digest) DO UPDATE SET touched = excluded.touched",
                (digest, size, now, now),
            )
            repo_id = self._repo_id(conn, repository, create=True)
            conn.execute(
                "INSERT INTO repository_blobs (repository_id, digest, linked) VALUES (?, ?, ?)"
                " ON CONFLICT (repository_id, digest) DO UPDATE SET linked = excluded.linked",
                (repo_id, digest, now),
            )
            if finished_upload is not None:
                conn.execute("DELETE FROM uploads WHERE id = ?", (finished_upload,))
            self._append(conn, events)

    def unlink_blob(self, repository: str, digest: str, events: Sequence[Event]) -> bool:
        with self._write() as conn:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return False
            cur = conn.execute(
                "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?",
                (repo_id, digest),
            )
            if cur.rowcount == 0:
                return False
            self._append(conn, events)
            return True

    def _sizes_in(self, sql: str, repository: str, digests: Sequence[str]) -> dict[str, int]:
        """Run ``sql`` (a query of (digest, size) with ``{marks}`` for the digest list) in
        batches that stay under SQLite's bound-parameter limit."""
        conn = self._conn()
        out: dict[str, int] = {}
        for start in range(0, len(digests), 500):
            part = digests[start : start + 500]
            rows = conn.execute(
                sql.format(marks=",".join("?" * len(part))), (repository, *part)
            ).fetchall()
            out.update({d: int(s) for d, s in rows})
        return out

    def linked_blobs(self, repository: str, digests: Sequence[str]) -> dict[str, int]:
        """Of ``digests``, those linked to ``repository``, with their sizes."""
        return self._sizes_in(
            "SELECT b.digest, b.size FROM repository_blobs rb"
            " JOIN repositories r ON r.id = rb.repository_id"
            " JOIN blobs b ON b.digest = rb.digest"
            " WHERE r.name = ? AND rb.digest IN ({marks})",
            repository,
            digests,
        )

    def existing_manifests(self, repository: str, digests: Sequence[str]) -> dict[str, int]:
        """Of ``digests``, the manifests stored in ``repository``, with their sizes."""
        return self._sizes_in(
            "SELECT m.digest, m.size FROM manifests m JOIN repositories r"
            " ON r.id = m.repository_id WHERE r.name = ? AND m.digest IN ({marks})",
            repository,
            digests,
        )

    def put_manifest(self, m: NewManifest, events: Sequence[Event]) -> None:
        with self._write() as conn:
            now = self._clock()
            repo_id = self._repo_id(conn, m.repository, create=True)
            assert repo_id is not None
            # Refresh what the push relies on first: a collector racing it keeps them, or
            # they are gone and nothing is written (core answers MANIFEST_BLOB_UNKNOWN).
            touch_references(conn, "?", repo_id, m.required_blobs, m.stored_children, now)
            conn.execute(
                "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject,"
                " size, payload, annotations, pushed, touched)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repository_id, digest)"
                " DO UPDATE SET touched = excluded.touched",
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
                ),
            )
            refs = [(repo_id, m.digest, d, "blob") for d in m.blob_refs]
            refs += [(repo_id, m.digest, d, "manifest") for d in m.manifest_refs]
            conn.executemany(
                "INSERT INTO manifest_references (repository_id, manifest_digest, child_digest,"
                " kind) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                refs,
            )
            conn.executemany(
                "INSERT INTO tags (repository_id, name, digest, pushed) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest,"
                " pushed = excluded.pushed",
                [(repo_id, t, m.digest, now) for t in m.tags],
            )
            self._append(conn, events)

    def get_manifest(self, repository: str, digest: str) -> ManifestRecord | None:
        row = (
            self._conn()
            .execute(
                "SELECT m.digest, m.media_type, m.size, m.payload FROM manifests m"
                " JOIN repositories r ON r.id = m.repository_id WHERE r.name = ? AND m.digest = ?",
                (repository, digest),
            )
            .fetchone()
        )
        return None if row is None else ManifestRecord(row[0], row[1], int(row[2]), bytes(row[3]))

    def get_tagged_manifest(self, repository: str, tag: str) -> ManifestRecord | None:
        row = (
            self._conn()
            .execute(
                "SELECT m.digest, m.media_type, m.size, m.payload FROM tags t"
                " JOIN repositories r ON r.id = t.repository_id"
                " JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest"
                " WHERE r.name = ? AND t.name = ?",
                (repository, tag),
            )
            .fetchone()
        )
        return None if row is None else ManifestRecord(row[0], row[1], int(row[2]), bytes(row[3]))

    def delete_manifest(self, repository: str, digest: str, events: Sequence[Event]) -> bool:
        """Delete a manifest and every tag of it in ``repository``."""
        with self._write() as conn:
            repo_id = self._repo_id(conn, repository)
            if repo_id is None:
                return False
            cur = conn.execute(
                "DELETE FROM manifests WHERE repository_id = ? AND digest = ?", (repo_id, digest)
            )
            if cur.rowcount == 0:
                return False
            conn.execute(
                "DELETE FROM manifest_references WHERE repository_id = ? AND manifest_digest = ?",
                (repo_id, digest),
            )
            conn.execute(
                "DELETE FROM tags WHERE repository_id = ? AND digest = ?", (repo_id, digest)
            )
            self._append(conn, events)
            return True

    def delete_tag(
        self, repository: str, tag: str, make_events: Callable[[str], Sequence[Event]]
    ) -> str | None:
        """Delete one tag; returns the digest it pointed to, or None if there was no tag."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT t.digest, r.id FROM tags t JOIN repositories r ON r.id = t.repository_id"
                " WHERE r.name = ? AND t.name = ?",
                (repository, tag),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM tags WHERE repository_id = ? AND name = ?", (row[1], tag))
            self._append(conn, make_events(row[0]))
            return str(row[0])

    def list_tags(self, repository: str, last: str | None, limit: int) -> list[str] | None:
        conn = self._conn()
        repo_id = self._repo_id(conn, repository)
        if repo_id is None:
            return None
        rows = conn.execute(
            "SELECT name FROM tags WHERE repository_id = ? AND name > ? ORDER BY name LIMIT ?",
            (repo_id, last or "", limit),
        ).fetchall()
        return [r[0] for r in rows]

    def referrers(
        self, repository: str, subject: str, artifact_type: str | None, last: str | None, limit: int
    ) -> list[ReferrerRecord]:
        sql = (
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations"
            " FROM manifests m JOIN repositories r ON r.id = m.repository_id"
            " WHERE r.name = ? AND m.subject = ? AND m.digest > ?"
        )
        args: list[Any] = [repository, subject, last or ""]
        if artifact_type is not None:
            sql += " AND m.artifact_type = ?"
            args.append(artifact_type)
        sql += " ORDER BY m.digest LIMIT ?"
        args.append(limit)
        rows = self._conn().execute(sql, args).fetchall()
        return [
            ReferrerRecord(d, mt, int(s), at, json.loads(a) if a else None)
            for d, mt, s, at, a in rows
        ]
