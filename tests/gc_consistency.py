"""The consistency checker of garbage collection: what must hold of a data directory at any
moment, and what a completed collection must have removed.

``check`` reads the metadata store (the SQLite file, or PostgreSQL by URL) with plain SQL
and the filesystem driver's blob directory, and returns every violation it finds, not only
the first. Always (a ``kill -9`` of the collector at any point must keep these):

- every ``blobs`` row has bytes of its size in storage, whose sha256 is its digest (all
  are hashed, or a seeded ``sample`` of them);
- every ``repository_blobs`` row (a link) has a ``blobs`` row;
- every blob a manifest references is linked in the manifest's repository (the tests
  push no non-distributable layers, which need no link);
- every tag points at a stored manifest.

After a completed run (``completed`` names the time the run started and its grace period):

- no ``blob_deletions`` row remains;
- no blob without a link whose last use (``touched``, else ``created``) is older than the
  run's start minus the grace period remains: neither its row nor its bytes;
- no link that no manifest of its repository references remains if it and its blob were
  last used before then (a link nothing needs);
- with ``orphan_bytes``: no bytes without a ``blobs`` row whose file is that old remain
  (what the storage walk reclaims).

The queries take no parameters, so one text serves both SQL dialects.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard.config import Settings

SQLITE_FILE = "dockyard.sqlite3"


@dataclass(frozen=True)
class Completed:
    """A collection that ran to its end: it started at ``started`` (wall clock) with
    ``grace_period`` seconds of grace; ``orphan_bytes``: it walked the storage."""

    started: float
    grace_period: float
    orphan_bytes: bool = False

    @property
    def cutoff(self) -> float:
        """Anything last used before this had to go."""
        return self.started - self.grace_period


@dataclass
class Report:
    """What ``check`` found: ``violations`` (one line each) and what it looked at."""

    violations: list[str] = field(default_factory=list)
    blobs: int = 0
    hashed: int = 0
    links: int = 0
    manifests: int = 0
    tags: int = 0
    unlinked_blobs: int = 0
    orphan_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        return (
            f"{self.blobs} blobs ({self.hashed} hashed), {self.links} links, "
            f"{self.manifests} manifests, {self.tags} tags, {self.unlinked_blobs} unlinked "
            f"blobs, {self.orphan_files} files without a row: "
            + (
                "consistent"
                if self.ok
                else f"{len(self.violations)} violations:\n  " + "\n  ".join(self.violations[:50])
            )
        )

    def assert_ok(self, when: str = "") -> None:
        assert self.ok, f"inconsistent{' ' + when if when else ''}: {self.summary()}"


@contextmanager
def connect(database: str | Path) -> Iterator[Any]:
    """A DB-API connection: PostgreSQL for a ``postgresql://`` URL, else a SQLite file
    (opened read-only, so the checker never takes a write lock from the server)."""
    text = str(database)
    if text.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(text, autocommit=True) as pg:
            yield pg
        return
    conn = sqlite3.connect(f"file:{text}?mode=ro", uri=True, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def database_of(settings: Settings) -> str:
    """What ``connect`` takes for ``settings``' metadata store."""
    return settings.database.url or str(settings.database_path)


def blob_path(root: Path, digest: str) -> Path:
    """The filesystem driver's path of ``digest`` (storage/filesystem.py)."""
    algorithm, _, encoded = digest.partition(":")
    return root / "blobs" / algorithm / encoded[:2] / encoded


def stored_digests(root: Path) -> dict[str, Path]:
    """Every blob file under ``root``'s blob directory, by digest."""
    found: dict[str, Path] = {}
    base = root / "blobs"
    if not base.is_dir():
        return found
    for algorithm in base.iterdir():
        for prefix in algorithm.iterdir():
            for path in prefix.iterdir():
                found[f"{algorithm.name}:{path.name}"] = path
    return found


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cursor = conn.execute(sql)
    return [tuple(row) for row in cursor.fetchall()]


