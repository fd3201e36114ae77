"""The composition root's wiring of event pruning, quotas and the repository management
endpoint (services.py builds the rest; docs/gc.md)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import anyio

from dockyard.config import Settings
from dockyard.core.common import EventMaker
from dockyard.core.manifests import ImmutableTags
from dockyard.core.prune import EventPruner
from dockyard.core.quotas import QuotaRule, Quotas
from dockyard.core.repositories import RepositoryManager
from dockyard.http.asgi import RegistryApp
from dockyard.http.handlers.repositories import Repositories, repository_routes
from dockyard.meta.records import StoreUnavailable
from dockyard.meta.store import Database

log = logging.getLogger("dockyard")


def build_quotas(settings: Settings, on_refused: Callable[[str], None] | None) -> Quotas:
    """The [[quotas]] tables as core's rules, in order (the first match applies)."""
    rules = [
        QuotaRule(f"quotas[{i}]", q.max_bytes, tuple(q.repositories), q.namespace or None)
        for i, q in enumerate(settings.quotas)
    ]
    return Quotas(rules, on_refused)


def mount_repositories(
    app: RegistryApp,
    settings: Settings,
    db: Database,
    instance: str,
    clock: Callable[[], float],
    immutable: ImmutableTags | None = None,
) -> Repositories:
    """Serve /v2/_dockyard/repositories/ from ``app``; the resource (scanning adds to it)."""
    manager = RepositoryManager(db, EventMaker(instance, clock), immutable=immutable)
    limits = settings.limits
    resource = Repositories(manager, app.authorizer, limits.default_page_size, limits.max_page_size)
    resource.guard = app.guard
    app.add_routes(repository_routes(resource), [])
    return resource


def build_pruner(
    settings: Settings, db: Database, instance: str, clock: Callable[[], float] = time.time
) -> EventPruner | None:
    """The scheduled pruner, or None with events.prune_interval 0."""
    e = settings.events
    if e.prune_interval <= 0:
        return None
    return EventPruner(
        db,
        instance=instance,
        keep_pulls_days=e.keep_pulls_days,
        keep_days=e.keep_days,
        batch_size=e.prune_batch_size,
        clock=clock,
    )


async def prune_events(pruner: EventPruner, interval: float) -> None:
    """Every worker tries each interval; the prune job lease lets one run at a time."""
    # Spread the workers' tries: the first takes the lease, the others find it taken.
    await anyio.sleep(interval * (0.1 + 0.4 * random.random()))
    while True:
        try:
            report = await pruner.run()
            if report is not None and report.deleted:
                log.info(
                    "pruned %d events (%d pull, %d other)%s",
                    report.deleted,
                    report.deleted_pulls,
                    report.deleted_others,
                    f"; held back by {report.held_by}" if report.held_back else "",
                )
        except StoreUnavailable as e:
            log.warning("pruning the event log failed: %s; will retry", e)
        except Exception:
            log.exception("pruning the event log failed; will retry")
        await anyio.sleep(interval)
