"""What replication keeps in the store besides the consumer cursors, written once for
both dialects: each pull-mode rule's last run (``replication_runs``, migration 6), who
is running one (its job lease), and the size of a push consumer's backlog.

Push-mode rules keep their cursor, lease and failed events in the webhook tables
(``webhook_cursors``, ``webhook_failures``) under consumer names
``replication:<rule>:<target url>`` (``replication/push.py``): so the event pruner's floor
(``meta/prune.py``) covers them with no change.

``ReplicationStore`` is a mixin both ``SQLiteMeta`` and ``PostgresMeta`` inherit; its SQL
is written with ``?`` and bound to the store's parameter mark (``lease_sql.mark``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from dockyard.meta.leases import LeaseSQL


@dataclass(frozen=True, slots=True)
class ReplicationRun:
    """A pull rule's run: ``finished`` is None while it goes (or if it died)."""

    name: str
    started: float
    finished: float | None = None
    copied: int = 0
    failed: int = 0
    last_error: str | None = None


_UPSERT_RUN = (
    "INSERT INTO replication_runs (name, started, finished, copied, failed, last_error)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET started = excluded.started,"
    " finished = excluded.finished, copied = excluded.copied, failed = excluded.failed,"
    " last_error = excluded.last_error"
)


class ReplicationStore:
    """The ``Replication`` methods (``meta/store.py``) over a store's dialect."""

    lease_sql: LeaseSQL

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.lease_sql.mark)

    def replication_record_run(self, run: ReplicationRun) -> None:
        """Store ``run`` as its rule's last run (replacing the one before)."""
        with self._write() as conn:
            conn.execute(
                self._sql(_UPSERT_RUN),
                (
                    run.name,
                    run.started,
                    run.finished,
                    run.copied,
                    run.failed,
                    None if run.last_error is None else run.last_error[:2000],
                ),
            )

    def replication_runs(self) -> list[ReplicationRun]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, started, finished, copied, failed, last_error"
                " FROM replication_runs ORDER BY name"
            ).fetchall()
        return [
            ReplicationRun(
                str(r[0]),
                float(r[1]) if r[1] is not None else 0.0,
                None if r[2] is None else float(r[2]),
                int(r[3]),
                int(r[4]),
                r[5],
            )
            for r in rows
        ]

    def replication_job_holder(self, job: str, now: float) -> str | None:
        """Who holds the job lease ``job`` (a pull rule's run) at ``now``, or None."""
        with self._read() as conn:
            row = conn.execute(
                self._sql("SELECT lease FROM job_leases WHERE name = ? AND lease_expires > ?"),
                (job, now),
            ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def events_after_count(self, cursor: int) -> int:
        """How many events the log holds after ``cursor`` (an index range count)."""
        with self._read() as conn:
            row = conn.execute(
                self._sql("SELECT COUNT(*) FROM events WHERE id > ?"), (cursor,)
            ).fetchone()
        return int(row[0])
