"""Storage usage gauges, read at scrape time with the inventory (exposition.py): the
registry's stored bytes (each blob once, plus manifests), and for each namespace quota
its limit and usage. Labels are the configured quotas only (bounded)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from dockyard.meta.store import Database
from dockyard.meta.usage import Usage


@dataclass(frozen=True, slots=True)
class QuotaGauge:
    label: str  # "quotas[1]"
    max_bytes: int
    namespace: str | None  # None: a per-repository quota (its limit only is shown)


class UsageCollector:
    def __init__(self, quotas: Sequence[QuotaGauge]) -> None:
        self.quotas = tuple(quotas)
        self.total: Usage | None = None
        self.used: dict[str, int] = {}

    async def refresh(self, db: Database) -> None:
        self.total = await db.run(db.meta.registry_usage)
        used = {}
        for q in self.quotas:
            if q.namespace is not None:
                used[q.label] = (await db.run(db.meta.namespace_usage, q.namespace)).bytes
        self.used = used

    def collect(self) -> Iterable[Metric]:
        if self.total is None:
            return
        yield GaugeMetricFamily(
            "dockyard_stored_bytes",
            "Bytes stored: each linked blob once, plus every manifest (docs/gc.md).",
            value=self.total.bytes,
        )
        if not self.quotas:
            return
        limit = GaugeMetricFamily(
            "dockyard_quota_limit_bytes",
            "The max_bytes of each [[quotas]] table.",
            labels=("quota",),
        )
        used = GaugeMetricFamily(
            "dockyard_quota_used_bytes",
            "Bytes a namespace quota's repositories hold together (each blob once).",
            labels=("quota",),
        )
        for q in self.quotas:
            limit.add_metric((q.label,), q.max_bytes)
            if q.label in self.used:
                used.add_metric((q.label,), self.used[q.label])
        yield limit
        yield used
