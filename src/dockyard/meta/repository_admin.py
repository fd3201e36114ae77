"""The repository management queries (``/v2/_dockyard/repositories/``), written once over
both stores' SQL: tags with their manifests' details, and deleting a whole repository in
batches (docs/gc.md, "Managing repositories").

A tag's ``size`` is what pulling it fetches: the manifest's payload, the blobs it
references, and for an index its child manifests stored in the repository and their
blobs (one level down, as indexes list images); each blob once.

A repository is deleted by ``delete_repository_step`` called until it says it is done:
each call is one write transaction that deletes up to ``limit`` manifests (with their
tags and references, one ``delete`` event each) or, when none are left, up to ``limit``
blob links, and finally the repository row with one ``delete`` event whose target kind
is ``repository``. Blobs themselves stay (other repositories may link them); garbage
collection removes those nothing links any more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from dockyard.meta.records import Event


@dataclass(frozen=True, slots=True)
class TagDetail:
    name: str
    digest: str
    media_type: str
    size: int  # manifest payload + blobs (and child manifests): what a pull fetches
    pushed: float
    pulled: float | None  # None: never pulled (or not recorded yet)


@dataclass(frozen=True, slots=True)
class DeletionStep:
    manifests: int  # deleted by this step
    links: int
    done: bool  # the repository row is gone (or there was none)


ManifestEvent = Callable[[str, str, int], Event]  # (digest, media type, size) -> event
RepositoryEvent = Callable[[], Event]


@dataclass(frozen=True, slots=True)
class AdminSQL:
    mark: str

    def tag_details(self) -> str:
        m = self.mark
        # The blobs a pull of the tag fetches: the manifest's own, and its children's.
        blobs = (
            "SELECT mr.child_digest FROM manifest_references mr"
            " WHERE mr.repository_id = t.repository_id AND mr.manifest_digest = t.digest"
            " AND mr.kind = 'blob'"
            " UNION SELECT cr.child_digest FROM manifest_references mr"
            " JOIN manifest_references cr ON cr.repository_id = mr.repository_id"
            " AND cr.manifest_digest = mr.child_digest AND cr.kind = 'blob'"
            " WHERE mr.repository_id = t.repository_id AND mr.manifest_digest = t.digest"
            " AND mr.kind = 'manifest'"
        )
        children = (
            "SELECT COALESCE(SUM(c.size), 0) FROM manifests c JOIN manifest_references mr"
            " ON mr.repository_id = c.repository_id AND mr.child_digest = c.digest"
            " WHERE mr.repository_id = t.repository_id AND mr.manifest_digest = t.digest"
            " AND mr.kind = 'manifest'"
        )
        return (
            "SELECT t.name, t.digest, mf.media_type, mf.size"
            f" + (SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN ({blobs}))"
            f" + ({children}), t.pushed, t.pulled"
            " FROM tags t JOIN manifests mf"
            " ON mf.repository_id = t.repository_id AND mf.digest = t.digest"
            f" WHERE t.repository_id = {m} AND t.name > {m} ORDER BY t.name LIMIT {m}"
        )

    def marks(self, n: int) -> str:
        return ", ".join([self.mark] * n)


class RepositoryManagement(Protocol):
    """The store protocol (part of ``MetadataStore``): tags with details, deleting a
    whole repository. ``RepositoryAdmin`` implements it."""

    def tag_details(
        self, repository: str, last: str | None, limit: int
    ) -> list[TagDetail] | None: ...

    def delete_repository_step(
        self,
        repository: str,
        limit: int,
        manifest_event: ManifestEvent,
        repository_event: RepositoryEvent,
    ) -> DeletionStep: ...


class RepositoryAdmin:
    """The management methods of a store (``meta/store.py`` ``RepositoryAdmin``)."""

    admin_sql: AdminSQL

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _repository_id(self, conn: Any, name: str) -> int | None:
        row = conn.execute(
            f"SELECT id FROM repositories WHERE name = {self.admin_sql.mark}", (name,)
        ).fetchone()
        return None if row is None else int(row[0])

    def tag_details(self, repository: str, last: str | None, limit: int) -> list[TagDetail] | None:
        """Tags after ``last`` in byte order with their manifests' details; None if the
        repository does not exist."""
        with self._read() as conn:
            repo_id = self._repository_id(conn, repository)
            if repo_id is None:
                return None
            rows = conn.execute(
                self.admin_sql.tag_details(), (repo_id, last or "", limit)
            ).fetchall()
        return [
            TagDetail(str(n), str(d), str(mt), int(s), float(p), None if u is None else float(u))
            for n, d, mt, s, p, u in rows
        ]

    def delete_repository_step(
        self,
        repository: str,
        limit: int,
        manifest_event: ManifestEvent,
        repository_event: RepositoryEvent,
    ) -> DeletionStep:
        """One batch of deleting ``repository`` (see the module docstring)."""
        m = self.admin_sql.mark
        with self._write() as conn:
            repo_id = self._repository_id(conn, repository)
            if repo_id is None:
                return DeletionStep(0, 0, True)
            rows = conn.execute(
                "SELECT digest, media_type, size FROM manifests"
                f" WHERE repository_id = {m} ORDER BY digest LIMIT {m}",
                (repo_id, limit),
            ).fetchall()
            if rows:
                digests = [str(r[0]) for r in rows]
                where = f"repository_id = {m} AND {{column}} IN ({self.admin_sql.marks(len(rows))})"
                args = (repo_id, *digests)
                conn.execute("DELETE FROM tags WHERE " + where.format(column="digest"), args)
                conn.execute(
                    "DELETE FROM manifest_references WHERE "
                    + where.format(column="manifest_digest"),
                    args,
                )
                conn.execute("DELETE FROM manifests WHERE " + where.format(column="digest"), args)
                self._append(conn, [manifest_event(str(d), str(t), int(s)) for d, t, s in rows])
                return DeletionStep(len(rows), 0, False)
            links = conn.execute(
                f"DELETE FROM repository_blobs WHERE repository_id = {m} AND digest IN"
                f" (SELECT digest FROM repository_blobs WHERE repository_id = {m}"
                f" ORDER BY digest LIMIT {m})",
                (repo_id, repo_id, limit),
            ).rowcount
            if links:
                return DeletionStep(0, int(links), False)
            # Tags always name a stored manifest; deleted here too in case one does not.
            conn.execute(f"DELETE FROM tags WHERE repository_id = {m}", (repo_id,))
            conn.execute(f"DELETE FROM repositories WHERE id = {m}", (repo_id,))
            self._append(conn, [repository_event()])
            return DeletionStep(0, 0, True)

    def _append(self, conn: Any, events: Sequence[Event]) -> None:
        raise NotImplementedError
