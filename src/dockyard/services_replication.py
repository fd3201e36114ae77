"""Replication in each worker: the push consumers (``replication/push.py``) and a
schedule per pull rule (``replication/pull.py``), started with the other services and
stopped with them (cancelled: leases released, remote clients closed)."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from dockyard.config import Settings
from dockyard.core.registry import Registry
from dockyard.events.hub import EventHub
from dockyard.meta.store import Database
from dockyard.observability.metrics import RegistryMetrics
from dockyard.replication.metrics import ReplicationMetrics
from dockyard.replication.pull import PullSchedule
from dockyard.replication.push import ReplicationPusher
from dockyard.storage.base import BlobStore


class ReplicationService:
    def __init__(self, pusher: ReplicationPusher, schedules: list[PullSchedule]) -> None:
        self.pusher = pusher
        self.schedules = schedules

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as nursery:
            # The consumers' cursors exist before the server answers (webhook_init).
            await nursery.start(self.pusher.run)
            for schedule in self.schedules:
                nursery.start_soon(schedule.run, name=f"replication {schedule.rule.name}")
            task_status.started()


def build_replication(
    settings: Settings,
    db: Database,
    hub: EventHub,
    registry: Registry,
    storage: BlobStore,
    instance: str,
    metrics: RegistryMetrics | None,
    clock: Callable[[], float] = time.time,
) -> ReplicationService | None:
    if not settings.replication:
        return None
    counters = ReplicationMetrics(metrics) if metrics is not None else None
    pusher = ReplicationPusher(
        db,
        hub,
        registry,
        storage,
        settings.replication,
        instance=instance,
        lease_seconds=settings.events.webhook_lease_seconds,
        metrics=counters,
    )
    schedules = [
        PullSchedule(db, registry, rule, instance=instance, metrics=counters, clock=clock)
        for rule in settings.replication
        if rule.mode == "pull"
    ]
    return ReplicationService(pusher, schedules)
