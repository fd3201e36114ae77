"""Garbage collection on the server's schedule (``[gc] interval`` > 0, docs/gc.md).

Every worker of every instance runs this loop; the collector's job lease lets one of them
collect at a time, and the others find it busy and wait for their next turn.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import anyio

from dockyard.config import Settings
from dockyard.core.common import EventMaker
from dockyard.core.gc import Collector
from dockyard.core.jobs import JobBusy, LeaseLost
from dockyard.meta.records import StoreError
from dockyard.meta.store import Database
from dockyard.observability.metrics import RegistryMetrics
from dockyard.storage.base import BlobStore, StorageError

log = logging.getLogger("dockyard.gc")


async def collect_on_schedule(
    settings: Settings,
    db: Database,
    storage: BlobStore,
    instance: str,
    metrics: RegistryMetrics | None,
    clock: Callable[[], float] = time.time,
) -> None:
    collector = Collector(
        db,
        storage,
        EventMaker(instance, clock),
        settings.gc,
        settings.retention.policies,
        instance=instance,
        clock=clock,
    )
    while True:
        # Spread out, so the workers do not all ask for the lease at the same moment.
        await anyio.sleep(settings.gc.interval * random.uniform(0.9, 1.1))
        await collect_once(collector, metrics, clock)


async def collect_once(
    collector: Collector, metrics: RegistryMetrics | None, clock: Callable[[], float]
) -> None:
    result = "failed"
    try:
        report = await collector.run()
    except JobBusy:
        result = "busy"
    except LeaseLost as e:
        result = "lease_lost"
        log.warning("garbage collection stopped: %s", e)
    except (StoreError, StorageError) as e:
        # The database or the store is unreachable: /readyz says so too; not a bug.
        log.warning("garbage collection failed: %s; will retry", e)
    except Exception:
        log.exception("garbage collection failed; will retry")
    else:
        result = "done"
        log.info(
            "garbage collection deleted %d manifests, %d links, %d blobs (%d bytes) in %.1f s",
            report.deleted_manifests,
            report.deleted_links,
            report.deleted_blobs,
            report.freed_bytes,
            report.duration_seconds,
        )
        if metrics is not None:
            metrics.gc_finished(
                result,
                report.deleted_manifests,
                report.deleted_links,
                report.deleted_blobs,
                report.freed_bytes,
                report.duration_seconds,
                clock(),
            )
        return
    if metrics is not None:
        metrics.gc_finished(result)
