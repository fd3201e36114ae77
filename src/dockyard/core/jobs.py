"""Holding a job's lease (``meta/store.py`` ``Jobs``) for one run of garbage collection,
retention or pruning: taken at the start, renewed as the run goes, released at the end.

One holder at a time across every worker and instance. The holder renews once a quarter
of the lease has passed, so a run that keeps working never lets it expire; a run that
stalled past it finds it taken (``LeaseLost``) and must stop. The release is shielded:
a run cancelled by a stopping server frees the lease at once instead of leaving the next
run to wait for it to expire.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from dockyard.meta.store import Database


class JobBusy(Exception):
    """Another run holds the job's lease."""


class LeaseLost(Exception):
    """The run stopped renewing its lease in time and another took it: it stopped."""


class JobLease:
    def __init__(self, db: Database, job: str, token: str, seconds: float) -> None:
        self.db = db
        self.job = job
        self.token = token
        self.seconds = seconds
        self._renewed = time.monotonic()

    @classmethod
    @asynccontextmanager
    async def hold(
        cls, db: Database, job: str, token: str, seconds: float, busy: str
    ) -> AsyncIterator[JobLease]:
        """The lease of ``job`` for the block; ``JobBusy(busy)`` if another holds it."""
        if not await db.run(db.meta.job_acquire, job, token, seconds):
            raise JobBusy(busy)
        try:
            yield cls(db, job, token, seconds)
        finally:
            with anyio.CancelScope(shield=True):
                await db.run(db.meta.job_release, job, token)

    async def keep(self, lost: str) -> None:
        """Renew the lease if a quarter of it has passed; ``LeaseLost(lost)`` if another
        run has taken it meanwhile."""
        if time.monotonic() - self._renewed < self.seconds / 4:
            return
        if not await self.db.run(self.db.meta.job_renew, self.job, self.token, self.seconds):
            raise LeaseLost(lost)
        self._renewed = time.monotonic()
