"""The PostgreSQL store's core: the connection pool, write transactions, the event append.

Methods are synchronous (psycopg's sync API; its async API is asyncio-only) and run in
worker threads (``Database.run``), each taking a connection from one pool per process
(``psycopg_pool``, sized by ``[database] threads``: no more connections than threads
that can use them). Connections are in autocommit mode: a point read is one statement,
and a change is one explicit transaction (``_write``).

Isolation: READ COMMITTED, with every check-then-act made atomic by the statement that
acts (conditional ``UPDATE ... WHERE``, ``INSERT ... ON CONFLICT``; PostgreSQL re-checks
an ``UPDATE``'s condition on the newest row version after waiting for its lock) or by a
row lock (``SELECT ... FOR UPDATE``): the guarantees SQLite's ``BEGIN IMMEDIATE`` gives.
Writers wait at most ``busy_timeout`` for a lock (``lock_timeout``).

Event ids are handed out in commit order. A sequence would not do: a transaction can
take id 7, another id 8 and commit first, and a reader tailing ``id > 6`` sees 8, moves
its cursor past 7 and never sees it. Instead ``_append`` takes the ids from the single
``event_counter`` row (``UPDATE ... RETURNING``), whose row lock is held until commit: the
next appender waits until this one has committed (and is visible) before it gets ids.
``_append`` is the last statement of each change, so the lock is held for one commit.
The same transaction sends ``NOTIFY`` on ``EVENTS_CHANNEL`` (delivered at commit), which
wakes the event hub of every worker and instance (``listen.py``).

Inline reads (``inline_reads``, on the event loop thread) use one connection of their
own per thread with a short ``statement_timeout``, opened by a helper thread (the loop
waits for it at most that long); a timeout or a broken connection is ``StoreBusy`` and
the call is retried in a worker thread. The hottest of them (manifest and blob lookups
for HEAD/GET) go through ``pointread.py``: a statement prepared once per connection,
driven through libpq without psycopg's per-call layers. A pooled call that loses its
connection, or gets none within ``busy_timeout``, raises ``StoreUnavailable``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dockyard.config.model import redact_url
from dockyard.meta.collect import CollectStore
from dockyard.meta.leases import JobLeases
from dockyard.meta.postgres import migrations
from dockyard.meta.postgres.leases import POSTGRES
from dockyard.meta.postgres.pointread import Row, Statement, read_row
from dockyard.meta.prune import EventPruning, PruneSQL
from dockyard.meta.records import Event, StoreBusy, StoreUnavailable
from dockyard.meta.repository_admin import AdminSQL, RepositoryAdmin
from dockyard.meta.usage import POSTGRES_NAMESPACE, StorageUsage, UsageSQL

Conn = psycopg.Connection[tuple[Any, ...]]

EVENTS_CHANNEL = "dockyard_events"
# An inline read (on the event loop) gives up after this long and is retried in a worker
# thread; after a failed one, inline reads go straight to worker threads for a while.
INLINE_TIMEOUT = 0.2
INLINE_BACKOFF = 1.0
# The longest an inline read waits for an answer on the client side (the server's
# statement_timeout, INLINE_TIMEOUT, fires first while the server is alive).
INLINE_DEADLINE = 0.5
CONNECT_TIMEOUT = 5  # seconds (libpq's minimum is 2)
# Locks a name (bound) until the transaction ends: quota scopes and digests (gc's claim
# against its mark) are ordered by it, where a new row would lock nothing.
NAME_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"


class PostgresCore(JobLeases, EventPruning, StorageUsage, RepositoryAdmin, CollectStore):
    lease_sql = POSTGRES
    prune_sql = PruneSQL("%s")
    # Quota checks of one scope wait for each other until commit (meta/usage.py).
    usage_sql = UsageSQL("%s", POSTGRES_NAMESPACE, NAME_LOCK)
    admin_sql = AdminSQL("%s")
    share_lock = " FOR SHARE"
    digest_lock = NAME_LOCK

    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.time,
        pool_size: int = 4,
        busy_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._inline: list[Conn] = []
        self._inline_failed_at = -INLINE_BACKOFF
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            min_size=1,
            max_size=max(1, pool_size),
            timeout=busy_timeout,
            configure=self._configure,
            name="dockyard-meta",
            open=False,  # on first use (_pooled): a failed migrate() leaves no retrying pool
        )
        self._pool_open = False
        # Called (from the worker thread) after a transaction that appended events commits.
        self.on_events_committed: Callable[[], None] | None = None
        self._listener: Conn | None = None
        self._listen_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r})"

    def _configure(self, conn: Conn) -> None:
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false)", (f"{int(self._busy_timeout * 1000)}",)
        )

    # -- connections

    def _inline_conn(self) -> Conn:
        conn: Conn | None = getattr(self._local, "inline_conn", None)
        if conn is not None and not conn.closed:
            return conn
        if time.monotonic() - self._inline_failed_at < INLINE_BACKOFF:
            raise StoreBusy("the inline connection failed recently")
        # Connecting can take seconds (a host that drops packets): a helper thread does
        # it, and the event loop waits at most INLINE_TIMEOUT; meanwhile reads go to
        # worker threads and a later read picks the connection up.
        box: list[Conn | None] | None = getattr(self._local, "connecting", None)
        if box is None:
            box = []
            self._local.connecting = box
            helper = threading.Thread(target=self._connect_inline, args=(box,), daemon=True)
            helper.start()
            helper.join(INLINE_TIMEOUT)
        if not box:
            raise StoreBusy("connecting")
        self._local.connecting = None
        conn = box[0]
        if conn is None:
            self._inline_failed_at = time.monotonic()
            raise StoreBusy("the inline connection failed")
        self._local.inline_conn = conn
        self._local.prepared = set()  # statement names prepared on it (pointread.py)
        return conn

    def _connect_inline(self, box: list[Conn | None]) -> None:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            ms = f"{int(INLINE_TIMEOUT * 1000)}"
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (ms,))
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (ms,))
        except psycopg.OperationalError:
            box.append(None)
            return
        with self._lock:
            if self._closed:  # the store closed while this connected
                conn.close()
                box.append(None)
                return
            self._inline.append(conn)
        box.append(conn)

    def _inline_active(self) -> bool:
        return bool(getattr(self._local, "inline", False))

    def _inline_row(self, statement: Statement, params: Sequence[str]) -> Row | None:
        """Inside ``inline_reads``: one row of a prepared statement, on this thread's
        inline connection, the wait bounded by ``INLINE_DEADLINE``."""
        conn = self._inline_conn()
        return read_row(conn, self._local.prepared, statement, params, INLINE_DEADLINE)

    @contextmanager
    def _read(self) -> Iterator[Conn]:
        """A connection for one read: the thread's inline one inside ``inline_reads``,
        else one from the pool."""
        if getattr(self._local, "inline", False):
            yield self._inline_conn()
            return
        with self._pooled() as conn:
            yield conn

    @contextmanager
    def _pooled(self) -> Iterator[Conn]:
        if not self._pool_open:
            with self._lock:
                if not self._pool_open and not self._closed:
                    self._pool.open()
                    self._pool_open = True
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as e:
            # The pool has seen the error (and dropped a broken connection); callers see
            # one error type for "the database did not answer", an outage, not a bug.
            raise StoreUnavailable(f"database unavailable: {type(e).__name__}: {e}") from e

    def change_marker(self) -> None:
        """None: other instances commit where this one cannot see it without a query (so
        no answer is kept in memory on PostgreSQL)."""
        return None

    @contextmanager
    def inline_reads(self) -> Iterator[None]:
        """Calls in this block use this thread's inline connection (short timeouts)."""
        self._local.inline = True
        try:
            yield
        except psycopg.OperationalError as e:  # timed out or disconnected: the caller retries
            self._inline_failed_at = time.monotonic()
            conn: Conn | None = getattr(self._local, "inline_conn", None)
            if conn is not None and conn.broken:
                conn.close()
            raise StoreBusy(type(e).__name__) from e
        finally:
            self._local.inline = False

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        with self._pooled() as conn:
            self._local.appended = False
            with conn.transaction():
                yield conn
        if self._local.appended and self.on_events_committed is not None:
            self.on_events_committed()

    @contextmanager
    def _snapshot(self) -> Iterator[Conn]:
        """A read-only transaction whose SELECTs all see one snapshot."""
        with self._pooled() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    # -- lifecycle

    def migrate(self) -> None:
        # One direct attempt, not the pool's patient retries: at start-up an unreachable
        # database or a wrong password is a configuration error to report at once.
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"{redact_url(self.url)}: {e}") from None
        with conn:
            migrations.apply(conn)

    def shared_secret(self, name: str, candidate: bytes) -> bytes:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO secrets (name, value, created) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, candidate, self._clock()),
            )
            row = conn.execute("SELECT value FROM secrets WHERE name = %s", (name,)).fetchone()
        assert row is not None
        return bytes(row[0])

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.close()
        with self._lock:
            for conn in self._inline:
                conn.close()
            self._inline.clear()
        # A waiter in wait_for_events returns within its timeout and closes it then.
        if self._listen_lock.acquire(blocking=False):
            try:
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
            finally:
                self._listen_lock.release()

    # -- helpers for the domain modules

    def _repo_id(self, conn: Conn, name: str, create: bool = False) -> int | None:
        row = conn.execute("SELECT id FROM repositories WHERE name = %s", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        # Another transaction may create it meanwhile: ON CONFLICT waits for it to commit,
        # and the SELECT after (a new snapshot in READ COMMITTED) then sees its row.
        row = conn.execute(
            "INSERT INTO repositories (name, created) VALUES (%s, %s)"
            " ON CONFLICT (name) DO NOTHING RETURNING id",
            (name, self._clock()),
        ).fetchone()
        if row is None:
            row = conn.execute("SELECT id FROM repositories WHERE name = %s", (name,)).fetchone()
        assert row is not None
        return int(row[0])

    def _append(self, conn: Conn, events: Sequence[Event]) -> None:
        """Append ``events`` inside the caller's ``_write`` transaction, as its last step:
        the counter row stays locked until the commit (see the module docstring)."""
        if not events:
            return
        self._local.appended = True
        now = self._clock()
        row = conn.execute(
            "UPDATE event_counter SET last = last + %s RETURNING last", (len(events),)
        ).fetchone()
        assert row is not None
        first = int(row[0]) - len(events) + 1
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO events (id, ts, action, repository, digest, media_type, size, tag,"
                " body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        first + i,
                        e.ts or now,
                        e.action,
                        e.repository,
                        e.digest,
                        e.media_type,
                        e.size,
                        e.tag,
                        json.dumps(e.body, separators=(",", ":")),
                    )
                    for i, e in enumerate(events)
                ],
            )
        conn.execute(f"NOTIFY {EVENTS_CHANNEL}")
