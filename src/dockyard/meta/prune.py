"""Pruning the event log, written once over both stores' SQL (docs/gc.md, "Pruning the
event log").

An event may go when it is older than its class's cutoff (pull events and the rest have
their own) and no consumer still needs it. Consumers say what they need in two ways:

- a cursor: the lowest id the consumer has not handled yet. Each consumer with a cursor
  is one ``SELECT <consumer name>, <lowest id it needs>`` in ``CONSUMER_FLOORS``; the
  floor of the log is the least of them (``EventPruning.event_floor``). Webhook
  endpoints are one today; replication rules and the scan queue (issues 12 and 13) add
  their row here, in the same form, and pruning respects them with no other change.
- single events kept for a retry: ``PINNED_EVENTS`` (a webhook's failed events, which
  ``dockyard events webhooks redeliver`` may send again) are never deleted, wherever
  they are.

Invariants: nothing at or above the floor is deleted, nor a pinned event, nor the newest
event of the log (``last_event_id`` is ``MAX(id)``: the log never looks empty or moves
back, so webhook cursors and feed clients' ``since`` stay meaningful). Deletion runs in
batches of at most ``limit`` rows, one short write transaction each, walking ids upwards
by the primary key; the batch's end is found through ``events_by_ts``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

# Each: (consumer name, lowest event id it still needs), one row per consumer.
CONSUMER_FLOORS: tuple[str, ...] = ("SELECT 'webhook:' || name, cursor + 1 FROM webhook_cursors",)
# Each: ids of single events a consumer keeps for a retry.
PINNED_EVENTS: tuple[str, ...] = ("SELECT event_id FROM webhook_failures",)


@dataclass(frozen=True, slots=True)
class PruneCutoffs:
    """Events before these times (seconds since the epoch) may go; 0: keep them all."""

    pulls_before: float
    others_before: float


@dataclass(frozen=True, slots=True)
class EventFloor:
    id: int  # the lowest id some consumer still needs (past the log's end: none)
    consumer: str | None  # who needs it ("webhook:<name>"), None without consumers


@dataclass(frozen=True, slots=True)
class PrunePlan:
    end: int  # only ids below this may go
    floor: EventFloor
    # The floor, not the cutoffs, is what stops this prune short (a consumer behind).
    held_back: bool


@dataclass(frozen=True, slots=True)
class PruneCount:
    pulls: int
    others: int
    # The highest id this batch looked at: the next batch starts after it (None: done).
    last: int | None = None


@dataclass(frozen=True, slots=True)
class PruneSQL:
    """The pruning statements with a dialect's parameter mark."""

    mark: str

    def condition(self) -> str:
        """Whether an event is past its class's cutoff; binds (pulls_before, others_before)."""
        m = self.mark
        return (
            f"((action = 'pull' AND ts < {m}) OR (action <> 'pull' AND ts < {m}))"
            f" AND id NOT IN ({' UNION ALL '.join(PINNED_EVENTS)})"
        )

    def end_by_time(self) -> str:
        # The first event at or after the later cutoff, found in events_by_ts. Ids grow
        # with time only roughly (pull batches are written late, clocks differ): the ts
        # condition keeps younger events below it, and older ones above it go next run.
        return f"SELECT id FROM events WHERE ts >= {self.mark} ORDER BY ts LIMIT 1"

    def batch_end(self) -> str:
        m = self.mark
        return (
            f"SELECT MAX(id) FROM (SELECT id FROM events WHERE id > {m} AND id < {m}"
            f" AND {self.condition()} ORDER BY id LIMIT {m}) AS batch"
        )

    def delete(self) -> str:
        m = self.mark
        return (
            f"DELETE FROM events WHERE id > {m} AND id <= {m} AND {self.condition()}"
            " RETURNING action"
        )

    def count(self) -> str:
        m = self.mark
        return (
            "SELECT CASE WHEN action = 'pull' THEN 1 ELSE 0 END AS pull, COUNT(*)"
            f" FROM events WHERE id < {m} AND {self.condition()} GROUP BY 1"
        )


class EventPruner(Protocol):
    """The store protocol (part of ``MetadataStore``): what consumers still need, and
    deleting old events in batches below it. ``EventPruning`` implements it."""

    def event_floor(self) -> EventFloor: ...

    def prune_plan(self, cutoffs: PruneCutoffs) -> PrunePlan: ...

    def prune_batch(
        self, plan: PrunePlan, cutoffs: PruneCutoffs, after: int, limit: int
    ) -> PruneCount: ...

    def prune_count(self, plan: PrunePlan, cutoffs: PruneCutoffs) -> PruneCount: ...


class EventPruning:
    """The pruning methods of a store (``meta/store.py`` ``EventPruner``), written once
    over the store's dialect (``prune_sql``) and transactions."""

    prune_sql: PruneSQL

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def event_floor(self) -> EventFloor:
        """The lowest event id any consumer still needs, and which consumer."""
        with self._read() as conn:
            return self._floor(conn)

    def _floor(self, conn: Any) -> EventFloor:
        rows = conn.execute(" UNION ALL ".join(CONSUMER_FLOORS)).fetchall()
        if rows:
            consumer, lowest = min(rows, key=lambda r: (int(r[1]), str(r[0])))
            return EventFloor(int(lowest), str(consumer))
        last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        return EventFloor(int(last) + 1, None)

    def prune_plan(self, cutoffs: PruneCutoffs) -> PrunePlan:
        """Where this prune stops: below the floor, below the newest event, and below the
        first event younger than the later cutoff."""
        with self._read() as conn:
            floor = self._floor(conn)
            last = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
            latest = max(cutoffs.pulls_before, cutoffs.others_before)
            row = conn.execute(self.prune_sql.end_by_time(), (latest,)).fetchone()
        by_time = last + 1 if row is None else int(row[0])
        end = min(by_time, floor.id, last)
        return PrunePlan(end, floor, floor.id < min(by_time, last))

    def _args(self, cutoffs: PruneCutoffs) -> tuple[float, float]:
        return (cutoffs.pulls_before, cutoffs.others_before)

    def prune_batch(
        self, plan: PrunePlan, cutoffs: PruneCutoffs, after: int, limit: int
    ) -> PruneCount:
        """Delete up to ``limit`` prunable events with ids after ``after`` (one write
        transaction); ``last`` is None when there are no more."""
        sql = self.prune_sql
        with self._write() as conn:
            (high,) = conn.execute(
                sql.batch_end(), (after, plan.end, *self._args(cutoffs), limit)
            ).fetchone()
            if high is None:
                return PruneCount(0, 0, None)
            deleted = conn.execute(
                sql.delete(), (after, int(high), *self._args(cutoffs))
            ).fetchall()
        pulls = sum(1 for (action,) in deleted if action == "pull")
        return PruneCount(pulls, len(deleted) - pulls, int(high))

    def prune_count(self, plan: PrunePlan, cutoffs: PruneCutoffs) -> PruneCount:
        """What ``prune_batch`` calls would delete under ``plan`` (a dry run)."""
        with self._read() as conn:
            rows = conn.execute(self.prune_sql.count(), (plan.end, *self._args(cutoffs)))
            counts = {int(pull): int(n) for pull, n in rows.fetchall()}
        return PruneCount(counts.get(1, 0), counts.get(0, 0))
