"""The SQLite store's core: per-thread connections, write transactions, the event append.

Methods of the store are synchronous and run in worker threads (``Database.run``): the
sqlite3 module blocks, and the event loop must not. Each thread keeps its own connection; an inline
read (``inline_reads``, on the event loop thread) uses a second one with a short busy
timeout and turns a lock into ``StoreBusy``.

Every change a client makes is one ``BEGIN IMMEDIATE`` transaction (``_write``) that also
appends its event rows (``_append``): the event log, written in the same transaction as
the change it describes, never misses or invents one. Several processes may share the
file: WAL mode lets readers run beside one writer, and ``busy_timeout`` makes a writer
wait for another process's write.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dockyard.meta import migrations
from dockyard.meta.collect import CollectStore
from dockyard.meta.leases import SQLITE, JobLeases
from dockyard.meta.prune import EventPruning, PruneSQL
from dockyard.meta.records import Event, StoreBusy
from dockyard.meta.repository_admin import AdminSQL, RepositoryAdmin
from dockyard.meta.usage import SQLITE_NAMESPACE, StorageUsage, UsageSQL

# Seconds an inline read (on the event loop) waits for a lock before it is retried in a
# worker thread; in WAL mode readers almost never wait at all.
INLINE_BUSY_TIMEOUT = 0.05


class SQLiteCore(JobLeases, EventPruning, StorageUsage, RepositoryAdmin, CollectStore):
    lease_sql = SQLITE
    prune_sql = PruneSQL("?")
    usage_sql = UsageSQL("?", SQLITE_NAMESPACE, scope_lock=None)  # writers are serialized
    admin_sql = AdminSQL("?")
    share_lock = ""  # writers are serialized

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

    def change_marker(self) -> int:
        """``PRAGMA data_version`` of this thread's inline connection: it changes when any
        other connection, of this process or another, commits (4.6 CPU-us, against 9.1
        for the tag lookup alone it saves, ``python -m perf.micro change-marker``)."""
        self._local.inline = True
        try:
            return int(self._conn().execute("PRAGMA data_version").fetchone()[0])
        finally:
            self._local.inline = False

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection for reads (the domain code shared with PostgreSQL)."""
        yield self._conn()

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

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: its SELECTs see one snapshot (WAL), and it blocks no writer."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as conn:
            migrations.apply(conn)

    def shared_secret(self, name: str, candidate: bytes) -> bytes:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO secrets (name, value, created) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (name, candidate, self._clock()),
            )
            row = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        return bytes(row[0])

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

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
        """Append ``events`` inside the caller's ``_write`` transaction."""
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
