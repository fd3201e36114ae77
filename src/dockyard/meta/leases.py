"""Leases on table rows: one holder at a time, until it releases or its lease expires.

Upload sessions (``uploads``, keyed by ``id``), webhook endpoints (``webhook_cursors``,
keyed by ``name``) and jobs that run once at a time across instances (``job_leases``,
keyed by name: garbage collection, retention) all carry ``lease`` (the holder's token, or NULL) and
``lease_expires`` (seconds since the epoch). These functions are the only SQL that takes,
renews and frees those two columns; each runs inside the caller's write transaction.
The statements are written once and bound to a dialect's parameter mark: ``SQLITE`` here
(and the module-level functions, its methods), ``meta/postgres/leases.py`` PostgreSQL's.

Invariants:

- A row can be taken when nobody holds it, its lease has expired, or the taker already
  holds it (a holder may take it again to extend it).
- Renew and release only act for the current holder, so a holder that lost the lease
  (it stalled past ``lease_expires`` and another took over) changes nothing.
- A token is ``"<instance>/<suffix>"`` with no ``/`` in the suffix: ``core/uploads.py``
  and ``events/webhooks.py`` make them so. ``release_of(instance)`` frees exactly the
  tokens of that instance name: compared as text, case-sensitively, with no wildcard
  characters, and not the tokens of a longer name (``a/b`` is not ``a``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

SEPARATOR = "/"


@dataclass(frozen=True, slots=True)
class LeasedTable:
    table: str
    key: str
    # A column set to the time whenever the lease is taken or renewed (uploads use it to
    # find abandoned sessions), or None.
    touched: str | None = None


UPLOADS = LeasedTable("uploads", "id", touched="touched")
WEBHOOKS = LeasedTable("webhook_cursors", "name")
JOBS = LeasedTable("job_leases", "name")


class Cursor(Protocol):
    """What both drivers' cursors offer (sqlite3's and psycopg's)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...


class Connection(Protocol):
    """What both drivers' connections offer: sqlite3's and psycopg's ``execute``."""

    def execute(self, sql: Any, parameters: Any, /) -> Cursor: ...


@dataclass(frozen=True, slots=True)
class LeaseSQL:
    """The lease statements in one dialect: ``mark`` is its parameter placeholder, and
    ``of_instance`` its condition that ``lease`` is exactly a token of an instance (binds
    prefix length, prefix, prefix length + 1, separator)."""

    mark: str
    of_instance: str

    def _takeable(self) -> str:
        # Who may take a row; binds (lease, now).
        return f"(lease IS NULL OR lease = {self.mark} OR lease_expires < {self.mark})"

    def take(
        self,
        conn: Connection,
        t: LeasedTable,
        key: str,
        lease: str,
        seconds: float,
        now: float,
        *,
        where: str = "",
        args: tuple[Any, ...] = (),
        returning: str | None = None,
    ) -> Cursor:
        """Give row ``key`` to ``lease`` for ``seconds`` if it can be taken and ``where`` (an
        extra ``AND`` condition binding ``args``) holds. The cursor's ``rowcount`` is 1 on
        success, and with ``returning`` it yields that column of the taken row."""
        m = self.mark
        touch = f", {t.touched} = {m}" if t.touched else ""
        touch_args: tuple[Any, ...] = (now,) if t.touched else ()
        sql = (
            f"UPDATE {t.table} SET lease = {m}, lease_expires = {m}{touch}"
            f" WHERE {t.key} = {m} AND {self._takeable()}{where}"
        )
        if returning is not None:
            sql += f" RETURNING {returning}"
        return conn.execute(sql, (lease, now + seconds, *touch_args, key, lease, now, *args))

    def ensure(self, conn: Connection, t: LeasedTable, key: str) -> None:
        """Create row ``key``, free, if it does not exist (for tables whose other columns
        may be NULL: ``job_leases``)."""
        conn.execute(
            f"INSERT INTO {t.table} ({t.key}) VALUES ({self.mark}) ON CONFLICT DO NOTHING", (key,)
        )

    def takeable(self, conn: Connection, t: LeasedTable, key: str, lease: str, now: float) -> bool:
        """Whether ``take`` would succeed now (a read: cheap to ask often)."""
        row = conn.execute(
            f"SELECT 1 FROM {t.table} WHERE {t.key} = {self.mark} AND {self._takeable()}",
            (key, lease, now),
        ).fetchone()
        return row is not None

    def renew(
        self, conn: Connection, t: LeasedTable, key: str, lease: str, seconds: float, now: float
    ) -> bool:
        """Extend the holder's lease to ``now + seconds``; False if ``lease`` is not the
        holder."""
        m = self.mark
        touch = f", {t.touched} = {m}" if t.touched else ""
        touch_args: tuple[Any, ...] = (now,) if t.touched else ()
        cur = conn.execute(
            f"UPDATE {t.table} SET lease_expires = {m}{touch} WHERE {t.key} = {m} AND lease = {m}",
            (now + seconds, *touch_args, key, lease),
        )
        return cur.rowcount == 1

    def release(self, conn: Connection, t: LeasedTable, key: str, lease: str) -> None:
        """Free the row if ``lease`` holds it (otherwise do nothing)."""
        conn.execute(
            f"UPDATE {t.table} SET lease = NULL, lease_expires = NULL"
            f" WHERE {t.key} = {self.mark} AND lease = {self.mark}",
            (key, lease),
        )

    def release_of(self, conn: Connection, t: LeasedTable, instance: str) -> int:
        """Free every lease of ``instance`` (an earlier run of it cannot still be using them);
        the number freed. Exact, not ``LIKE``: there ``_`` and ``%`` are wildcards and ASCII
        letters match either case, which freed other instances' live leases."""
        prefix = instance + SEPARATOR
        cur = conn.execute(
            f"UPDATE {t.table} SET lease = NULL, lease_expires = NULL WHERE {self.of_instance}",
            (len(prefix), prefix, len(prefix) + 1, SEPARATOR),
        )
        return cur.rowcount


SQLITE = LeaseSQL("?", "substr(lease, 1, ?) = ? AND instr(substr(lease, ?), ?) = 0")
take = SQLITE.take
ensure = SQLITE.ensure
takeable = SQLITE.takeable
renew = SQLITE.renew
release = SQLITE.release
release_of = SQLITE.release_of


class JobLeases:
    """The job-lease methods of a store (``meta/store.py`` ``Jobs``), written once over the
    store's dialect (``lease_sql``), write transaction and clock."""

    lease_sql: LeaseSQL
    _clock: Callable[[], float]

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def job_acquire(self, name: str, lease: str, seconds: float) -> bool:
        with self._write() as conn:
            self.lease_sql.ensure(conn, JOBS, name)
            now = self._clock()
            return self.lease_sql.take(conn, JOBS, name, lease, seconds, now).rowcount == 1

    def job_renew(self, name: str, lease: str, seconds: float) -> bool:
        with self._write() as conn:
            return self.lease_sql.renew(conn, JOBS, name, lease, seconds, self._clock())

    def job_release(self, name: str, lease: str) -> None:
        with self._write() as conn:
            self.lease_sql.release(conn, JOBS, name, lease)
