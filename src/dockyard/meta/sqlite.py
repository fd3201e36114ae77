"""The metadata store on SQLite: repositories, blob links, manifests, tags, uploads, events.

Methods here are synchronous and run in worker threads (``Database.run``): the sqlite3
module blocks, and trio must not. Each thread keeps its own connection. Every change a
client makes is one ``BEGIN IMMEDIATE`` transaction that also appends its event rows, so
the event log never misses or invents a change (DESIGN.md 3.6). Several processes may
share the file: WAL mode lets readers run beside one writer, and ``busy_timeout`` makes a
writer wait for another process's write.

Schema (``MIGRATIONS``, appended to, never edited; ``PRAGMA user_version`` records the
applied count)::

    repositories(id, name UNIQUE, created)
    blobs(digest PK, size, created)                       bytes are in the storage driver
    repository_blobs(repository_id, digest, linked)       which blobs a repository may serve
    manifests(repository_id, digest, media_type, artifact_type, subject, size, payload,
              annotations, pushed)
    manifest_references(repository_id, manifest_digest, child_digest, kind)
    tags(repository_id, name, digest, pushed, pulled)
    uploads(id, repository, algorithm, received, hash_state, driver_state, lease,
            lease_expires, started, touched)
    events(id AUTOINCREMENT, ts, action, repository, digest, media_type, size, tag, body)
    webhook_cursors(name PK, cursor, lease, lease_expires, created, delivered)
                                                          last event id handled per endpoint;
                                                          the lease says who delivers now
    webhook_failures(name, event_id, attempts, last_error, failed, redeliver)
                                                          events given up on; redeliver=1
                                                          asks the deliverer to try again
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dockyard.meta.records import (
    ActivityCount,
    Conflict,
    Event,
    ManifestRecord,
    NewManifest,
    ReferrerRecord,
    RepositorySummary,
    StatsRecord,
    StoreBusy,
    StoredEvent,
    UploadRecord,
    WebhookCursor,
    WebhookFailure,
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE repositories (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    );
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE repository_blobs (
        repository_id INTEGER NOT NULL REFERENCES repositories(id),
        digest TEXT NOT NULL REFERENCES blobs(digest),
        linked REAL NOT NULL,
        PRIMARY KEY (repository_id, digest)
    ) WITHOUT ROWID;
    CREATE INDEX repository_blobs_by_digest ON repository_blobs(digest);
    CREATE TABLE manifests (
        repository_id INTEGER NOT NULL REFERENCES repositories(id),
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        artifact_type TEXT,
        subject TEXT,
        size INTEGER NOT NULL,
        payload BLOB NOT NULL,
        annotations TEXT,
        pushed REAL NOT NULL,
        PRIMARY KEY (repository_id, digest)
    );
    CREATE INDEX manifests_by_subject ON manifests(repository_id, subject)
        WHERE subject IS NOT NULL;
    CREATE TABLE manifest_references (
        repository_id INTEGER NOT NULL,
        manifest_digest TEXT NOT NULL,
        child_digest TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
        PRIMARY KEY (repository_id, manifest_digest, child_digest)
    ) WITHOUT ROWID;
    CREATE INDEX manifest_references_by_child ON manifest_references(child_digest);
    CREATE TABLE tags (
        repository_id INTEGER NOT NULL REFERENCES repositories(id),
        name TEXT NOT NULL,
        digest TEXT NOT NULL,
        pushed REAL NOT NULL,
        pulled REAL,
        PRIMARY KEY (repository_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX tags_by_digest ON tags(repository_id, digest);
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        repository TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        received INTEGER NOT NULL,
        hash_state BLOB,
        driver_state TEXT NOT NULL,
        lease TEXT,
        lease_expires REAL,
        started REAL NOT NULL,
        touched REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        action TEXT NOT NULL,
        repository TEXT,
        digest TEXT,
        media_type TEXT,
        size INTEGER,
        tag TEXT,
        body TEXT NOT NULL
    );
    """,
    # 2: webhook delivery state (events/webhooks.py).
    """
    CREATE TABLE webhook_cursors (
        name TEXT PRIMARY KEY,
        cursor INTEGER NOT NULL,
        lease TEXT,
        lease_expires REAL,
        created REAL NOT NULL,
        delivered REAL
    );
    CREATE TABLE webhook_failures (
        name TEXT NOT NULL,
        event_id INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        failed REAL NOT NULL,
        redeliver INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (name, event_id)
    ) WITHOUT ROWID;
    CREATE INDEX webhook_failures_to_redeliver ON webhook_failures(name, event_id)
        WHERE redeliver = 1;
    """,
)


