"""Storage usage and quota checks, written once over both stores' SQL (docs/gc.md,
"Storage usage and quotas").

How bytes are counted (dedupe-aware):

- a repository: each blob linked to it once, plus the payload of each of its manifests;
- a namespace (a repository name and every name under it, ``team`` covers ``team`` and
  ``team/...``): each blob once however many of its repositories link it, plus every
  manifest payload of its repositories (manifests are stored per repository);
- the registry: each linked blob once, plus every manifest payload.

A quota check runs inside the write transaction that links a blob or stores a manifest
(``enforce_blob``, ``enforce_manifest``): it adds the bytes the change would add to the
quota's scope (nothing for a blob the scope already links, or a manifest the repository
already has) and raises ``QuotaExceeded`` over the limit, which rolls the change back.
On SQLite writers are serialized (``BEGIN IMMEDIATE``); on PostgreSQL the check first
takes a transaction-scoped advisory lock on the scope, so two pushes into one scope are
checked one after the other and cannot both pass a limit only one fits.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

# The first component of a repository name (its namespace in usage listings); binds nothing.
SQLITE_NAMESPACE = (
    "CASE WHEN instr(name, '/') > 0 THEN substr(name, 1, instr(name, '/') - 1) ELSE name END"
)
POSTGRES_NAMESPACE = "split_part(name, '/', 1)"


@dataclass(frozen=True, slots=True)
class Usage:
    name: str  # the repository or namespace; "" for the whole registry
    repositories: int
    blobs: int
    blob_bytes: int
    manifests: int
    manifest_bytes: int

    @property
    def bytes(self) -> int:
        return self.blob_bytes + self.manifest_bytes

    def figures(self) -> dict[str, int]:
        """The numbers as the API and the CLI show them."""
        return {
            "bytes": self.bytes,
            "blobs": self.blobs,
            "blob_bytes": self.blob_bytes,
            "manifests": self.manifests,
            "manifest_bytes": self.manifest_bytes,
        }


@dataclass(frozen=True, slots=True)
class QuotaScope:
    """What one quota limits: a repository on its own, or a whole namespace."""

    quota: str  # how the quota is named in messages ("quotas[0] (team-a)")
    max_bytes: int
    namespace: str | None = None  # None: the repository being pushed to


class QuotaExceeded(Exception):
    def __init__(self, scope: QuotaScope, usage: int, adding: int, over: str) -> None:
        super().__init__(
            f"quota exceeded: {scope.quota} allows {scope.max_bytes} bytes for {over};"
            f" {usage} are used and this push adds {adding}"
        )
        self.scope = scope
        self.usage = usage
        self.adding = adding
        self.over = over


@dataclass(frozen=True, slots=True)
class UsageSQL:
    mark: str
    namespace_of: str  # SQL of the first name component of column ``name``
    # A statement that serializes quota checks of one scope until commit (binds the
    # scope's key), or None where writers are serialized anyway.
    scope_lock: str | None

    def members(self, scope: str) -> str:
        """The condition on repositories ``r`` of a scope kind; binds ``scope_args``."""
        m = self.mark
        if scope == "repository":
            return f"r.name = {m}"
        if scope == "namespace":
            return f"(r.name = {m} OR (r.name >= {m} AND r.name < {m}))"
        return "1 = 1"

    def totals(self, scope: str) -> str:
        """Repositories, blobs (each once), their bytes, manifests and theirs; one pass
        over the scope's links."""
        return (
            f"WITH s AS (SELECT r.id FROM repositories r WHERE {self.members(scope)}),"
            " d AS (SELECT DISTINCT rb.digest FROM repository_blobs rb"
            " JOIN s ON rb.repository_id = s.id),"
            " bl AS (SELECT COUNT(*) AS n, COALESCE(SUM(b.size), 0) AS bytes FROM d"
            " JOIN blobs b ON b.digest = d.digest),"
            " mf AS (SELECT COUNT(*) AS n, COALESCE(SUM(m.size), 0) AS bytes FROM manifests m"
            " JOIN s ON m.repository_id = s.id)"
            " SELECT (SELECT COUNT(*) FROM s), bl.n, bl.bytes, mf.n, mf.bytes FROM bl, mf"
        )

    def links_in(self, scope: str) -> str:
        return (
            "SELECT 1 FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id"
            f" WHERE rb.digest = {self.mark} AND {self.members(scope)} LIMIT 1"
        )

    def by_repository(self) -> str:
        return (
            "WITH b AS (SELECT rb.repository_id, COUNT(*) AS n, SUM(bl.size) AS bytes"
            " FROM repository_blobs rb JOIN blobs bl ON bl.digest = rb.digest"
            " GROUP BY rb.repository_id),"
            " m AS (SELECT repository_id, COUNT(*) AS n, SUM(size) AS bytes FROM manifests"
            " GROUP BY repository_id)"
            " SELECT r.name, 1, COALESCE(b.n, 0), COALESCE(b.bytes, 0), COALESCE(m.n, 0),"
            " COALESCE(m.bytes, 0) FROM repositories r"
            " LEFT JOIN b ON b.repository_id = r.id LEFT JOIN m ON m.repository_id = r.id"
            f" ORDER BY COALESCE(b.bytes, 0) + COALESCE(m.bytes, 0) DESC, r.name LIMIT {self.mark}"
        )

    def by_namespace(self) -> str:
        return (
            f"WITH rn AS (SELECT id, {self.namespace_of} AS ns FROM repositories),"
            " c AS (SELECT ns, COUNT(*) AS n FROM rn GROUP BY ns),"
            " b AS (SELECT d.ns, COUNT(*) AS n, SUM(bl.size) AS bytes FROM"
            " (SELECT DISTINCT rn.ns, rb.digest FROM repository_blobs rb"
            " JOIN rn ON rn.id = rb.repository_id) AS d"
            " JOIN blobs bl ON bl.digest = d.digest GROUP BY d.ns),"
            " m AS (SELECT rn.ns, COUNT(*) AS n, SUM(mf.size) AS bytes FROM manifests mf"
            " JOIN rn ON rn.id = mf.repository_id GROUP BY rn.ns)"
            " SELECT c.ns, c.n, COALESCE(b.n, 0), COALESCE(b.bytes, 0), COALESCE(m.n, 0),"
            " COALESCE(m.bytes, 0) FROM c LEFT JOIN b ON b.ns = c.ns LEFT JOIN m ON m.ns = c.ns"
            f" ORDER BY COALESCE(b.bytes, 0) + COALESCE(m.bytes, 0) DESC, c.ns LIMIT {self.mark}"
        )


