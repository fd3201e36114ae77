"""Webhook delivery state, written once for both dialects: a cursor and a lease per
endpoint, and the events given up on (``meta/store.py`` ``Webhooks``).

``WebhookStore`` is a mixin both ``SQLiteMeta`` and ``PostgresMeta`` inherit; its SQL is
written with ``?`` and bound to the store's parameter mark (``lease_sql.mark``), and the
lease statements are ``meta/leases.py``'s in the store's dialect.

Every write by the deliverer is conditional on holding the endpoint's lease, so a process
that lost it (it stalled past ``lease_expires`` and another took over) changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from dockyard.meta.leases import WEBHOOKS, LeaseSQL
from dockyard.meta.records import WebhookCursor, WebhookFailure

# Only ever forward: a cursor never moves back.
_ADVANCE = (
    "UPDATE webhook_cursors SET cursor = CASE WHEN cursor < ? THEN ? ELSE cursor END,"
    " delivered = CASE WHEN ? THEN ? ELSE delivered END"
    " WHERE name = ? AND lease = ?"
)
_ADVANCE_PAST_FAILURE = (
    "UPDATE webhook_cursors SET cursor = CASE WHEN ? AND cursor < ? THEN ? ELSE cursor END"
    " WHERE name = ? AND lease = ?"
)
_RECORD_FAILURE = (
    "INSERT INTO webhook_failures (name, event_id, attempts, last_error, failed, redeliver)"
    " VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (name, event_id) DO UPDATE"
    " SET attempts = webhook_failures.attempts + excluded.attempts,"
    " last_error = excluded.last_error, failed = excluded.failed, redeliver = 0"
)
_CURSORS = (
    "SELECT c.name, c.cursor, c.lease, c.lease_expires, c.created, c.delivered,"
    " (SELECT COUNT(*) FROM webhook_failures f WHERE f.name = c.name)"
    " FROM webhook_cursors c ORDER BY c.name"
)


class WebhookStore:
    """The ``Webhooks`` methods over a store's dialect, transactions and clock."""

    lease_sql: LeaseSQL
    # What a SELECT appends to lock the rows it read until commit ("" where writers are
    # serialized anyway, as on SQLite).
    share_lock: str
    _clock: Callable[[], float]

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.lease_sql.mark)

    def webhook_init(self, names: Sequence[str]) -> None:
        """Give endpoints seen for the first time a cursor at the current end of the log."""
        if not names:
            return
        with self._write() as conn:
            end = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            insert = self._sql(
                "INSERT INTO webhook_cursors (name, cursor, created) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING"
            )
            for name in names:  # a few endpoints: one statement each
                conn.execute(insert, (name, end, self._clock()))

    def webhook_acquire(self, name: str, lease: str, seconds: float) -> int | None:
        """Take (or keep) the endpoint's lease if it is free or expired; its cursor, or None."""
        with self._write() as conn:
            cur = self.lease_sql.take(
                conn, WEBHOOKS, name, lease, seconds, self._clock(), returning="cursor"
            )
            row = cur.fetchone()
            return None if row is None else int(row[0])

    def webhook_lease_free(self, name: str, lease: str) -> bool:
        """Whether ``webhook_acquire`` could succeed now (a read: cheap to ask often)."""
        with self._read() as conn:
            return self.lease_sql.takeable(conn, WEBHOOKS, name, lease, self._clock())

    def webhook_renew(self, name: str, lease: str, seconds: float) -> bool:
        with self._write() as conn:
            return self.lease_sql.renew(conn, WEBHOOKS, name, lease, seconds, self._clock())

    def webhook_advance(self, name: str, lease: str, cursor: int, delivered: bool) -> bool:
        """Move the cursor to ``cursor`` (every event up to it is handled)."""
        with self._write() as conn:
            cur = conn.execute(
                self._sql(_ADVANCE), (cursor, cursor, delivered, self._clock(), name, lease)
            )
            return int(cur.rowcount) == 1

    def webhook_release(self, name: str, lease: str) -> None:
        with self._write() as conn:
            self.lease_sql.release(conn, WEBHOOKS, name, lease)

    def webhook_release_leases_of(self, instance: str) -> int:
        """Free the webhook leases an earlier run of ``instance`` held (exactly that
        instance's, see ``leases.release_of``)."""
        with self._write() as conn:
            return self.lease_sql.release_of(conn, WEBHOOKS, instance)

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
            # On PostgreSQL the UPDATE locks the cursor row until commit: the lease cannot
            # change hands between it and the insert.
            cur = conn.execute(
                self._sql(_ADVANCE_PAST_FAILURE), (advance, event_id, event_id, name, lease)
            )
            if cur.rowcount != 1:
                return False
            conn.execute(self._sql(_RECORD_FAILURE), (name, event_id, attempts, error[:2000], now))
            return True

    def webhook_redelivered(self, name: str, lease: str, event_id: int) -> bool:
        """A failed event was delivered after all: forget the failure."""
        with self._write() as conn:
            held = conn.execute(
                self._sql("SELECT 1 FROM webhook_cursors WHERE name = ? AND lease = ?")
                + self.share_lock,
                (name, lease),
            ).fetchone()
            if held is None:
                return False
            conn.execute(
                self._sql("DELETE FROM webhook_failures WHERE name = ? AND event_id = ?"),
                (name, event_id),
            )
            return True

    def webhook_to_redeliver(self, name: str, limit: int) -> list[int]:
        with self._read() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT event_id FROM webhook_failures WHERE name = ? AND redeliver = 1"
                    " ORDER BY event_id LIMIT ?"
                ),
                (name, limit),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def webhook_mark_redeliver(self, name: str, event_id: int | None) -> int:
        """Ask the deliverer to send failed events again (one, or all of the endpoint's)."""
        with self._write() as conn:
            if event_id is None:
                cur = conn.execute(
                    self._sql("UPDATE webhook_failures SET redeliver = 1 WHERE name = ?"),
                    (name,),
                )
            else:
                cur = conn.execute(
                    self._sql(
                        "UPDATE webhook_failures SET redeliver = 1 WHERE name = ? AND event_id = ?"
                    ),
                    (name, event_id),
                )
            return int(cur.rowcount)

    def webhook_cursors(self) -> list[WebhookCursor]:
        with self._read() as conn:
            rows = conn.execute(_CURSORS).fetchall()
        return [WebhookCursor(r[0], int(r[1]), r[2], r[3], r[4], r[5], int(r[6])) for r in rows]

    def webhook_failures(self, name: str | None = None) -> list[WebhookFailure]:
        sql = "SELECT name, event_id, attempts, last_error, failed, redeliver FROM webhook_failures"
        args: tuple[Any, ...] = ()
        if name is not None:
            sql += " WHERE name = ?"
            args = (name,)
        with self._read() as conn:
            rows = conn.execute(self._sql(sql + " ORDER BY name, event_id"), args).fetchall()
        return [WebhookFailure(r[0], int(r[1]), int(r[2]), r[3], r[4], bool(r[5])) for r in rows]
