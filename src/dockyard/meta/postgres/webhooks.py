"""Webhook delivery state on PostgreSQL: a cursor and a lease per endpoint, failed events
(the rules of ``meta/sqlite/webhooks.py``: every write by the deliverer is conditional on
holding the endpoint's lease)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dockyard.meta.leases import WEBHOOKS
from dockyard.meta.postgres import leases
from dockyard.meta.postgres.core import PostgresCore
from dockyard.meta.records import WebhookCursor, WebhookFailure


class WebhookStore(PostgresCore):
    def webhook_init(self, names: Sequence[str]) -> None:
        """Give endpoints seen for the first time a cursor at the current end of the log."""
        if not names:
            return
        with self._write() as conn:
            now = self._clock()
            conn.execute(
                "INSERT INTO webhook_cursors (name, cursor, created)"
                " SELECT n, (SELECT COALESCE(MAX(id), 0) FROM events), %s"
                " FROM unnest(%s::text[]) AS n"
                " ON CONFLICT (name) DO NOTHING",
                (now, list(names)),
            )

    def webhook_acquire(self, name: str, lease: str, seconds: float) -> int | None:
        """Take (or keep) the endpoint's lease if it is free or expired; its cursor, or None."""
        with self._write() as conn:
            cur = leases.take(
                conn, WEBHOOKS, name, lease, seconds, self._clock(), returning="cursor"
            )
            row = cur.fetchone()
            return None if row is None else int(row[0])

    def webhook_lease_free(self, name: str, lease: str) -> bool:
        """Whether ``webhook_acquire`` could succeed now (a read: cheap to ask often)."""
        with self._read() as conn:
            return leases.takeable(conn, WEBHOOKS, name, lease, self._clock())

    def webhook_renew(self, name: str, lease: str, seconds: float) -> bool:
        with self._write() as conn:
            return leases.renew(conn, WEBHOOKS, name, lease, seconds, self._clock())

    def webhook_advance(self, name: str, lease: str, cursor: int, delivered: bool) -> bool:
        """Move the cursor to ``cursor`` (every event up to it is handled)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE webhook_cursors SET cursor = GREATEST(cursor, %s),"
                " delivered = CASE WHEN %s THEN %s ELSE delivered END"
                " WHERE name = %s AND lease = %s",
                (cursor, delivered, self._clock(), name, lease),
            )
            return cur.rowcount == 1

    def webhook_release(self, name: str, lease: str) -> None:
        with self._write() as conn:
            leases.release(conn, WEBHOOKS, name, lease)

    def webhook_release_leases_of(self, instance: str) -> int:
        """Free the webhook leases an earlier run of ``instance`` held."""
        with self._write() as conn:
            return leases.release_of(conn, WEBHOOKS, instance)

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
            # The UPDATE locks the cursor row until commit: the lease cannot change hands
            # between it and the insert.
            cur = conn.execute(
                "UPDATE webhook_cursors SET cursor = CASE WHEN %s THEN GREATEST(cursor, %s)"
                " ELSE cursor END WHERE name = %s AND lease = %s",
                (advance, event_id, name, lease),
            )
            if cur.rowcount != 1:
                return False
            conn.execute(
                "INSERT INTO webhook_failures (name, event_id, attempts, last_error, failed,"
                " redeliver) VALUES (%s, %s, %s, %s, %s, 0) ON CONFLICT (name, event_id)"
                " DO UPDATE SET attempts = webhook_failures.attempts + excluded.attempts,"
                " last_error = excluded.last_error, failed = excluded.failed, redeliver = 0",
                (name, event_id, attempts, error[:2000], now),
            )
            return True

    def webhook_redelivered(self, name: str, lease: str, event_id: int) -> bool:
        """A failed event was delivered after all: forget the failure."""
        with self._write() as conn:
            held = conn.execute(
                "SELECT 1 FROM webhook_cursors WHERE name = %s AND lease = %s FOR SHARE",
                (name, lease),
            ).fetchone()
            if held is None:
                return False
            conn.execute(
                "DELETE FROM webhook_failures WHERE name = %s AND event_id = %s", (name, event_id)
            )
            return True

    def webhook_to_redeliver(self, name: str, limit: int) -> list[int]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT event_id FROM webhook_failures WHERE name = %s AND redeliver = 1"
                " ORDER BY event_id LIMIT %s",
                (name, limit),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def webhook_mark_redeliver(self, name: str, event_id: int | None) -> int:
        """Ask the deliverer to send failed events again (one, or all of the endpoint's)."""
        with self._write() as conn:
            if event_id is None:
                cur = conn.execute(
                    "UPDATE webhook_failures SET redeliver = 1 WHERE name = %s", (name,)
                )
            else:
                cur = conn.execute(
                    "UPDATE webhook_failures SET redeliver = 1 WHERE name = %s AND event_id = %s",
                    (name, event_id),
                )
            return cur.rowcount

    def webhook_cursors(self) -> list[WebhookCursor]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT c.name, c.cursor, c.lease, c.lease_expires, c.created, c.delivered,"
                " (SELECT COUNT(*) FROM webhook_failures f WHERE f.name = c.name)"
                " FROM webhook_cursors c ORDER BY c.name"
            ).fetchall()
        return [WebhookCursor(r[0], int(r[1]), r[2], r[3], r[4], r[5], int(r[6])) for r in rows]

    def webhook_failures(self, name: str | None = None) -> list[WebhookFailure]:
        sql = "SELECT name, event_id, attempts, last_error, failed, redeliver FROM webhook_failures"
        args: tuple[Any, ...] = ()
        if name is not None:
            sql += " WHERE name = %s"
            args = (name,)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY name, event_id", args).fetchall()
        return [WebhookFailure(r[0], int(r[1]), int(r[2]), r[3], r[4], bool(r[5])) for r in rows]
