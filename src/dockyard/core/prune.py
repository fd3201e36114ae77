"""Pruning the event log on a schedule or on demand (docs/gc.md, "Pruning the event log").

One pruner at a time across workers and instances: a run first takes the ``prune`` job
lease and renews it after every batch; a run that cannot take it does nothing. Each batch
is one short write transaction (``meta/prune.py``), so pushes and the pull-event writer
never wait long behind a prune. Pull events and the rest have their own ages
(``keep_pulls_days``, ``keep_days``; 0 keeps them forever), and nothing a consumer (a
webhook endpoint) has not handled yet is deleted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from dockyard.core.jobs import JobBusy, JobLease, LeaseLost
from dockyard.meta.prune import PruneCutoffs
from dockyard.meta.store import Database

DAY = 86400.0
JOB = "prune"


@dataclass
class PruneReport:
    dry_run: bool
    deleted_pulls: int = 0  # with dry_run: would be deleted
    deleted_others: int = 0
    # The lowest event id a consumer still needs, and which ("webhook:<name>"); held_back
    # says that consumer, not the ages, stopped the prune short.
    floor: int = 0
    held_by: str | None = None
    held_back: bool = False
    batches: int = 0
    seconds: float = 0.0

    @property
    def deleted(self) -> int:
        return self.deleted_pulls + self.deleted_others

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "deleted": self.deleted}


class EventPruner:
    def __init__(
        self,
        db: Database,
        *,
        instance: str,
        keep_pulls_days: float,
        keep_days: float,
        batch_size: int,
        lease_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.meta = db.meta
        self.instance = instance
        self.keep_pulls_days = keep_pulls_days
        self.keep_days = keep_days
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self._clock = clock

    def cutoffs(self) -> PruneCutoffs:
        now = self._clock()

        def before(days: float) -> float:
            return now - days * DAY if days > 0 else 0.0  # ts < 0: nothing

        return PruneCutoffs(before(self.keep_pulls_days), before(self.keep_days))

    async def run(
        self, dry_run: bool = False, progress: Callable[[PruneReport], None] | None = None
    ) -> PruneReport | None:
        """Prune (or with ``dry_run`` count) what may go; None if another process holds
        the prune lease. ``progress`` is told the report after each batch."""
        started = time.monotonic()
        lease = f"{self.instance}/prune-{uuid.uuid4().hex}"
        try:
            async with JobLease.hold(self.db, JOB, lease, self.lease_seconds, "busy") as held:
                return await self._run(held, dry_run, progress, started)
        except JobBusy:
            return None

    async def _run(
        self,
        held: JobLease,
        dry_run: bool,
        progress: Callable[[PruneReport], None] | None,
        started: float,
    ) -> PruneReport:
        cutoffs = self.cutoffs()
        plan = await self.db.run(self.meta.prune_plan, cutoffs)
        report = PruneReport(
            dry_run, floor=plan.floor.id, held_by=plan.floor.consumer, held_back=plan.held_back
        )
        if dry_run:
            count = await self.db.run(self.meta.prune_count, plan, cutoffs)
            report.deleted_pulls, report.deleted_others = count.pulls, count.others
        else:
            after = 0
            while True:
                step = await self.db.run(
                    self.meta.prune_batch, plan, cutoffs, after, self.batch_size
                )
                if step.last is None:
                    break
                after = step.last
                report.batches += 1
                report.deleted_pulls += step.pulls
                report.deleted_others += step.others
                if progress is not None:
                    progress(report)
                try:
                    await held.keep("lost")
                except LeaseLost:
                    break  # stalled past the lease: another pruner may run now
        report.seconds = time.monotonic() - started
        return report
