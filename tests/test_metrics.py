"""/metrics in process (one process, prometheus_client's plain mode): what requests,
the store, the storage driver and the background parts count, access control by the
``metrics`` action, and the settings. tests/e2e/test_prometheus.py checks the same
through a real Prometheus scraping several workers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dockyard.config import ConfigError, Settings
from dockyard.observability.metrics import RegistryMetrics
from dockyard.observability.storage import TimedStore
from dockyard.services import Services
from dockyard.storage.base import BlobNotFound, StorageError
from dockyard.storage.memory import MemoryStore
from tests.authfixtures import ROOT_RULE, auth_settings, basic
from tests.conftest import (
    OCI_INDEX,
    digest_of,
    fake_digest,
    index_manifest,
    make_client,
    make_settings,
    open_services,
    push_image,
    put_manifest,
    start_upload,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when absent (a labelled counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Every scrape reads the store afresh (inventory_cache 0)."""
    return make_settings(tmp_path / "data", DOCKYARD_METRICS_INVENTORY_CACHE="0")


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


async def test_requests_store_and_dedupe_are_counted(
    services: Services, client: httpx.AsyncClient
) -> None:
    before = await scrape(client)
    assert value(before, "dockyard_repositories") == 0
    image = await push_image(client, "team/app", "v1")
    await push_image(client, "team/app", "v2", layers=1)
    await put_manifest(client, "team/app", "multi", index_manifest([image.descriptor]), OCI_INDEX)
    # A blob HEAD that finds it, a mount that mounts, a 404.
    layer = digest_of(image.layers[0])
    assert (await client.head(f"/v2/team/app/blobs/{layer}")).status_code == 200
    r = await client.post(f"/v2/other/blobs/uploads/?mount={layer}&from=team/app")
    assert r.status_code == 201
    assert (await client.get(f"/v2/team/app/blobs/{fake_digest()}")).status_code == 404
    await start_upload(client, "team/app")  # a session left in progress
    s = await scrape(client)

    assert (
        value(s, "dockyard_http_requests_total", operation="manifest_put", outcome="success") == 3
    )
    # Every blob went up in one POST ?digest= (3 + 2 blobs, the config of each image).
    assert value(s, "dockyard_http_requests_total", operation="blob_upload", outcome="success") == 5
    assert value(s, "dockyard_http_requests_total", operation="mount", outcome="success") == 1
    assert (
        value(s, "dockyard_http_requests_total", operation="blob_download", outcome="client_error")
        == 1
    )
    assert value(s, "dockyard_http_errors_total", status="404", code="BLOB_UNKNOWN") == 1
    assert value(s, "dockyard_dedupe_hits_total", kind="blob_head") == 1
    assert value(s, "dockyard_dedupe_hits_total", kind="mount") == 1
    # Stored: what was pushed, each blob once (the mount links, it adds no blob).
    assert value(s, "dockyard_repositories") == 2
    assert value(s, "dockyard_tags") == 3
    assert value(s, "dockyard_manifests", kind="image") == 2
    assert value(s, "dockyard_manifests", kind="index") == 1
    assert value(s, "dockyard_manifests", kind="artifact") == 0
    assert value(s, "dockyard_blobs") == 5
    assert value(s, "dockyard_upload_sessions") == 1
    stored = sum(len(b) for b in image.layers) + len(image.config)
    assert value(s, "dockyard_blob_stored_bytes") > stored
    # Response times: the three manifest PUTs, in the 2xx bucket of their route.
    put = {"route": "manifests", "method": "PUT", "status_class": "2xx"}
    assert value(s, "dockyard_http_request_duration_seconds_count", **put) == 3
    assert value(s, "dockyard_http_request_duration_seconds_bucket", le="60.0", **put) == 3
    assert value(s, "dockyard_http_received_bytes_total", route="manifests") > 0
    assert value(s, "dockyard_http_sent_bytes_total", route="blobs") > 0  # the 404's document
    # The store and the driver were timed.
    assert value(s, "dockyard_database_call_duration_seconds_count", call="put_manifest") == 3
    assert (
        value(s, "dockyard_storage_operation_duration_seconds_count", operation="commit_upload")
        == 5
    )
    assert value(s, "dockyard_process_resident_memory_bytes") > 0
    assert value(s, "dockyard_workers_configured") == 1


