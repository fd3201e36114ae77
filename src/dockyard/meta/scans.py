"""The scan queue and its results, written once for both dialects: one row of ``scans``
(migration 7) per scanned manifest digest (``meta/store.py`` ``Scans``).

A row's life::

    queued (next_attempt due) --claim--> running (lease, lease_expires)
    running --finish--> done (summary, findings, report referrer; a "scan" event in the
                              same transaction)
    running --release--> queued again (a failure: attempts+1, last_error, next_attempt
                         later; an index waiting for its platforms: not counted),
                         unsupported (not an image) or failed (the manifest is gone)
    running, its lease expired (the worker died) --claim--> running (another worker)
    any --enqueue(again)--> queued, due now

``ScanStore`` is a mixin both ``SQLiteMeta`` and ``PostgresMeta`` inherit; its SQL is
written with ``?`` and bound to the store's parameter mark (``lease_sql.mark``). Every
write a worker makes is conditional on its lease, so a worker that lost a row (it
stalled past ``lease_expires``) changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from dockyard.meta.leases import LeasedTable, LeaseSQL
from dockyard.meta.records import Event

SCANS = LeasedTable("scans", "digest")
STATUSES = ("queued", "running", "done", "failed", "unsupported")
SEVERITY_COLUMNS = ("critical", "high", "medium", "low", "unknown")

_COLUMNS = (
    "digest, repository, media_type, status, requested, started, finished, scanner,"
    " db_version, db_updated, critical, high, medium, low, unknown, findings, report_digest,"
    " attempts, next_attempt, last_error, lease, lease_expires"
)


@dataclass(frozen=True, slots=True)
class NewScan:
    digest: str
    repository: str
    media_type: str | None
    status: str = "queued"


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    """What a finished scan stores: ``counts`` by severity name (``config.SEVERITIES``),
    ``findings`` as the API renders them."""

    scanner: str
    db_version: str | None
    db_updated: float | None
    counts: dict[str, int]
    findings: list[dict[str, Any]]
    report_digest: str | None


@dataclass(frozen=True, slots=True)
class ScanRecord:
    digest: str
    repository: str
    media_type: str | None
    status: str
    requested: float
    started: float | None
    finished: float | None
    scanner: str | None
    db_version: str | None
    db_updated: float | None
    counts: dict[str, int] | None  # None until done
    findings: list[dict[str, Any]]
    report_digest: str | None
    attempts: int
    next_attempt: float | None
    last_error: str | None
    lease: str | None
    lease_expires: float | None


def _record(r: Any) -> ScanRecord:
    counts = None
    if r[10] is not None:
        counts = {
            "CRITICAL": int(r[10]),
            "HIGH": int(r[11]),
            "MEDIUM": int(r[12]),
            "LOW": int(r[13]),
            "UNKNOWN": int(r[14]),
        }
    return ScanRecord(
        str(r[0]),
        str(r[1]),
        r[2],
        str(r[3]),
        float(r[4]),
        None if r[5] is None else float(r[5]),
        None if r[6] is None else float(r[6]),
        r[7],
        r[8],
        None if r[9] is None else float(r[9]),
        counts,
        json.loads(r[15]) if r[15] else [],
        r[16],
        int(r[17]),
        None if r[18] is None else float(r[18]),
        r[19],
        r[20],
        None if r[21] is None else float(r[21]),
    )


class ScanStore:
    """The ``Scans`` methods over a store's dialect, transactions and clock."""

    lease_sql: LeaseSQL
    _clock: Callable[[], float]

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _append(self, conn: Any, events: Sequence[Event]) -> None:
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.lease_sql.mark)

    def scans_enqueue(self, scans: Sequence[NewScan], again: bool = False) -> int:
        """Add rows due now; a digest that has a row keeps it unless ``again`` (then it
        is queued anew: attempts and error cleared, any worker's lease dropped).
        Returns the rows added or re-queued."""
        if not scans:
            return 0
        now = self._clock()
        conflict = "DO NOTHING"
        if again:
            conflict = (
                "DO UPDATE SET status = excluded.status, repository = excluded.repository,"
                " requested = excluded.requested, attempts = 0, next_attempt ="
                " excluded.next_attempt, last_error = NULL, lease = NULL, lease_expires = NULL"
            )
        sql = self._sql(
            "INSERT INTO scans (digest, repository, media_type, status, requested, attempts,"
            f" next_attempt) VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT (digest) {conflict}"
        )
        changed = 0
        with self._write() as conn:
            for s in scans:  # a push names one manifest and its few platforms
                due = now if s.status == "queued" else None
                cur = conn.execute(sql, (s.digest, s.repository, s.media_type, s.status, now, due))
                changed += max(int(cur.rowcount), 0)
        return changed

    def scans_claim(self, lease: str, seconds: float, limit: int) -> list[ScanRecord]:
        """Take up to ``limit`` due rows (queued and due, or running with an expired
        lease), oldest due first, marking them running under ``lease``."""
        now = self._clock()
        due = self._sql(
            "SELECT digest FROM scans WHERE status IN ('queued', 'running')"
            " AND COALESCE(next_attempt, 0) <= ? AND (lease IS NULL OR lease_expires < ?)"
            " ORDER BY next_attempt, requested LIMIT ?"
        )
        take = self._sql(
            "UPDATE scans SET status = 'running', lease = ?, lease_expires = ?, started = ?"
            " WHERE digest = ? AND status IN ('queued', 'running')"
            " AND (lease IS NULL OR lease_expires < ?)"
        )
        taken: list[str] = []
        # A read first: idle workers ask often, and a write transaction each time would
        # queue behind (and delay) the pushes' own writes.
        with self._read() as conn:
            if not conn.execute(due, (now, now, 1)).fetchall():
                return []
        with self._write() as conn:
            for (digest,) in conn.execute(due, (now, now, limit)).fetchall():
                # Conditional: another instance may have taken it since the SELECT.
                if conn.execute(take, (lease, now + seconds, now, digest, now)).rowcount == 1:
                    taken.append(str(digest))
            if not taken:
                return []
            rows = conn.execute(
                self._sql(
                    f"SELECT {_COLUMNS} FROM scans WHERE digest IN ({', '.join('?' * len(taken))})"
                ),
                taken,
            ).fetchall()
        return sorted((_record(r) for r in rows), key=lambda r: taken.index(r.digest))

    def scans_renew(self, digest: str, lease: str, seconds: float) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                self._sql("UPDATE scans SET lease_expires = ? WHERE digest = ? AND lease = ?"),
                (self._clock() + seconds, digest, lease),
            )
            return int(cur.rowcount) == 1

    def scans_finish(
        self, digest: str, lease: str, outcome: ScanOutcome, events: Sequence[Event]
    ) -> bool:
        """Store a scan's result (status done) and append ``events`` with it."""
        c = outcome.counts
        with self._write() as conn:
            cur = conn.execute(
                self._sql(
                    "UPDATE scans SET status = 'done', finished = ?, scanner = ?,"
                    " db_version = ?, db_updated = ?, critical = ?, high = ?, medium = ?,"
                    " low = ?, unknown = ?, findings = ?, report_digest = ?,"
                    " attempts = attempts + 1, next_attempt = NULL, last_error = NULL,"
                    " lease = NULL, lease_expires = NULL WHERE digest = ? AND lease = ?"
                ),
                (
                    self._clock(),
                    outcome.scanner,
                    outcome.db_version,
                    outcome.db_updated,
                    c.get("CRITICAL", 0),
                    c.get("HIGH", 0),
                    c.get("MEDIUM", 0),
                    c.get("LOW", 0),
                    c.get("UNKNOWN", 0),
                    json.dumps(outcome.findings, separators=(",", ":")),
                    outcome.report_digest,
                    digest,
                    lease,
                ),
            )
            if cur.rowcount != 1:
                return False
            self._append(conn, events)
            return True

    def scans_release(
        self,
        digest: str,
        lease: str,
        status: str,
        next_attempt: float | None,
        error: str | None,
        count_attempt: bool,
    ) -> bool:
        """Give a running row back: ``queued`` again at ``next_attempt`` (a failure, with
        ``count_attempt``; or a wait), or a final ``unsupported``/``failed``."""
        assert status in ("queued", "unsupported", "failed")
        with self._write() as conn:
            cur = conn.execute(
                self._sql(
                    "UPDATE scans SET status = ?, next_attempt = ?,"
                    " last_error = COALESCE(?, last_error), attempts = attempts + ?,"
                    " finished = CASE WHEN ? = 'queued' THEN finished ELSE ? END,"
                    " lease = NULL, lease_expires = NULL WHERE digest = ? AND lease = ?"
                ),
                (
                    status,
                    next_attempt,
                    None if error is None else error[:2000],
                    1 if count_attempt else 0,
                    status,
                    self._clock(),
                    digest,
                    lease,
                ),
            )
            return int(cur.rowcount) == 1

    def scans_release_leases_of(self, instance: str) -> int:
        """Free the rows an earlier run of ``instance`` was scanning (``dockyard serve``
        at start: they are taken again at once instead of when their leases expire)."""
        with self._write() as conn:
            return self.lease_sql.release_of(conn, SCANS, instance)

    def scans_get(self, digests: Sequence[str]) -> dict[str, ScanRecord]:
        if not digests:
            return {}
        with self._read() as conn:
            rows = conn.execute(
                self._sql(
                    f"SELECT {_COLUMNS} FROM scans WHERE digest IN"
                    f" ({', '.join('?' * len(digests))})"
                ),
                list(digests),
            ).fetchall()
        return {str(r[0]): _record(r) for r in rows}

    def scans_counts(self) -> dict[str, int]:
        """Rows per status; queued rows that failed before count as ``retrying``."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT CASE WHEN status = 'queued' AND attempts > 0 THEN 'retrying'"
                " ELSE status END AS s, COUNT(*) FROM scans GROUP BY s"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def scans_failing(self, limit: int) -> list[ScanRecord]:
        """Rows whose last try failed and that are not done, next attempt first."""
        with self._read() as conn:
            rows = conn.execute(
                self._sql(
                    f"SELECT {_COLUMNS} FROM scans WHERE last_error IS NOT NULL"
                    " AND status IN ('queued', 'running', 'failed')"
                    " ORDER BY next_attempt, digest LIMIT ?"
                ),
                (limit,),
            ).fetchall()
        return [_record(r) for r in rows]

    def scans_requeue_stale(self, db_version: str, limit: int) -> int:
        """Queue again up to ``limit`` done rows scanned with another database version,
        the longest-finished first."""
        now = self._clock()
        with self._write() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT digest FROM scans WHERE status = 'done' AND db_version IS NOT NULL"
                    " AND db_version <> ? ORDER BY finished, digest LIMIT ?"
                ),
                (db_version, limit),
            ).fetchall()
            update = self._sql(
                "UPDATE scans SET status = 'queued', next_attempt = ?, attempts = 0,"
                " requested = ? WHERE digest = ? AND status = 'done'"
            )
            return sum(int(conn.execute(update, (now, now, r[0])).rowcount) for r in rows)
