"""Copies what the background parts count themselves (the event hub, the pull-event
writer, webhook delivery) and this process's own figures into the metrics, every second.

Those parts keep plain counters (``statistics()``) and know nothing of Prometheus; reading
them from here keeps the lower layers free of it and their hot paths unchanged. Counters
get the growth since the last look, so they add up across workers.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus

from dockyard.events.hub import EventHub
from dockyard.events.pulls import PullEventWriter
from dockyard.events.webhooks import WebhookDeliverer
from dockyard.observability.exposition import forget_process
from dockyard.observability.metrics import RegistryMetrics

INTERVAL = 1.0  # seconds between samples


@dataclass
class _Seen:
    """The last values read, to add only the growth."""

    values: dict[tuple[str, str], float] = field(default_factory=dict)

    def growth(self, key: tuple[str, str], value: float) -> float:
        before = self.values.get(key, 0.0)
        self.values[key] = value
        return max(0.0, value - before)


class Sampler:
    def __init__(
        self,
        metrics: RegistryMetrics,
        hub: EventHub,
        pulls: PullEventWriter,
        webhooks: Callable[[], WebhookDeliverer | None],
        workers: int,
        webhook_names: list[str],
    ) -> None:
        self.metrics = metrics
        self.hub = hub
        self.pulls = pulls
        self.webhooks = webhooks
        self._seen = _Seen()
        m = metrics
        m.workers_configured.set(workers)
        m.start_time.set(_process_start_time())
        # Every label value the dashboard and alerts ask for exists from the start (at 0).
        for reason in ("buffer_full", "write_failed"):
            m.pulls_dropped.labels(reason)
        for kind in ("blob_head", "mount"):
            m.dedupe.labels(kind)
        for name in webhook_names:
            for counter in (m.webhook_deliveries, m.webhook_failed_attempts):
                counter.labels(name)
            m.webhook_failed_events.labels(name)

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.metrics.workers.set(1)
        task_status.started()
        while True:
            self.sample()
            await anyio.sleep(INTERVAL)

    def close(self) -> None:
        """The worker stops: hand over what is batched, drop its live gauges (its
        counters keep counting)."""
        self.metrics.batch.flush()
        forget_process()

    def sample(self) -> None:
        m, grow = self.metrics, self._seen.growth
        m.batch.flush()
        hub = self.hub.statistics()
        m.feed_subscribers.set(hub.subscribers)
        m.feed_direct_subscribers.set(hub.direct)
        m.feed_cutoffs.inc(grow(("hub", "lagged"), hub.lagged))
        m.feed_read_failures.inc(grow(("hub", "read_failures"), hub.read_failures))
        pulls = self.pulls.statistics()
        m.pulls_dropped.labels("buffer_full").inc(grow(("pulls", "dropped"), pulls.dropped))
        m.pulls_dropped.labels("write_failed").inc(grow(("pulls", "failed"), pulls.failed))
        deliverer = self.webhooks()
        if deliverer is not None:
            for name, s in deliverer.statistics().items():
                m.webhook_deliveries.labels(name).inc(grow(("delivered", name), s.delivered))
                m.webhook_failed_attempts.labels(name).inc(
                    grow(("failed_attempts", name), s.failed_attempts)
                )
                m.webhook_failed_events.labels(name).inc(
                    grow(("failed_events", name), s.failed_events)
                )
        usage = resource.getrusage(resource.RUSAGE_SELF)
        m.cpu.inc(grow(("process", "cpu"), usage.ru_utime + usage.ru_stime))
        m.memory.set(_resident_bytes())
        m.open_fds.set(_open_fds())


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak instead (kilobytes on Linux and BSD)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _process_start_time() -> float:
    """When this process started, seconds since the epoch (from /proc; else now)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - started_after_boot)
    except (OSError, ValueError, IndexError):
        return time.time()