async def test_scrapes_reuse_the_store_reading_for_inventory_cache_seconds(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_METRICS_INVENTORY_CACHE="3600")
    async with open_services(settings) as svc, make_client(svc) as client:
        assert value(await scrape(client), "dockyard_repositories") == 0
        await push_image(client, "a", "v1")
        # Counted requests are live; the images stored wait for the cache to expire.
        s = await scrape(client)
        assert value(s, "dockyard_repositories") == 0
        assert (
            value(s, "dockyard_http_requests_total", operation="manifest_put", outcome="success")
            == 1
        )


async def test_feed_and_pull_events_are_sampled(
    services: Services, client: httpx.AsyncClient
) -> None:
    from dockyard.events.schema import EventFilter

    sampler = services.sampler
    assert sampler is not None
    hub = services.hub
    with anyio.fail_after(5):
        async with (
            anyio.create_task_group() as nursery,
            hub.subscribe(EventFilter.parse({})) as sub,
        ):

            async def consume() -> None:
                async for _ in sub:
                    pass

            nursery.start_soon(consume)
            while hub.statistics().subscribers == 0:  # noqa: ASYNC110 (the hub has no event for it)
                await anyio.sleep(0.01)
            sampler.sample()
            assert value(await scrape(client), "dockyard_feed_subscribers") == 1
            nursery.cancel_scope.cancel()
    sampler.sample()
    s = await scrape(client)
    assert value(s, "dockyard_feed_subscribers") == 0
    assert value(s, "dockyard_pull_events_dropped_total", reason="buffer_full") == 0


async def test_storage_failures_are_counted_and_missing_blobs_are_not() -> None:
    class FailingStat(MemoryStore):
        async def stat(self, digest: str) -> int | None:
            raise StorageError("disk on fire")

    metrics = RegistryMetrics()
    store = TimedStore(FailingStat(), metrics)
    with pytest.raises(StorageError):
        await store.stat(fake_digest())
    with pytest.raises(BlobNotFound):
        async for _ in store.read(fake_digest()):
            pass
    metrics.batch.flush()
    s = parse(generate_latest(metrics.registry).decode())
    assert value(s, "dockyard_storage_errors_total", operation="stat") == 1
    assert value(s, "dockyard_storage_errors_total", operation="read") == 0
    assert value(s, "dockyard_storage_operation_duration_seconds_count", operation="read") == 1


def test_batched_observations_land_in_the_buckets_observe_would_use() -> None:
    batched, direct = RegistryMetrics(), RegistryMetrics()
    samples = [0.0, 0.0005, 0.001, 0.0011, 0.05, 2.5, 59.9, 60.0, 61.0, 3600.0]
    for seconds in samples:
        batched.batch.observe(batched.duration.labels("blobs", "GET", "2xx"), seconds)
        batched.batch.count(batched.errors.labels("404", "none"), 2)
        direct.duration.labels("blobs", "GET", "2xx").observe(seconds)
        direct.errors.labels("404", "none").inc(2)
    unflushed = parse(generate_latest(batched.registry).decode())
    assert value(unflushed, "dockyard_http_request_duration_seconds_count") == 0
    batched.batch.flush()
    batched.batch.flush()  # nothing left to add twice
    got = parse(generate_latest(batched.registry).decode())
    want = parse(generate_latest(direct.registry).decode())
    names = ("dockyard_http_request_duration_seconds", "dockyard_http_errors_total")
    relevant = {k: v for k, v in want.items() if k[0].startswith(names)}
    relevant = {k: v for k, v in relevant.items() if not k[0].endswith("_created")}
    assert relevant and all(got[k] == v for k, v in relevant.items())
    assert value(got, "dockyard_http_errors_total", status="404", code="none") == 20


# -- access control


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Services]:
    rules = [
        ROOT_RULE,
        {"users": ["alice"], "repositories": ["*"], "actions": ["metrics"]},
        {"users": ["bob"], "repositories": ["*"], "actions": ["pull", "admin"]},
    ]
    async with open_services(auth_settings(tmp_path / "data", rules)) as svc:
        yield svc


