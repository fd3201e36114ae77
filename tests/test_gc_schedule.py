"""``[gc] interval``: the server collects by itself, one worker at a time, and counts it
in its metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio

from dockyard.config import Settings
from dockyard.core.registry import RequestInfo
from dockyard.observability.metrics import RegistryMetrics
from dockyard.services import Services
from tests.conftest import chunks, digest_of, make_settings, open_services


def sample(metrics: RegistryMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def every_second(tmp_path: Path) -> Settings:
    """A server that collects every second, with no grace period."""
    return make_settings(tmp_path / "data", DOCKYARD_GC_INTERVAL="1", DOCKYARD_GC_GRACE_PERIOD="0")


async def loose_blob(svc: Services, data: bytes) -> tuple[str, RegistryMetrics]:
    """Push a blob no manifest references; its digest, and the server's metrics."""
    d = digest_of(data)
    await svc.registry.put_blob(RequestInfo(), "app", d, chunks(data), len(data))
    assert svc.metrics is not None
    return d, svc.metrics


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        for _ in range(int(timeout / 0.05) + 1):
            if condition():
                return
            await anyio.sleep(0.05)


async def test_the_server_collects_on_its_schedule(tmp_path: Path) -> None:
    async with open_services(every_second(tmp_path)) as svc:
        data = b"collected by the server"
        d, metrics = await loose_blob(svc, data)
        await until(lambda: sample(metrics, "dockyard_gc_runs_total", result="done") >= 1)
        assert await svc.storage.stat(d) is None
        assert await svc.db.run(svc.meta.blob_size, d) is None
        assert sample(metrics, "dockyard_gc_deleted_total", kind="blob") == 1
        assert sample(metrics, "dockyard_gc_deleted_total", kind="link") == 1
        assert sample(metrics, "dockyard_gc_freed_bytes_total") == len(data)
        assert sample(metrics, "dockyard_gc_last_run_timestamp_seconds") > 0
        assert sample(metrics, "dockyard_gc_duration_seconds_count") >= 1


async def test_a_busy_collector_is_counted_and_nothing_deleted(tmp_path: Path) -> None:
    async with open_services(every_second(tmp_path)) as svc:
        assert await svc.db.run(svc.meta.job_acquire, "gc", "elsewhere/1", 600)
        data = b"kept while another collector holds the lease"
        d, metrics = await loose_blob(svc, data)
        await until(lambda: sample(metrics, "dockyard_gc_runs_total", result="busy") >= 1)
        assert await svc.storage.stat(d) == len(data)
        assert sample(metrics, "dockyard_gc_runs_total", result="done") == 0


async def test_no_schedule_by_default(tmp_path: Path) -> None:
    async with open_services(make_settings(tmp_path / "data")) as svc:
        assert svc.settings.gc.interval == 0
        data = b"nobody collects"
        d, metrics = await loose_blob(svc, data)
        await anyio.sleep(1.5)
        assert sample(metrics, "dockyard_gc_runs_total", result="busy") == 0
        assert await svc.storage.stat(d) == len(data)
