"""The scan queue's metrics (docs/monitoring.md, "Scanning"), on the process's
``RegistryMetrics`` registry (or the multiprocess files)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from dockyard.observability.metrics import RegistryMetrics


class ScanMetrics:
    def __init__(self, metrics: RegistryMetrics) -> None:
        reg: Any = None if metrics.multiprocess else metrics.registry
        self.scans = Counter(
            "dockyard_scans_total",
            "Scans ended, by result: clean, vulnerable, unsupported, failed (tried again).",
            ("result",),
            registry=reg,
        )
        self.failures = Counter(
            "dockyard_scan_failures_total",
            "Scans that failed and will be tried again, by reason (scanning.scanner.REASONS).",
            ("reason",),
            registry=reg,
        )
        self.duration = Histogram(
            "dockyard_scan_duration_seconds",
            "Seconds one image's scan took (scanner and report push), failed or not.",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=reg,
        )
        # The whole deployment's queue, as the last worker to look saw it.
        self.queue_depth = Gauge(
            "dockyard_scan_queue_depth",
            "Manifests waiting for a scan (queued, retrying or running), by status.",
            ("status",),
            registry=reg,
            multiprocess_mode="mostrecent",
        )
