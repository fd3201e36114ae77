"""Scanning in each worker: the scanner named by ``[scanning] scanner``, the scan queue
(``scanning/queue.py``), the pull policies (``scanning/policy.py``) and the scans API
(``http/handlers/scans.py``), started with the other services and stopped with them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from dockyard.config import Settings
from dockyard.core.registry import Registry
from dockyard.events.hub import EventHub
from dockyard.http.asgi import RegistryApp
from dockyard.http.handlers.repositories import Repositories
from dockyard.http.handlers.scans import ScansResource, scan_routes
from dockyard.meta.store import Database
from dockyard.observability.metrics import RegistryMetrics
from dockyard.scanning.metrics import ScanMetrics
from dockyard.scanning.policy import PullPolicy
from dockyard.scanning.queue import (
    PullCredentials,
    RegistryAddress,
    ScanQueue,
    no_credentials,
)
from dockyard.scanning.scanner import Scanner
from dockyard.scanning.status import Scans

log = logging.getLogger("dockyard.scanning")


class ScanningService:
    def __init__(
        self, queue: ScanQueue | None, policy: PullPolicy | None, scanner: Scanner | None
    ) -> None:
        self.queue = queue
        self.policy = policy
        self.scanner = scanner

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as nursery:
            if self.policy is not None:
                await nursery.start(self.policy.run)
            if self.queue is not None:
                # The consumer's cursor exists before the server answers (webhook_init).
                await nursery.start(self.queue.run)
            task_status.started()

    async def aclose(self) -> None:
        if self.scanner is not None:
            with anyio.move_on_after(5) as scope:
                scope.shield = True
                await self.scanner.aclose()


def build_scanner(settings: Settings, credentials: PullCredentials | None = None) -> Scanner:
    """The scanner ``[scanning] scanner`` names (imported here: only where it is used).
    ``credentials``: the robots' pull credentials (auth on), which trivy also uses for a
    ``db_repository`` in this dockyard (never sent to another registry)."""
    s = settings.scanning
    if s.scanner == "trivy":
        cache = Path(s.cache_dir or Path(settings.storage.root) / "trivy-cache")
        from dockyard.scanning.trivy import TrivyScanner

        own = RegistryAddress.from_url(settings.base_url).host
        here = s.db_repository.split("/", 1)[0] == own
        return TrivyScanner(s, cache, db_credentials=credentials if here else None)
    from dockyard.scanning.harbor import HarborScanner

    return HarborScanner(s.harbor, timeout=s.timeout)


def mount_scanning(
    app: RegistryApp,
    settings: Settings,
    db: Database,
    hub: EventHub,
    registry: Registry,
    repositories: Repositories,
    instance: str,
    metrics: RegistryMetrics | None,
    clock: Callable[[], float] = time.time,
    scanner: Scanner | None = None,
    credentials: PullCredentials = no_credentials,
    local_path: Callable[[str], str | None] = lambda digest: None,
) -> ScanningService | None:
    """Build scanning from ``settings`` (``scanner``: one built by the caller instead);
    None when neither a scanner nor a pull policy is configured."""
    s = settings.scanning
    if scanner is None and s.scanner:
        scanner = build_scanner(settings, None if credentials is no_credentials else credentials)
    if scanner is None and not s.policies:
        # Still answered: a manifest's scan is "none", and asking for one is refused.
        mount_scans_api(app, repositories, Scans(db, None, None))
        return None
    policy = None
    if s.policies:
        policy = PullPolicy(db, hub, s.policies, open_while_scanning=settings.auth.mode == "none")
        registry.manifests.pull_check = policy.check
    queue = None
    if scanner is not None:
        queue = ScanQueue(
            db,
            hub,
            registry,
            scanner,
            s,
            RegistryAddress.from_url(settings.base_url),
            instance=instance,
            lease_seconds=settings.events.webhook_lease_seconds,
            credentials=credentials,
            local_path=local_path,
            metrics=ScanMetrics(metrics) if metrics is not None else None,
            clock=clock,
        )
        if policy is not None:
            queue.on_scanned.append(policy.forget)
    mount_scans_api(app, repositories, Scans(db, queue, policy))
    return ScanningService(queue, policy, scanner)


def mount_scans_api(app: RegistryApp, repositories: Repositories, scans: Scans) -> None:
    """GET/POST /v2/_dockyard/repositories/<name>/scans/<digest>, and the tags list's
    ``scan`` field."""
    resource = ScansResource(scans, app.authorizer)
    resource.guard = app.guard
    app.add_routes(scan_routes(resource), [])
    repositories.scan_summaries = scans.summaries