# Seconds an inline read (on the event loop) waits for a lock before it is retried in a
# worker thread; in WAL mode readers almost never wait at all.
INLINE_BUSY_TIMEOUT = 0.05


_UPLOAD_SELECT = (
    "SELECT id, repository, algorithm, received, hash_state, driver_state, lease,"
    " lease_expires, started, touched FROM uploads"
)


def _upload_record(row: tuple[Any, ...]) -> UploadRecord:
    return UploadRecord(
        row[0],
        row[1],
        row[2],
        int(row[3]),
        None if row[4] is None else bytes(row[4]),
        json.loads(row[5]),
        row[6],
        row[7],
        row[8],
        row[9],
    )


class SQLiteMeta:
    def __init__(
        self, path: Path, busy_timeout: float = 10.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._clock = clock
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # Called (from the worker thread) after a transaction that appended events commits:
        # the event hub uses it to look at the log at once instead of at its next poll.
        self.on_events_committed: Callable[[], None] | None = None

    # -- connections and transactions

    def _conn(self) -> sqlite3.Connection:
        inline = getattr(self._local, "inline", False)
        key = "inline_conn" if inline else "conn"
        conn: sqlite3.Connection | None = getattr(self._local, key, None)
        if conn is None:
            # Inline reads run on the event loop: never wait long for a lock there.
            timeout = INLINE_BUSY_TIMEOUT if inline else self._busy_timeout
            conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            setattr(self._local, key, conn)
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def inline_reads(self) -> Iterator[None]:
        """Calls in this block use this thread's inline connection (short busy timeout)."""
        self._local.inline = True
        try:
            yield
        except sqlite3.OperationalError as e:  # locked or busy: the caller retries
            raise StoreBusy(str(e)) from e
        finally:
            self._local.inline = False

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        self._local.appended = False
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
            if self._local.appended and self.on_events_committed is not None:
                self.on_events_committed()

    def migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {i}")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    # -- helpers

    def _repo_id(self, conn: sqlite3.Connection, name: str, create: bool = False) -> int | None:
        row = conn.execute("SELECT id FROM repositories WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        cur = conn.execute(
            "INSERT INTO repositories (name, created) VALUES (?, ?)", (name, self._clock())
        )
        return int(cur.lastrowid or 0)

    def _append(self, conn: sqlite3.Connection, events: Sequence[Event]) -> None:
        if not events:
            return
        self._local.appended = True
        now = self._clock()
        conn.executemany(
            "INSERT INTO events (ts, action, repository, digest, media_type, size, tag, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.ts or now,
                    e.action,
                    e.repository,
                    e.digest,
                    e.media_type,
                    e.size,
                    e.tag,
                    json.dumps(e.body, separators=(",", ":")),
                )
                for e in events
            ],
        )

    # -- repositories

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

    def repositories_linking(self, digest: str, limit: int = 100) -> list[str]:
        rows = (
            self._conn()
            .execute(
                "SELECT r.name FROM repository_blobs rb"
                " JOIN repositories r ON r.id = rb.repository_id"
                " WHERE rb.digest = ? ORDER BY r.name LIMIT ?",
                (digest, limit),
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
                "INSERT INTO blobs (digest, size, created) VALUES (?, ?, ?)"
                " ON CONFLICT (digest) DO NOTHING",
                (digest, size, now),
            )
            repo_id = self._repo_id(conn, repository, create=True)
            conn.execute(
                "INSERT INTO repository_blobs (repository_id, digest, linked) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
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

    # -- manifests and tags

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
            conn.execute(
                "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject,"
                " size, payload, annotations, pushed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (repository_id, digest) DO NOTHING",
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

    # -- uploads

    def create_upload(
        self, upload_id: str, repository: str, algorithm: str, driver_state: dict[str, Any]
    ) -> None:
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO uploads (id, repository, algorithm, received, hash_state,"
                " driver_state, started, touched) VALUES (?, ?, ?, 0, NULL, ?, ?, ?)",
                (upload_id, repository, algorithm, json.dumps(driver_state), now, now),
            )

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        row = self._conn().execute(f"{_UPLOAD_SELECT} WHERE id = ?", (upload_id,)).fetchone()
        return None if row is None else _upload_record(row)

    def claim_upload(self, upload_id: str, offset: int, lease: str, seconds: float) -> bool:
        """Take the upload for one request if it is at ``offset`` and nobody holds it."""
        now = self._clock()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE uploads SET lease = ?, lease_expires = ?, touched = ?"
                " WHERE id = ? AND received = ? AND (lease IS NULL OR lease_expires < ?)",
                (lease, now + seconds, now, upload_id, offset, now),
            )
            return cur.rowcount == 1

    def renew_lease(self, upload_id: str, lease: str, seconds: float) -> bool:
        now = self._clock()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE uploads SET lease_expires = ?, touched = ? WHERE id = ? AND lease = ?",
                (now + seconds, now, upload_id, lease),
            )
            return cur.rowcount == 1

    def save_upload(
        self,
        upload_id: str,
        lease: str,
        offset: int,
        hash_state: bytes | None,
        driver_state: dict[str, Any],
    ) -> None:
        """Record progress and release the lease."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE uploads SET received = ?, hash_state = ?, driver_state = ?, lease = NULL,"
                " lease_expires = NULL, touched = ? WHERE id = ? AND lease = ?",
                (offset, hash_state, json.dumps(driver_state), self._clock(), upload_id, lease),
            )
            if cur.rowcount != 1:
                raise Conflict(upload_id)

    def release_upload(self, upload_id: str, lease: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE uploads SET lease = NULL, lease_expires = NULL WHERE id = ? AND lease = ?",
                (upload_id, lease),
            )

    def release_leases_of(self, prefix: str) -> int:
        """Free leases a previous run of this instance held (it cannot still be writing)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE uploads SET lease = NULL, lease_expires = NULL WHERE lease LIKE ?",
                (prefix.replace("%", "") + "%",),
            )
            return cur.rowcount

    def delete_upload(self, upload_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)).rowcount == 1

    def stale_uploads(self, touched_before: float) -> list[UploadRecord]:
        rows = (
            self._conn()
            .execute(
                f"{_UPLOAD_SELECT} WHERE touched < ? AND (lease IS NULL OR lease_expires < ?)",
                (touched_before, self._clock()),
            )
            .fetchall()
        )
        return [_upload_record(row) for row in rows]

    def upload_ids(self) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT id FROM uploads").fetchall()}

    # -- dashboard statistics

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
        self, since: float, bucket: float, repositories: int, slack: float = 120.0
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
        )

    # -- events

    def append_events(self, events: Sequence[Event]) -> None:
        if events:
            with self._write() as conn:
                self._append(conn, events)

    def last_event_id(self) -> int:
        row = self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return int(row[0])

    def events_after(self, after: int, limit: int) -> list[StoredEvent]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, ts, action, repository, digest, media_type, size, tag, body FROM events"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            )
            .fetchall()
        )
        return [
            StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]))
            for r in rows
        ]

    def event(self, event_id: int) -> StoredEvent | None:
        found = self.events_after(event_id - 1, 1)
        return found[0] if found and found[0].id == event_id else None

    # -- webhook delivery state: a cursor and a lease per endpoint, failed events.
    # Every write by the deliverer is conditional on holding the endpoint's lease, so a
    # process that lost it (it stalled past lease_expires and another took over) changes
    # nothing.

    def webhook_init(self, names: Sequence[str]) -> None:
        """Give endpoints seen for the first time a cursor at the current end of the log."""
        with self._write() as conn:
            end = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            conn.executemany(
                "INSERT INTO webhook_cursors (name, cursor, created) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                [(n, end, self._clock()) for n in names],
            )

    def webhook_acquire(self, name: str, lease: str, seconds: float) -> int | None:
        """Take (or keep) the endpoint's lease if it is free or expired; its cursor, or None."""
        now = self._clock()
        with self._write() as conn:
            row = conn.execute(
                "UPDATE webhook_cursors SET lease = ?, lease_expires = ? WHERE name = ?"
                " AND (lease IS NULL OR lease = ? OR lease_expires < ?) RETURNING cursor",
                (lease, now + seconds, name, lease, now),
            ).fetchone()
            return None if row is None else int(row[0])

    def webhook_lease_free(self, name: str, lease: str) -> bool:
        """Whether ``webhook_acquire`` could succeed now (a read: cheap to ask often)."""
        row = (
            self._conn()
            .execute(
                "SELECT 1 FROM webhook_cursors WHERE name = ?"
                " AND (lease IS NULL OR lease = ? OR lease_expires < ?)",
                (name, lease, self._clock()),
            )
            .fetchone()
        )
        return row is not None

    def webhook_renew(self, name: str, lease: str, seconds: float) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE webhook_cursors SET lease_expires = ? WHERE name = ? AND lease = ?",
                (self._clock() + seconds, name, lease),
            )
            return cur.rowcount == 1

    def webhook_advance(self, name: str, lease: str, cursor: int, delivered: bool) -> bool:
        """Move the cursor to ``cursor`` (every event up to it is handled)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE webhook_cursors SET cursor = MAX(cursor, ?),"
                " delivered = CASE WHEN ? THEN ? ELSE delivered END"
                " WHERE name = ? AND lease = ?",
                (cursor, delivered, self._clock(), name, lease),
            )
            return cur.rowcount == 1

    def webhook_release(self, name: str, lease: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE webhook_cursors SET lease = NULL, lease_expires = NULL"
                " WHERE name = ? AND lease = ?",
                (name, lease),
            )

    def webhook_release_leases_of(self, prefix: str) -> int:
        """Free webhook leases a previous run of this instance held."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE webhook_cursors SET lease = NULL, lease_expires = NULL"
                " WHERE substr(lease, 1, ?) = ?",
                (len(prefix), prefix),
            )
            return cur.rowcount

    def webhook_failed(
        self,
        name: str,
        lease: str,
        event_id: int,
        attempts: int,
        error: str,
        advance: bool,
    ) -> bool:
        """Record that ``event_id`` failed ``attempts`` more times; with ``advance`` move
        the cursor past it in the same transaction."""
        now = self._clock()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE webhook_cursors SET cursor = CASE WHEN ? THEN MAX(cursor, ?) ELSE cursor"
                " END WHERE name = ? AND lease = ?",
                (advance, event_id, name, lease),
            )
            if cur.rowcount != 1:
                return False
            conn.execute(
                "INSERT INTO webhook_failures (name, event_id, attempts, last_error, failed,"
                " redeliver) VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (name, event_id) DO UPDATE"
                " SET attempts = attempts + excluded.attempts, last_error = excluded.last_error,"
                " failed = excluded.failed, redeliver = 0",
                (name, event_id, attempts, error[:2000], now),
            )
            return True

    def webhook_redelivered(self, name: str, lease: str, event_id: int) -> bool:
        """A failed event was delivered after all: forget the failure."""
        with self._write() as conn:
            held = conn.execute(
                "SELECT 1 FROM webhook_cursors WHERE name = ? AND lease = ?", (name, lease)
            ).fetchone()
            if held is None:
                return False
            conn.execute(
                "DELETE FROM webhook_failures WHERE name = ? AND event_id = ?", (name, event_id)
            )
            return True

    def webhook_to_redeliver(self, name: str, limit: int) -> list[int]:
        rows = (
            self._conn()
            .execute(
                "SELECT event_id FROM webhook_failures WHERE name = ? AND redeliver = 1"
                " ORDER BY event_id LIMIT ?",
                (name, limit),
            )
            .fetchall()
        )
        return [int(r[0]) for r in rows]

    def webhook_mark_redeliver(self, name: str, event_id: int | None) -> int:
        """Ask the deliverer to send failed events again (one, or all of the endpoint's)."""
        with self._write() as conn:
            if event_id is None:
                cur = conn.execute(
                    "UPDATE webhook_failures SET redeliver = 1 WHERE name = ?", (name,)
                )
            else:
                cur = conn.execute(
                    "UPDATE webhook_failures SET redeliver = 1 WHERE name = ? AND event_id = ?",
                    (name, event_id),
                )
            return cur.rowcount

    def webhook_cursors(self) -> list[WebhookCursor]:
        rows = (
            self._conn()
            .execute(
                "SELECT c.name, c.cursor, c.lease, c.lease_expires, c.created, c.delivered,"
                " (SELECT COUNT(*) FROM webhook_failures f WHERE f.name = c.name)"
                " FROM webhook_cursors c ORDER BY c.name"
            )
            .fetchall()
        )
        return [WebhookCursor(*r) for r in rows]

    def webhook_failures(self, name: str | None = None) -> list[WebhookFailure]:
        sql = "SELECT name, event_id, attempts, last_error, failed, redeliver FROM webhook_failures"
        args: tuple[Any, ...] = ()
        if name is not None:
            sql += " WHERE name = ?"
            args = (name,)
        rows = self._conn().execute(sql + " ORDER BY name, event_id", args).fetchall()
        return [WebhookFailure(r[0], int(r[1]), int(r[2]), r[3], r[4], bool(r[5])) for r in rows]
