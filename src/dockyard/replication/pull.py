"""Pull-mode replication: every ``interval`` seconds, copy what a rule matches from its
source registry into this one.

One run at a time across the fleet: every worker of every instance runs a
``PullSchedule`` per pull rule; when the rule's last run (``replication_runs``) started
``interval`` seconds ago or more, it takes the job lease ``replication:<rule>``
(``core/jobs.py``), looks again at the last run (another process may just have made
one), and runs. A run::

    repositories: the rule's globs themselves when none has a wildcard, else the
                  source's catalog (under the source's prefix) filtered by the globs
    for each:     its tags matching the rule's regexes; HEAD each; copy the image
                  (copy.copy_image, remote -> local, through the core) when the local
                  tag names another digest or none
    record:       started, finished, images copied, images failed, the last error

A failure of one image is counted and the run goes on; the source unreachable ends the
run (recorded as its last error) until the next interval. Deletes at the source are not
replicated.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from dockyard.config import ReplicationRule
from dockyard.core.jobs import JobBusy, JobLease, LeaseLost
from dockyard.core.registry import Registry
from dockyard.events.outage import log_failure
from dockyard.meta.replication import ReplicationRun
from dockyard.meta.store import Database
from dockyard.replication.copy import LocalDestination, RemoteSource, copy_image
from dockyard.replication.metrics import ReplicationMetrics
from dockyard.replication.rules import RuleMatcher
from dockyard.upstream.client import RegistryClient, Unavailable

log = logging.getLogger("dockyard.replication")

# Seconds a run's lease lasts between renewals (it renews once a quarter has passed).
RUN_LEASE = 60.0
# At most this long between looks at whether the rule's next run is due.
SCHEDULE_CHECK = 5.0


def job_name(rule: ReplicationRule) -> str:
    return f"replication:{rule.name}"


@dataclass(slots=True)
class PullStatistics:
    runs: int = 0
    images: int = 0
    failed: int = 0


class PullSchedule:
    """One pull rule's schedule in this process; ``run`` in a nursery."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        rule: ReplicationRule,
        *,
        instance: str,
        metrics: ReplicationMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.registry = registry
        self.rule = rule
        self.matcher = RuleMatcher(rule)
        self.metrics = metrics
        self.clock = clock
        self.token = f"{instance}/{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stats = PullStatistics()

    async def run(self) -> None:
        client = RegistryClient.from_settings(self.rule.source)
        try:
            while True:
                try:
                    wait = await self._until_due()
                    if wait > 0:
                        await anyio.sleep(min(wait, SCHEDULE_CHECK))
                        continue
                    async with JobLease.hold(
                        self.db, job_name(self.rule), self.token, RUN_LEASE, "busy"
                    ) as lease:
                        if await self._until_due() <= 0:
                            await self.run_once(client, lease)
                except JobBusy:
                    await anyio.sleep(SCHEDULE_CHECK)
                except LeaseLost:
                    log.warning("replication %s: lost the run's lease", self.rule.name)
                except Exception:  # a bug or the database: log it, keep the schedule going
                    log_failure(log, "replication %s: the run failed; will retry", self.rule.name)
                    await anyio.sleep(SCHEDULE_CHECK)
        finally:
            with anyio.move_on_after(2) as scope:
                scope.shield = True
                await client.aclose()

    async def _until_due(self) -> float:
        """Seconds until the next run is due (0 or less: now)."""
        runs = await self.db.run(self.db.meta.replication_runs)
        last = next((r for r in runs if r.name == self.rule.name), None)
        if last is None:
            return 0.0
        return last.started + self.rule.interval - self.clock()

    async def run_once(
        self, client: RegistryClient, lease: JobLease | None = None
    ) -> ReplicationRun:
        """One run (the caller holds the job lease); recorded in ``replication_runs``."""
        rule = self.rule
        meta = self.db.meta
        run = ReplicationRun(rule.name, self.clock())
        await self.db.run(meta.replication_record_run, run)
        copied = failed = 0
        last_error: str | None = None
        source = RemoteSource(client)
        destination = LocalDestination(self.registry, f"replication:{rule.name}")
        try:
            for local, remote in await self._repositories(client):
                for tag in await client.tags(remote):
                    if not self.matcher.tag_matches(tag):
                        continue
                    if lease is not None:
                        await lease.keep(f"replication {rule.name}: lost the run's lease")
                    try:
                        found = await client.head_manifest(remote, tag)
                        if found is None or await destination.tagged(local, tag) == found.digest:
                            continue
                        report = await copy_image(
                            source,
                            destination,
                            remote,
                            local,
                            found.digest,
                            tag,
                            referrers=rule.referrers,
                        )
                    except (Unavailable, LeaseLost):
                        raise
                    except Exception as e:
                        failed += 1
                        last_error = f"{local}:{tag}: {type(e).__name__}: {e}"
                        log.warning("replication %s: %s", rule.name, last_error)
                        if self.metrics is not None:
                            self.metrics.failures.labels(rule.name, rule.source.url).inc()
                        continue
                    copied += 1
                    log.info(
                        "replication %s: copied %s:%s (%s) from %s (%d blobs, %d bytes)",
                        rule.name,
                        remote,
                        tag,
                        found.digest,
                        rule.source.url,
                        report.blobs,
                        report.bytes,
                    )
                    if self.metrics is not None:
                        self.metrics.copied(rule.name, rule.source.url, report)
        except Unavailable as e:
            last_error = f"the source is unavailable: {e}"
            log.warning("replication %s: %s; next run in %gs", rule.name, last_error, rule.interval)
            if self.metrics is not None:
                self.metrics.retries.labels(rule.name, rule.source.url).inc()
        finally:
            run = ReplicationRun(rule.name, run.started, self.clock(), copied, failed, last_error)
            with anyio.CancelScope(shield=True):
                await self.db.run(meta.replication_record_run, run)
        self.stats.runs += 1
        self.stats.images += copied
        self.stats.failed += failed
        return run

    async def _repositories(self, client: RegistryClient) -> list[tuple[str, str]]:
        """(local name, source name) of each repository the rule covers."""
        prefix = self.rule.source.prefix.strip("/")
        names = self.matcher.wildcard_free()
        if names is not None:
            return [(n, f"{prefix}/{n}" if prefix else n) for n in names]
        found: list[tuple[str, str]] = []
        for remote in await client.catalog():
            if prefix:
                if not remote.startswith(prefix + "/"):
                    continue
                local = remote[len(prefix) + 1 :]
            else:
                local = remote
            if self.matcher.repository_matches(local):
                found.append((local, remote))
        return found