@pytest.mark.parametrize(
    ("user", "status"), [(None, 401), ("bob", 403), ("alice", 200), ("root", 200)]
)
async def test_metrics_need_the_metrics_action(
    guarded: Services, user: str | None, status: int
) -> None:
    async with make_client(guarded, basic(user) if user else None) as client:
        r = await client.get("/metrics")
        assert r.status_code == status, r.text
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Basic ")
        if status == 200:
            assert "dockyard_http_requests_total" in r.text
            # The metrics action is the only one alice has: nothing else opens.
        assert (await client.get("/v2/_catalog")).status_code in (
            (200,) if user in ("root", "bob") else (401, 403)
        )


async def test_metrics_off_serves_nothing_and_counts_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_METRICS_ENABLED="false")
    async with open_services(settings) as svc, make_client(svc) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert svc.sampler is None and svc.db.timer is None
        assert not isinstance(svc.storage, TimedStore)


async def test_metrics_path_is_configurable(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_METRICS_PATH="/internal/prom")
    async with open_services(settings) as svc, make_client(svc) as client:
        assert (await client.get("/metrics")).status_code == 404
        r = await client.get("/internal/prom")
        assert r.status_code == 200 and "dockyard_workers_configured" in r.text


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("PATH", "metrics"),
        ("PATH", "/v2/metrics"),
        ("PATH", "/healthz"),
        ("LISTEN", "9102"),
        ("LISTEN", "127.0.0.1:http"),
        ("LISTEN", "127.0.0.1:5000"),  # the main port
        ("INVENTORY_CACHE", "-1"),
    ],
)
def test_bad_metrics_settings_are_refused(tmp_path: Path, key: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=f"metrics.{key.lower()}"):
        make_settings(tmp_path, **{f"DOCKYARD_METRICS_{key}": bad})


# -- several processes (prometheus_client's multiprocess mode, as under dockyard serve)

WORKER = """
import os, sys
from dockyard.observability.metrics import RegistryMetrics
m = RegistryMetrics()
assert m.multiprocess
m.requests.labels("manifest_put", "success").inc(int(sys.argv[1]))
m.workers.set(1)
m.memory.set(1000)
"""

SCRAPER = """
import sys
from pathlib import Path
import anyio
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.meta.store import Database
from dockyard.observability.exposition import Exporter
from dockyard.observability.metrics import RegistryMetrics
meta = SQLiteMeta(Path(sys.argv[1]))
meta.migrate()
m = RegistryMetrics()
m.workers.set(1)
m.requests.labels("manifest_put", "success").inc(1)
print(anyio.run(Exporter(m, Database(meta, 1), 0).render).decode())
"""


def test_worker_processes_add_up_and_exited_ones_leave_only_their_counts(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for count in ("2", "3"):  # two workers that exit (their pids are gone)
        subprocess.run([sys.executable, "-c", WORKER, count], env=env, check=True)
    done = subprocess.run(
        [sys.executable, "-c", SCRAPER, str(tmp_path / "db.sqlite3")],
        env=env,
        check=True,
        capture_output=True,
    )
    s = parse(done.stdout.decode())
    # Counters of every process, the exited ones too; live gauges of the scraper alone.
    puts = value(s, "dockyard_http_requests_total", operation="manifest_put", outcome="success")
    assert puts == 2 + 3 + 1
    assert value(s, "dockyard_workers") == 1
    # liveall: one series per live process, the scraper's (never set: 0), not the 1000s.
    memory = [v for k, v in s.items() if k[0] == "dockyard_process_resident_memory_bytes"]
    assert memory == [0]
    assert value(s, "dockyard_repositories") == 0  # the inventory, read by the scraper
    # The exited workers' live gauge files were removed at the scrape.
    assert len(list(tmp_path.glob("gauge_livesum_*.db"))) == 1


async def test_database_failures_are_counted_and_conflicts_are_not(
    services: Services,
) -> None:
    from dockyard.meta.records import Conflict, StoreError

    def broken() -> None:
        raise StoreError("disk I/O error")

    def conflict() -> None:
        raise Conflict("taken")

    db = services.db
    for call in (broken, conflict):
        with pytest.raises(StoreError):
            await db.run(call)
        with pytest.raises(StoreError):
            await db.read(call)
    async with make_client(services) as client:
        s = await scrape(client)
    assert value(s, "dockyard_database_errors_total") == 2
    assert value(s, "dockyard_database_call_duration_seconds_count", call="conflict") == 2
