"""One scrape of ``/metrics``: every worker's counted values, and what is stored.

In multiprocess mode the answering worker merges the files every worker wrote
(``MultiProcessCollector``): counters and histograms of workers that exited still count;
live gauges (``livesum``, ``liveall``) only cover running workers, so before each scrape
the files of workers that are gone are marked dead (``mark_process_dead``), whether they
stopped cleanly or were killed.

The images-stored figures are read from the metadata store (``MetadataStore.inventory``,
a handful of COUNTs in one snapshot, never a storage walk) by the worker answering the
scrape only, so they are never counted once per worker; the last reading is reused for
``inventory_cache`` seconds, so frequent scrapes cost the database nothing more.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

import anyio
import anyio.to_thread
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from dockyard.meta.records import InventoryRecord
from dockyard.meta.store import Database
from dockyard.observability.metrics import RegistryMetrics, multiprocess_dir
from dockyard.observability.usage import UsageCollector

log = logging.getLogger("dockyard.metrics")

# The classic text format every Prometheus version reads (Debian bookworm ships 2.42).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_LIVE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db")


class InventoryCollector:
    """The images-stored gauges, from the last reading of the store."""

    def __init__(self) -> None:
        self.reading: InventoryRecord | None = None

    def collect(self) -> Iterable[Metric]:
        inv = self.reading
        if inv is None:
            return

        def gauge(name: str, doc: str, value: int) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("dockyard_repositories", "Repositories stored.", inv.repositories)
        yield gauge("dockyard_tags", "Tags stored.", inv.tags)
        manifests = GaugeMetricFamily(
            "dockyard_manifests",
            "Manifests stored, by kind: image, index (image indexes and manifest lists), artifact.",
            labels=("kind",),
        )
        for kind, count in sorted(inv.manifests.items()):
            manifests.add_metric((kind,), count)
        yield manifests
        yield gauge("dockyard_blobs", "Blobs stored (each once, however many link it).", inv.blobs)
        yield gauge(
            "dockyard_blob_stored_bytes",
            "Bytes of the blobs stored, each blob once.",
            inv.blob_bytes,
        )
        yield gauge("dockyard_upload_sessions", "Upload sessions in progress.", inv.upload_sessions)
        yield gauge("dockyard_events_last_id", "Id of the newest event.", inv.last_event_id)
        backlog = GaugeMetricFamily(
            "dockyard_webhook_backlog_events",
            "Events in the log a webhook endpoint has not handled yet.",
            labels=("endpoint",),
        )
        for name, cursor in sorted(inv.webhook_cursors.items()):
            backlog.add_metric((name,), max(0, inv.last_event_id - cursor))
        yield backlog


class Exporter:
    """Renders the Prometheus text format for one scrape."""

    def __init__(self, metrics: RegistryMetrics, db: Database, inventory_cache: float) -> None:
        self.metrics = metrics
        self.db = db
        self.inventory_cache = inventory_cache
        self.inventory = InventoryCollector()
        self._read_at = float("-inf")
        self._lock = anyio.Lock()  # one store reading at a time; the others reuse it
        self._directory = multiprocess_dir()
        if self._directory is not None:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, self._directory)  # type: ignore[no-untyped-call]
        else:
            self.registry = metrics.registry
        self.registry.register(self.inventory)
        # Gauges read from the store with the inventory (usage.py), added by services.
        self.readers: list[UsageCollector] = []

    def add_reader(self, reader: UsageCollector) -> None:
        self.readers.append(reader)
        self.registry.register(reader)

    async def _refresh_inventory(self) -> None:
        async with self._lock:
            if time.monotonic() - self._read_at < self.inventory_cache:
                return
            try:
                self.inventory.reading = await self.db.run(self.db.meta.inventory)
                for reader in self.readers:
                    await reader.refresh(self.db)
            except Exception:  # the scrape still has the rest (and the last reading)
                log.exception("reading the inventory for metrics failed")
                return
            self._read_at = time.monotonic()

    def _forget_dead_workers(self) -> None:
        assert self._directory is not None
        pids = set()
        for path in Path(self._directory).glob("gauge_live*.db"):
            found = _LIVE_FILE.fullmatch(path.name)
            if found is not None:
                pids.add(int(found.group(1)))
        for pid in pids:
            if not _alive(pid):
                mark_process_dead(pid, self._directory)  # type: ignore[no-untyped-call]

    def _render(self) -> bytes:
        if self._directory is not None:
            self._forget_dead_workers()
        return generate_latest(self.registry)

    async def render(self) -> bytes:
        self.metrics.batch.flush()  # this worker's figures up to this request
        await self._refresh_inventory()
        # Reading every worker's files is file I/O: off the event loop.
        return await anyio.to_thread.run_sync(self._render)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_process() -> None:
    """This worker is stopping: drop its live gauges (its counters keep counting)."""
    directory = multiprocess_dir()
    if directory is not None:
        mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
