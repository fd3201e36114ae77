"""The registry's Prometheus metrics (docs/monitoring.md, "## Metrics") and the request
observer that counts every served request.

Counters, histograms and gauges are ``prometheus_client`` objects: with
``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is first imported (``dockyard
serve`` does it for its workers, ``multiprocess_dir``) every worker writes its values to
memory-mapped files there and whichever worker answers the scrape sums them
(``observability/exposition.py``); without it (a registry built in-process by tests) they
live in this process's own ``CollectorRegistry``.

Labels are bounded whatever is pushed: route classes, operations, methods, status codes
and OCI error codes, store call and storage operation names, configured webhook endpoint
names. Never a repository, digest, tag or user.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from dockyard.observability.batch import Batch
from dockyard.observability.record import RequestRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Response times: 1 ms to a minute.
REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Database calls and storage operations: inline point reads take tens of microseconds.
CALL_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# Garbage collections: a second to a few hours.
GC_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 10800.0)

METHODS = frozenset(("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"))

# (route class, method) -> operation; the uploads POST depends on the query (operation()).
_OPERATIONS = {
    ("manifests", "GET"): "manifest_get",
    ("manifests", "HEAD"): "manifest_head",
    ("manifests", "PUT"): "manifest_put",
    ("manifests", "DELETE"): "delete",
    ("blobs", "GET"): "blob_download",
    ("blobs", "HEAD"): "blob_head",
    ("blobs", "DELETE"): "delete",
    ("uploads", "PATCH"): "blob_upload_chunk",
    ("uploads", "PUT"): "blob_upload",
    ("uploads", "GET"): "blob_upload_status",
    ("uploads", "DELETE"): "blob_upload_cancel",
    ("tags", "GET"): "tags_list",
    ("catalog", "GET"): "catalog",
    ("referrers", "GET"): "referrers",
}


def operation(r: RequestRecord) -> str:
    """What the request did, for the request counter: a bounded name."""
    route = r.route
    if route == "uploads" and r.method == "POST":
        if "mount" in r.query:
            return "mount"
        # A whole blob in one POST (?digest=) is an upload; else a session starts.
        return "blob_upload" if "digest" in r.query else "blob_upload_start"
    found = _OPERATIONS.get((route, r.method))
    if found is not None:
        return found
    return route or "unmatched"


def outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "client_error" if status < 500 else "server_error"


def multiprocess_dir() -> str | None:
    """The directory worker processes share their values in, if this process writes its
    values there: prometheus_client decides once, when it is first imported."""
    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass(slots=True)
class _RequestChildren:
    """The series one kind of request adds to."""

    requests: Any
    duration: Any
    errors: Any | None
    received: Any
    sent: Any
    dedupe: Any | None


class RegistryMetrics:
    """Every metric dockyard counts itself (the images-stored figures are read at scrape
    time instead, observability/exposition.py). One per process; a test may build several,
    each with its own registry."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # Per-request and per-call increments, applied once a second (batch.py).
        self.batch = Batch()
        # In multiprocess mode values go to the shared files, collected from there; a
        # registry is still needed for the plain in-process mode.
        self.registry = CollectorRegistry(auto_describe=True)
        reg: Any = None if self.multiprocess else self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=reg)

        def gauge(name: str, doc: str, mode: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=reg, multiprocess_mode=mode)  # type: ignore[arg-type]

        self.requests = counter(
            "dockyard_http_requests_total",
            "Requests served, by operation and outcome (success, client_error, server_error).",
            ("operation", "outcome"),
        )
        self.duration = Histogram(
            "dockyard_http_request_duration_seconds",
            "Time from a request's arrival to its last byte sent.",
            ("route", "method", "status_class"),
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.errors = counter(
            "dockyard_http_errors_total",
            "Answers with a 4xx or 5xx status, by status and OCI error code (none: no code).",
            ("status", "code"),
        )
        self.received = counter(
            "dockyard_http_received_bytes_total", "Request body bytes read.", ("route",)
        )
        self.sent = counter(
            "dockyard_http_sent_bytes_total", "Response body bytes sent.", ("route",)
        )
        self.dedupe = counter(
            "dockyard_dedupe_hits_total",
            "Blobs a client did not have to upload: HEADs that found the blob (blob_head),"
            " cross-repository mounts that succeeded (mount).",
            ("kind",),
        )
        self.db_calls = Histogram(
            "dockyard_database_call_duration_seconds",
            "Metadata store calls, by store method.",
            ("call",),
            buckets=CALL_BUCKETS,
            registry=reg,
        )
        self.db_errors = counter(
            "dockyard_database_errors_total",
            "Metadata store calls that failed (a conflict is an answer, not a failure).",
        )
        self.storage_calls = Histogram(
            "dockyard_storage_operation_duration_seconds",
            "Storage driver operations, by operation (reads: the whole stream).",
            ("operation",),
            buckets=CALL_BUCKETS,
            registry=reg,
        )
        self.storage_errors = counter(
            "dockyard_storage_errors_total",
            "Storage driver operations that failed (a missing blob or upload is not a failure).",
            ("operation",),
        )
        self.feed_subscribers = gauge(
            "dockyard_feed_subscribers", "Event-feed subscribers connected.", "livesum"
        )
        self.feed_direct_subscribers = gauge(
            "dockyard_feed_direct_subscribers",
            "Event-feed subscribers whose frames are written straight to their socket.",
            "livesum",
        )
        self.feed_cutoffs = counter(
            "dockyard_feed_cutoffs_total", "Feed subscribers cut off for falling behind."
        )
        self.feed_read_failures = counter(
            "dockyard_feed_read_failures_total", "Reads of the event log by the feed that failed."
        )
        self.webhook_deliveries = counter(
            "dockyard_webhook_deliveries_total", "Webhook events delivered (2xx).", ("endpoint",)
        )
        self.webhook_failed_attempts = counter(
            "dockyard_webhook_failed_attempts_total",
            "Webhook delivery attempts that failed (retried).",
            ("endpoint",),
        )
        self.webhook_failed_events = counter(
            "dockyard_webhook_failed_events_total",
            "Webhook events given up on after max_attempts.",
            ("endpoint",),
        )
        self.pulls_dropped = counter(
            "dockyard_pull_events_dropped_total",
            "Pull events lost: the buffer was full (buffer_full) or their write failed"
            " (write_failed).",
            ("reason",),
        )
        self.retention_deleted = counter(
            "dockyard_retention_deleted_tags_total",
            "Tags deleted by the server's scheduled retention runs.",
        )
        self.retention_last_run = gauge(
            "dockyard_retention_last_run_timestamp_seconds",
            "When the last scheduled retention run finished, seconds since the epoch.",
            "max",
        )
        self.cpu = counter(
            "dockyard_process_cpu_seconds_total", "CPU time of the worker processes, all summed."
        )
        self.memory = gauge(
            "dockyard_process_resident_memory_bytes",
            "Resident memory of each live worker (label pid).",
            "liveall",
        )
        self.open_fds = gauge(
            "dockyard_process_open_fds", "Open file descriptors of each live worker.", "liveall"
        )
        self.start_time = gauge(
            "dockyard_process_start_time_seconds",
            "Start time of each live worker, seconds since the epoch.",
            "liveall",
        )
        self.quota_refusals = counter(
            "dockyard_quota_refusals_total",
            "Pushes refused for a quota, by quota ([[quotas]] table index, or namespace:<name>).",
            ("quota",),
        )
        self.workers = gauge("dockyard_workers", "Worker processes running.", "livesum")
        self.workers_configured = gauge(
            "dockyard_workers_configured", "Worker processes configured (server.workers).", "max"
        )
        # Garbage collections the server runs on its schedule ([gc] interval).
        self.gc_runs = counter(
            "dockyard_gc_runs_total",
            "Scheduled garbage collections, by result: done, busy (another collector held"
            " the lease), lease_lost, failed.",
            ("result",),
        )
        self.gc_deleted = counter(
            "dockyard_gc_deleted_total",
            "What garbage collection deleted, by kind: manifest, link, blob.",
            ("kind",),
        )
        self.gc_freed = counter(
            "dockyard_gc_freed_bytes_total", "Blob bytes garbage collection deleted."
        )
        self.gc_last_run = gauge(
            "dockyard_gc_last_run_timestamp_seconds",
            "When the last garbage collection that ran finished, seconds since the epoch.",
            "max",
        )
        self.gc_duration = Histogram(
            "dockyard_gc_duration_seconds",
            "Time a garbage collection took.",
            buckets=GC_BUCKETS,
            registry=reg,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._by_request: dict[tuple[Any, ...], _RequestChildren] = {}
        # Series the alerts divide by or compare exist from the start, at 0.
        for op in (*_OPERATIONS.values(), "mount", "blob_upload_start"):
            for result in ("success", "client_error", "server_error"):
                self._child(self.requests, op, result)

    def gc_finished(
        self, result: str, manifests: int = 0, links: int = 0, blobs: int = 0, freed: int = 0,
        seconds: float | None = None, finished: float = 0.0,
    ) -> None:  # fmt: skip
        """Count one scheduled collection (``services_gc.py``); what it deleted if it ran."""
        self.gc_runs.labels(result).inc()
        for kind, count in (("manifest", manifests), ("link", links), ("blob", blobs)):
            if count:
                self.gc_deleted.labels(kind).inc(count)
        if freed:
            self.gc_freed.inc(freed)
        if seconds is not None:
            self.gc_duration.observe(seconds)
            self.gc_last_run.set(finished)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: labels() costs more than the increment."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _children_for(self, r: RequestRecord) -> _RequestChildren:
        status = r.status
        route = r.route or "none"
        child = self._child
        op = operation(r)
        method = r.method if r.method in METHODS else "OTHER"
        dedupe = None
        if status == 200 and op == "blob_head":
            dedupe = child(self.dedupe, "blob_head")
        elif status == 201 and op == "mount":
            dedupe = child(self.dedupe, "mount")
        return _RequestChildren(
            child(self.requests, op, outcome(status)),
            child(self.duration, route, method, f"{status // 100}xx"),
            child(self.errors, str(status), r.error_code or "none") if status >= 400 else None,
            child(self.received, route),
            child(self.sent, route),
            dedupe,
        )

    def observe(self, r: RequestRecord) -> None:
        """The request observer (RegistryApp.observers): one dict lookup finds every
        series the request adds to (a bounded set of keys); the batch applies them."""
        method = r.method if r.method in METHODS else "OTHER"  # keys stay bounded too
        key = (r.route, method, r.status, r.error_code, "mount" in r.query, "digest" in r.query)
        c = self._by_request.get(key)
        if c is None:
            c = self._by_request[key] = self._children_for(r)
        batch = self.batch
        batch.count(c.requests)
        batch.observe(c.duration, r.duration)
        if c.errors is not None:
            batch.count(c.errors)
        if r.bytes_in:
            batch.count(c.received, r.bytes_in)
        if r.bytes_out:
            batch.count(c.sent, r.bytes_out)
        if c.dedupe is not None:
            batch.count(c.dedupe)

    def count_quota_refusal(self, quota: str) -> None:
        self.batch.count(self._child(self.quota_refusals, quota))

    def database_timer(self) -> Callable[[str, float, bool], None]:
        """The Database's call timer (meta/store.py)."""
        children: dict[str, Any] = {}
        histogram, errors, batch = self.db_calls, self.db_errors, self.batch

        def timed(call: str, seconds: float, failed: bool) -> None:
            c = children.get(call)
            if c is None:
                c = children[call] = histogram.labels(call)
            batch.observe(c, seconds)
            if failed:
                batch.count(errors)

        return timed
