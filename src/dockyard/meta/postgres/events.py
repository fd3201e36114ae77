"""The event log on PostgreSQL: ids are handed out in commit order (``core._append``), so
a reader that remembers the last id it saw misses nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence

from dockyard.meta.postgres.core import PostgresCore
from dockyard.meta.records import Event, StoredEvent


class EventStore(PostgresCore):
    def append_events(self, events: Sequence[Event]) -> None:
        if events:
            with self._write() as conn:
                self._append(conn, events)

    def last_event_id(self) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        assert row is not None
        return int(row[0])

    def events_after(self, after: int, limit: int) -> list[StoredEvent]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, ts, action, repository, digest, media_type, size, tag, body"
                " FROM events WHERE id > %s ORDER BY id LIMIT %s",
                (after, limit),
            ).fetchall()
        return [
            StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]))
            for r in rows
        ]

    def event(self, event_id: int) -> StoredEvent | None:
        found = self.events_after(event_id - 1, 1)
        return found[0] if found and found[0].id == event_id else None
