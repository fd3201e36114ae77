"""Wiring of the pull-through cache (``cache/``): one ``RegistryClient`` per upstream per
process (closed at shutdown), the Registry's pull methods wrapped, containerd's ``ns=``
mapped by the router, and the cache's metrics (docs/monitoring.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from dockyard.cache import PullThroughCache, Upstream, UpstreamMap
from dockyard.config import Settings
from dockyard.core.registry import Registry
from dockyard.http.asgi import RegistryApp
from dockyard.observability.metrics import RegistryMetrics
from dockyard.upstream.client import RegistryClient


class CacheMetrics:
    """``CacheCounters`` as Prometheus counters, labelled by upstream name (configured,
    so bounded), kind and reason; increments go through the metrics' batch."""

    def __init__(self, metrics: RegistryMetrics) -> None:
        reg: Any = None if metrics.multiprocess else metrics.registry
        self.batch = metrics.batch
        self._children: dict[tuple[Any, ...], Any] = {}
        self.requests = Counter(
            "dockyard_cache_requests_total",
            "Pulls of cached repositories by upstream, kind (manifest, blob) and result:"
            " hit (served from the cache), fill (fetched from the upstream and stored),"
            " stale (the upstream failed; cached content served).",
            ("upstream", "kind", "result"),
            registry=reg,
        )
        self.errors = Counter(
            "dockyard_cache_upstream_errors_total",
            "Failed upstream requests by upstream and reason (not_found, unavailable,"
            " throttled, denied, rejected, corrupt).",
            ("upstream", "reason"),
            registry=reg,
        )
        self.bytes = Counter(
            "dockyard_cache_fetched_bytes_total",
            "Blob bytes read from each upstream.",
            ("upstream",),
            registry=reg,
        )

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def hit(self, upstream: str, kind: str) -> None:
        self.batch.count(self._child(self.requests, upstream, kind, "hit"))

    def fill(self, upstream: str, kind: str) -> None:
        self.batch.count(self._child(self.requests, upstream, kind, "fill"))

    def stale(self, upstream: str, kind: str) -> None:
        self.batch.count(self._child(self.requests, upstream, kind, "stale"))

    def error(self, upstream: str, reason: str) -> None:
        self.batch.count(self._child(self.errors, upstream, reason))

    def fetched(self, upstream: str, nbytes: int) -> None:
        self.batch.count(self._child(self.bytes, upstream), nbytes)


def mount_cache(
    app: RegistryApp,
    settings: Settings,
    registry: Registry,
    metrics: RegistryMetrics | None,
    instance: str,
    clock: Callable[[], float] = time.time,
) -> PullThroughCache | None:
    """Install the cache when ``[[upstreams]]`` are configured; None otherwise."""
    if not settings.upstreams:
        return None
    upstreams = UpstreamMap(
        [Upstream(up, RegistryClient.from_settings(up)) for up in settings.upstreams]
    )
    cache = PullThroughCache(
        upstreams,
        registry,
        instance=instance,
        gc_lease_seconds=settings.gc.lease_seconds,
        counters=CacheMetrics(metrics) if metrics is not None else None,
        clock=clock,
    )
    cache.install()
    app.router.namespaces = upstreams.namespaces
    return cache