def scope_args(scope: str, name: str) -> tuple[str, ...]:
    if scope == "repository":
        return (name,)
    if scope == "namespace":
        # "/" + 1 is "0": the names under "team/" sort between these two.
        return (name, name + "/", name + "0")
    return ()


def _usage(name: str, row: Any) -> Usage:
    return Usage(name, *(int(v) for v in row))


class UsageReports(Protocol):
    """The store protocol (part of ``MetadataStore``): bytes stored per repository,
    namespace and registry, and the quota pre-check. ``StorageUsage`` implements it."""

    def repository_usage(self, name: str) -> Usage | None: ...

    def namespace_usage(self, namespace: str) -> Usage: ...

    def registry_usage(self) -> Usage: ...

    def usage_by_repository(self, limit: int) -> list[Usage]: ...

    def usage_by_namespace(self, limit: int) -> list[Usage]: ...

    def check_blob_quota(
        self, quota: QuotaScope, repository: str, digest: str, size: int
    ) -> None: ...


class StorageUsage:
    """The usage and quota methods of a store (``meta/store.py`` ``StorageUsage``),
    written once over the store's dialect (``usage_sql``) and transactions."""

    usage_sql: UsageSQL

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _totals(self, conn: Any, scope: str, name: str) -> Usage:
        sql = self.usage_sql.totals(scope)
        row = conn.execute(sql, scope_args(scope, name)).fetchone()
        return _usage(name, row)

    def repository_usage(self, name: str) -> Usage | None:
        """The repository's usage; None if there is no such repository."""
        with self._read() as conn:
            found = self._totals(conn, "repository", name)
        return found if found.repositories else None

    def namespace_usage(self, namespace: str) -> Usage:
        """Every repository named ``namespace`` or under ``namespace/``, each blob once."""
        with self._read() as conn:
            return self._totals(conn, "namespace", namespace)

    def registry_usage(self) -> Usage:
        with self._read() as conn:
            return self._totals(conn, "registry", "")

    def usage_by_repository(self, limit: int) -> list[Usage]:
        """The ``limit`` repositories using the most bytes, most first."""
        with self._read() as conn:
            rows = conn.execute(self.usage_sql.by_repository(), (limit,)).fetchall()
        return [_usage(str(r[0]), r[1:]) for r in rows]

    def usage_by_namespace(self, limit: int) -> list[Usage]:
        """The ``limit`` namespaces (first name components) using the most bytes."""
        with self._read() as conn:
            rows = conn.execute(self.usage_sql.by_namespace(), (limit,)).fetchall()
        return [_usage(str(r[0]), r[1:]) for r in rows]

    # -- quotas

    def _scope_of(self, quota: QuotaScope, repository: str) -> tuple[str, str]:
        if quota.namespace is None:
            return "repository", repository
        return "namespace", quota.namespace

    def _check(self, conn: Any, quota: QuotaScope, repository: str, adding: int) -> None:
        if adding <= 0:
            return
        scope, name = self._scope_of(quota, repository)
        used = self._totals(conn, scope, name).bytes
        if used + adding > quota.max_bytes:
            over = f"repository {repository}" if scope == "repository" else f"namespace {name}"
            raise QuotaExceeded(quota, used, adding, over)

    def _lock_scope(self, conn: Any, quota: QuotaScope, repository: str) -> None:
        lock = self.usage_sql.scope_lock
        if lock is not None:
            scope, name = self._scope_of(quota, repository)
            conn.execute(lock, (f"dockyard-quota:{scope}:{name}",))

    def enforce_blob(
        self, conn: Any, quota: QuotaScope | None, repository: str, digest: str, size: int
    ) -> None:
        """Inside a write transaction that links ``digest`` into ``repository``: raise
        ``QuotaExceeded`` if the link would take the quota's scope over its limit."""
        if quota is None:
            return
        self._lock_scope(conn, quota, repository)
        scope, name = self._scope_of(quota, repository)
        linked = conn.execute(
            self.usage_sql.links_in(scope), (digest, *scope_args(scope, name))
        ).fetchone()
        self._check(conn, quota, repository, 0 if linked else size)

    def enforce_manifest(
        self, conn: Any, quota: QuotaScope | None, repository: str, digest: str, size: int
    ) -> None:
        """Inside a write transaction that stores a manifest: as ``enforce_blob``."""
        if quota is None:
            return
        self._lock_scope(conn, quota, repository)
        m = self.usage_sql.mark
        stored = conn.execute(
            "SELECT 1 FROM manifests mf JOIN repositories r ON r.id = mf.repository_id"
            f" WHERE r.name = {m} AND mf.digest = {m}",
            (repository, digest),
        ).fetchone()
        self._check(conn, quota, repository, 0 if stored else size)

    def check_blob_quota(self, quota: QuotaScope, repository: str, digest: str, size: int) -> None:
        """``enforce_blob`` as a read, before the bytes are committed: a push that is
        over anyway is refused before it stores anything (the link checks again)."""
        with self._read() as conn:
            scope, name = self._scope_of(quota, repository)
            linked = conn.execute(
                self.usage_sql.links_in(scope), (digest, *scope_args(scope, name))
            ).fetchone()
            self._check(conn, quota, repository, 0 if linked else size)
