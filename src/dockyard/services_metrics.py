"""The composition root's metrics wiring (services.py builds the rest): the scrape
endpoint, its separate listener, and the sampler of the background parts' counters."""

from __future__ import annotations

from collections.abc import Callable

from dockyard.config import Settings
from dockyard.events.hub import EventHub
from dockyard.events.pulls import PullEventWriter
from dockyard.events.webhooks import WebhookDeliverer
from dockyard.http.asgi import RegistryApp
from dockyard.http.handlers.metrics import MetricsEndpoint
from dockyard.http.routing import metrics_routes
from dockyard.meta.store import Database
from dockyard.observability.exposition import CONTENT_TYPE, Exporter
from dockyard.observability.metrics import RegistryMetrics
from dockyard.observability.sampler import Sampler
from dockyard.observability.usage import QuotaGauge, UsageCollector


def mount_metrics(
    app: RegistryApp,
    settings: Settings,
    metrics: RegistryMetrics,
    db: Database,
    hub: EventHub,
    pulls: PullEventWriter,
    webhooks: Callable[[], WebhookDeliverer | None],
) -> Sampler:
    """Serve metrics.path (alone on its listener if metrics.listen is set); the sampler
    for the services to run."""
    exporter = Exporter(metrics, db, settings.metrics.inventory_cache)
    exporter.add_reader(
        UsageCollector(
            [
                QuotaGauge(f"quotas[{i}]", q.max_bytes, q.namespace or None)
                for i, q in enumerate(settings.quotas)
            ]
        )
    )
    path = settings.metrics.path
    app.add_routes(metrics_routes(MetricsEndpoint(exporter.render, CONTENT_TYPE), path), [path])
    if settings.metrics.listen:
        app.metrics_port = int(settings.metrics.listen.rpartition(":")[2])
        app.metrics_path = path
    return Sampler(
        metrics,
        hub,
        pulls,
        webhooks,
        settings.server.workers,
        [hook.name for hook in settings.webhooks],
    )
