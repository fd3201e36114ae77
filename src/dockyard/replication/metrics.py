"""Replication's metrics (docs/monitoring.md, "Replication"), on the process's
``RegistryMetrics`` registry (or the multiprocess files). Labels: the rule's name and the
target's (push) or source's (pull) url.

A push target's backlog is not counted here: its consumer is a row of the webhook cursors,
so the scrape-time ``dockyard_webhook_backlog_events{endpoint="replication:<rule>:<url>"}``
(observability/exposition.py) shows it, read from the database whichever worker holds the
lease."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from dockyard.observability.metrics import RegistryMetrics
from dockyard.replication.copy import CopyReport

LABELS = ("rule", "remote")


class ReplicationMetrics:
    def __init__(self, metrics: RegistryMetrics) -> None:
        reg: Any = None if metrics.multiprocess else metrics.registry
        self.images = Counter(
            "dockyard_replication_images_total",
            "Images copied (a tag or a referrer).",
            LABELS,
            registry=reg,
        )
        self.manifests = Counter(
            "dockyard_replication_manifests_total",
            "Manifests written to the destination (children and referrers included).",
            LABELS,
            registry=reg,
        )
        self.blobs = Counter(
            "dockyard_replication_blobs_total",
            "Blobs the destination lacked, by how they got there (upload, mount).",
            (*LABELS, "how"),
            registry=reg,
        )
        self.bytes = Counter(
            "dockyard_replication_bytes_total", "Blob bytes uploaded.", LABELS, registry=reg
        )
        self.failures = Counter(
            "dockyard_replication_failures_total",
            "Images given up on after max_attempts (push: the event is recorded as failed).",
            LABELS,
            registry=reg,
        )
        self.retries = Counter(
            "dockyard_replication_retries_total",
            "Copies retried because the remote (or this database or blob store) was unavailable.",
            LABELS,
            registry=reg,
        )

    def copied(self, rule: str, remote: str, report: CopyReport) -> None:
        self.images.labels(rule, remote).inc()
        self.manifests.labels(rule, remote).inc(report.manifests)
        self.blobs.labels(rule, remote, "upload").inc(report.blobs)
        self.blobs.labels(rule, remote, "mount").inc(report.mounted)
        self.bytes.labels(rule, remote).inc(report.bytes)