def _snapshot(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every query of the check in one read transaction, so a server writing meanwhile
    cannot make a consistent store look inconsistent (a tag read before its manifest
    row was deleted, the manifest read after)."""
    queries = {
        "blobs": "SELECT digest, size, COALESCE(touched, created) FROM blobs",
        "links": "SELECT repository_id, digest, linked FROM repository_blobs",
        "manifests": "SELECT repository_id, digest FROM manifests",
        "references": (
            "SELECT r.repository_id, p.name, r.manifest_digest, r.child_digest, r.kind "
            "FROM manifest_references r JOIN repositories p ON p.id = r.repository_id"
        ),
        "tags": (
            "SELECT t.repository_id, p.name, t.name, t.digest "
            "FROM tags t JOIN repositories p ON p.id = t.repository_id"
        ),
        "deletions": "SELECT digest FROM blob_deletions",
    }
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN")  # a read transaction: one snapshot of the WAL
        try:
            return {name: _rows(conn, sql) for name, sql in queries.items()}
        finally:
            conn.execute("ROLLBACK")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return {name: _rows(conn, sql) for name, sql in queries.items()}


def check(
    database: str | Path,
    root: Path,
    *,
    sample: int | None = None,
    seed: int = 0,
    completed: Completed | None = None,
) -> Report:
    """Check the store ``database`` and the blob bytes under ``root`` (see the module's
    docstring). ``sample``: hash only that many blobs, chosen with ``seed`` (sizes are
    checked for all)."""
    report = Report()
    with connect(database) as conn:
        rows = _snapshot(conn)
    # The files are listed after the rows were read: bytes of a row read above are only
    # ever deleted after the row, so a file missing here was missing for that row too
    # unless a collection removed both since; ``check`` is for a quiet store or one
    # whose collector may only delete (callers stop pushes or accept that).
    files = stored_digests(root)
    blobs = {digest: (int(size), float(used)) for digest, size, used in rows["blobs"]}
    links = {(int(repo), str(digest)): float(linked) for repo, digest, linked in rows["links"]}
    manifests = {(int(repo), str(digest)) for repo, digest in rows["manifests"]}
    report.blobs, report.links, report.manifests = len(blobs), len(links), len(manifests)
    report.tags = len(rows["tags"])

    to_hash: Sequence[str] = sorted(blobs)
    if sample is not None and sample < len(to_hash):
        to_hash = random.Random(seed).sample(list(to_hash), sample)
    hash_set = set(to_hash)
    for digest, (size, _) in sorted(blobs.items()):
        path = files.get(digest)
        if path is None:
            report.violations.append(f"blob {digest}: row without bytes")
            continue
        actual = path.stat().st_size
        if actual != size:
            report.violations.append(f"blob {digest}: row says {size} bytes, storage {actual}")
        elif digest in hash_set and digest.startswith("sha256:"):
            report.hashed += 1
            if sha256_file(path) != digest:
                report.violations.append(f"blob {digest}: stored bytes hash differently")

    for repo, digest in sorted(links):
        if digest not in blobs:
            report.violations.append(f"link {digest} in repository id {repo}: no blobs row")

    # Not checked: an index's children (a sparse index may list manifests never stored).
    referenced: set[tuple[int, str]] = set()
    for repo, name, parent, child, kind in rows["references"]:
        if kind == "blob":
            referenced.add((int(repo), child))
        if kind == "blob" and (int(repo), child) not in links:
            report.violations.append(f"{name}@{parent} references blob {child}, not linked")

    for repo, name, tag, digest in rows["tags"]:
        if (int(repo), digest) not in manifests:
            report.violations.append(f"tag {name}:{tag} -> {digest}: no such manifest")

    linked_digests = {digest for _, digest in links}
    unlinked = {d: used for d, (_, used) in blobs.items() if d not in linked_digests}
    report.unlinked_blobs = len(unlinked)
    orphans = {d: p for d, p in files.items() if d not in blobs}
    report.orphan_files = len(orphans)
    if completed is not None:
        for (digest,) in rows["deletions"]:
            report.violations.append(f"blob_deletions row {digest} left by a completed run")
        for digest, used in sorted(unlinked.items()):
            if used < completed.cutoff:
                age = completed.started - used
                report.violations.append(
                    f"blob {digest}: unlinked, last used {age:.1f} s before the run, kept"
                )
        for (repo, digest), linked in sorted(links.items()):
            last = max(linked, blobs.get(digest, (0, 0.0))[1])
            if (repo, digest) not in referenced and last < completed.cutoff:
                report.violations.append(
                    f"link {digest} in repository id {repo}: nothing needs it, last used "
                    f"{completed.started - last:.1f} s before the run, kept"
                )
        if completed.orphan_bytes:
            for digest, path in sorted(orphans.items()):
                if path.exists() and path.stat().st_mtime < completed.cutoff:
                    report.violations.append(f"bytes {digest}: no row, older than grace, kept")
    return report


def gc_delete_events(database: str | Path) -> Counter[str]:
    """The ``delete`` events garbage collection logged, counted by ``target.kind``."""
    with connect(database) as conn:
        rows = _rows(conn, "SELECT body FROM events WHERE action = 'delete'")
    counts: Counter[str] = Counter()
    for (body,) in rows:
        doc = json.loads(body)
        if doc.get("actor", {}).get("name") == "gc" and doc["target"].get("by") == "gc":
            counts[doc["target"]["kind"]] += 1
    return counts


def check_settings(settings: Settings, **kwargs: Any) -> Report:
    """``check`` of the data ``settings`` name (filesystem storage)."""
    return check(database_of(settings), Path(settings.storage.root), **kwargs)
