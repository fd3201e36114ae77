"""Replication end to end, between real registries: dockyard A (two workers) replicates
pushes to dockyard B (token auth; the target logs in as root) and to Debian's
Distribution 2.8 (D), and pulls from D on a one-second interval.

A's configuration is docs/proxy.md's "A two-site setup" example (one-way), plus the rules
for D. What is checked: an index with two platforms and a signature-like referrer arrive
with the same digests and the referrer is listed by B's referrers API; B stopped, pushes
to A, B started: every image arrives; A killed (SIGKILL) while copying many images and
started again: every image arrives; on D, a second repository with the same layers gets
them by cross-repository mount (a POST ?mount= in D's access log, no upload); an image
pushed to D appears in A; ``dockyard replication status --json`` tells it all.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dockyard.upstream.client import RegistryClient
from tests.distribution import Distribution
from tests.e2e.conftest import server_events, serving
from tests.e2e.test_auth_e2e import PASSWORDS, write_auth_config
from tests.imagegen import Blob, Image, Index, build_image, build_index, make_layer
from tests.serverproc import DockyardServer, free_port

SIGNATURE_TYPE = "application/vnd.example.signature.v1"
EMPTY_CONFIG = Blob("application/vnd.oci.empty.v1+json", b"{}")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# Seconds a replicated image may take to appear (the test machine is shared and slow).
ARRIVAL = 60.0


def replication_toml(b: DockyardServer, d: Distribution) -> str:
    """docs/proxy.md's two-site example (A -> B) with the test's ports and short backoffs,
    a rule whose target refuses it (alice may push only team/*), and A's rules for
    Distribution."""
    return f"""
[[replication]]
name = "to-site-b"
mode = "push"
repositories = ["apps/*"]
tags = ['v.*', 'latest']
referrers = true
backoff_initial = 0.2
backoff_max = 1.0

[[replication.targets]]
url = "{b.url}"
username = "root"
password = "{PASSWORDS["root"]}"
timeout = 10

[[replication]]
name = "to-site-b-as-alice"
mode = "push"
repositories = ["denied/*"]
max_attempts = 2
backoff_initial = 0.1
backoff_max = 0.2

[[replication.targets]]
url = "{b.url}"
username = "alice"
password = "{PASSWORDS["alice"]}"

[[replication]]
name = "to-distribution"
mode = "push"
repositories = ["mount/*"]
backoff_initial = 0.2
backoff_max = 1.0

[[replication.targets]]
url = "{d.url}"

[[replication]]
name = "from-distribution"
mode = "pull"
repositories = ["pulled/*"]
interval = 1

[replication.source]
url = "{d.url}"
"""


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("repl-distribution")) as d:
        yield d


@pytest.fixture(scope="module")
def site_a_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def site_b(tmp_path_factory: pytest.TempPathFactory, site_a_port: int) -> Iterator[DockyardServer]:
    """Token auth; replicates apps/* back to A (both ways: A's copies are offered back and
    must stop there)."""
    root = tmp_path_factory.mktemp("site-b")
    config = write_auth_config(root, "token")
    with config.open("a") as f:
        f.write(f'\n[storage]\nroot = "{root / "data"}"\n')
        f.write(back_to_a_toml(f"http://127.0.0.1:{site_a_port}"))
    yield from serving(DockyardServer(root / "data", env={"DOCKYARD_CONFIG": str(config)}))


def back_to_a_toml(url: str) -> str:
    """The same rule on site-b, with site-a as its target (docs/proxy.md, both ways)."""
    return f"""
[[replication]]
name = "to-site-a"
mode = "push"
repositories = ["apps/*"]
tags = ['v.*', 'latest']
backoff_initial = 0.2
backoff_max = 1.0

[[replication.targets]]
url = "{url}"
"""


@pytest.fixture(scope="module")
def site_a_config(
    tmp_path_factory: pytest.TempPathFactory, site_b: DockyardServer, distribution: Distribution
) -> Path:
    root = tmp_path_factory.mktemp("site-a")
    config = root / "dockyard.toml"
    config.write_text(
        f'[storage]\nroot = "{root / "data"}"\n' + replication_toml(site_b, distribution)
    )
    return config


@pytest.fixture(scope="module")
def site_a(site_a_config: Path, site_a_port: int) -> Iterator[DockyardServer]:
    env = {"DOCKYARD_CONFIG": str(site_a_config)}
    yield from serving(
        DockyardServer(site_a_config.parent / "data", workers=2, env=env, port=site_a_port)
    )


def a_client(a: DockyardServer) -> RegistryClient:
    return RegistryClient(a.url)


def b_client(b: DockyardServer) -> RegistryClient:
    return RegistryClient(b.url, username="root", password=PASSWORDS["root"])


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def push_blob(client: RegistryClient, repository: str, blob: Blob) -> None:
    if await client.head_blob(repository, blob.digest) is None:
        await client.push_blob(
            repository, blob.digest, blob.size, functools.partial(_chunks, blob.data)
        )


async def push_image(client: RegistryClient, repository: str, image: Image, tag: str | None) -> str:
    for blob in (image.config, *(layer.blob for layer in image.layers)):
        await push_blob(client, repository, blob)
    return await client.put_manifest(
        repository, tag or image.digest, image.manifest.data, image.manifest.media_type
    )


async def push_index(client: RegistryClient, repository: str, index: Index, tag: str) -> str:
    for image in index.images:
        await push_image(client, repository, image, None)
    return await client.put_manifest(
        repository, tag, index.manifest.data, index.manifest.media_type
    )


def signature(subject: Blob, seed: int) -> tuple[Blob, Blob]:
    """A signature-like artifact (its layer and manifest) whose subject is ``subject``."""
    layer = Blob("application/vnd.example.signature.payload", f"signed {seed}".encode())
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_TYPE,
        "config": EMPTY_CONFIG.descriptor(),
        "layers": [layer.descriptor()],
        "subject": subject.descriptor(),
    }
    return layer, Blob(OCI_MANIFEST, json.dumps(doc, separators=(",", ":")).encode())


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = ARRIVAL
) -> None:
    deadline = trio.current_time() + timeout
    while not await check():
        if trio.current_time() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await trio.sleep(0.2)


async def has_tag(client: RegistryClient, repository: str, tag: str, digest: str) -> bool:
    found = await client.head_manifest(repository, tag)
    return found is not None and found.digest == digest


def small_image(seed: int, arch: str = "amd64") -> Image:
    return build_image([make_layer(seed)], architecture=arch)


async def test_an_index_and_its_referrer_reach_site_b(
    site_a: DockyardServer, site_b: DockyardServer
) -> None:
    index = build_index([small_image(101, "amd64"), small_image(102, "arm64")])
    sig_layer, sig = signature(index.manifest, 1)
    async with a_client(site_a) as a, b_client(site_b) as b:
        digest = await push_index(a, "apps/web", index, "v1")
        assert digest == index.digest
        await push_blob(a, "apps/web", EMPTY_CONFIG)
        await push_blob(a, "apps/web", sig_layer)
        await a.put_manifest("apps/web", sig.digest, sig.data, OCI_MANIFEST)
        # A tag the rule's regexes do not match stays on A.
        dev = small_image(103)
        await push_image(a, "apps/web", dev, "dev-1")
        # Signed too, but not replicated: its referrer stays on A as well.
        dev_sig_layer, dev_sig = signature(dev.manifest, 2)
        await push_blob(a, "apps/web", dev_sig_layer)
        await a.put_manifest("apps/web", dev_sig.digest, dev_sig.data, OCI_MANIFEST)

        await eventually(lambda: has_tag(b, "apps/web", "v1", index.digest), "apps/web:v1 on B")
        for image in index.images:
            got = await b.get_manifest("apps/web", image.digest)
            assert got.payload == image.manifest.data
            for blob_digest in image.blob_digests:
                assert await b.head_blob("apps/web", blob_digest) is not None

        async def referrer_listed() -> bool:
            found = await b.referrers("apps/web", index.digest)
            return [d["digest"] for d in found] == [sig.digest]

        await eventually(referrer_listed, "the signature in B's referrers API")
        found = await b.referrers("apps/web", index.digest)
        assert found[0]["artifactType"] == SIGNATURE_TYPE
        assert (await b.get_manifest("apps/web", sig.digest)).payload == sig.data
        assert await b.head_manifest("apps/web", "dev-1") is None

        async def a_caught_up() -> bool:
            target = _target(await status_of(site_a), "to-site-b")
            return bool(target["backlog_events"] == 0)

        await eventually(a_caught_up, "site-a's consumer to handle every event")
        assert await b.head_manifest("apps/web", dev_sig.digest) is None

    # B offers A's copies back to A (its to-site-a rule): they stop there, nothing is
    # written on A again. B's consumer caught up, A holds only the test's own pushes.
    async def b_caught_up() -> bool:
        target = _target(await status_of(site_b), "to-site-a")
        return target["backlog_events"] == 0 and target["last_copied"] is not None

    await eventually(b_caught_up, "site-b's consumer to catch up")
    pushed = [
        str(e.digest)
        for e in await trio.to_thread.run_sync(server_events, site_a)
        if e.action == "push"
        and e.repository == "apps/web"
        and e.body["target"]["kind"] == "manifest"
    ]
    assert sorted(pushed) == sorted(
        [*(i.digest for i in index.images), index.digest, sig.digest, dev.digest, dev_sig.digest]
    )
    assert _target(await status_of(site_b), "to-site-a")["failed"] == 0


async def test_an_outage_of_site_b_delays_but_loses_nothing(
    site_a: DockyardServer, site_b: DockyardServer
) -> None:
    """Also: an image deleted on A before it could be copied is recorded as failed at once
    (ContentGone) and the images after it go."""
    images = [small_image(200 + i) for i in range(3)]
    gone = small_image(210)
    site_b.stop()
    try:
        async with a_client(site_a) as a:
            await push_image(a, "apps/outage-gone", gone, "v1")
            await a.delete_manifest("apps/outage-gone", gone.digest)
            for i, image in enumerate(images):
                await push_image(a, f"apps/outage-{i}", image, "v1")
        await trio.sleep(2)  # the consumer retries against a closed port meanwhile
    finally:
        site_b.start()
    async with b_client(site_b) as b:
        for i, image in enumerate(images):
            await eventually(
                functools.partial(has_tag, b, f"apps/outage-{i}", "v1", image.digest),
                f"apps/outage-{i}:v1 on B after the outage",
            )
        assert await b.head_manifest("apps/outage-gone", "v1") is None
    target = _target(await status_of(site_a), "to-site-b")
    assert target["failed"] == 1 and "ContentGone" in target["last_error"], target


async def test_site_a_killed_mid_way_resumes(
    site_a: DockyardServer, site_b: DockyardServer
) -> None:
    images = [build_image([make_layer(300 + i, files=4, file_size=100_000)]) for i in range(12)]
    # B down while they are pushed, so that the copies start together when it is back.
    site_b.stop()
    try:
        async with a_client(site_a) as a:
            for i, image in enumerate(images):
                await push_image(a, f"apps/many-{i}", image, "v1")
    finally:
        site_b.start()
    async with b_client(site_b) as b:

        async def arrived() -> list[bool]:
            return [
                await has_tag(b, f"apps/many-{i}", "v1", image.digest)
                for i, image in enumerate(images)
            ]

        # The first image is on B, the rest on their way: a crash now, of every worker.
        deadline = trio.current_time() + ARRIVAL
        while not await has_tag(b, "apps/many-0", "v1", images[0].digest):
            assert trio.current_time() < deadline, "apps/many-0 never arrived"
            await trio.sleep(0.02)
        site_a.kill()
        assert not all(await arrived()), "every image was copied before the crash"
        site_a.start()
        for i, image in enumerate(images):
            await eventually(
                functools.partial(has_tag, b, f"apps/many-{i}", "v1", image.digest),
                f"apps/many-{i}:v1 on B after A restarted",
            )


async def test_distribution_target_mounts_shared_layers(
    site_a: DockyardServer, distribution: Distribution
) -> None:
    layer = make_layer(400, files=3, file_size=100_000)
    first = build_image([layer], architecture="amd64")
    second = build_image([layer], architecture="arm64")  # same layer, another config
    async with a_client(site_a) as a, RegistryClient(distribution.url) as d:
        await push_image(a, "mount/one", first, "v1")
        await eventually(lambda: has_tag(d, "mount/one", "v1", first.digest), "mount/one on D")
        await push_image(a, "mount/two", second, "v1")
        await eventually(lambda: has_tag(d, "mount/two", "v1", second.digest), "mount/two on D")
    requests = distribution.requests()
    encoded = layer.blob.digest.replace(":", "%3A")  # as the access log shows the query
    mounts = [
        (p, s) for m, p, s in requests if m == "POST" and "/v2/mount/two/" in p and "mount=" in p
    ]
    assert any(encoded in p and s == 201 for p, s in mounts), requests[-20:]
    # The layer was not uploaded to mount/two: its only upload PUT was for mount/one.
    puts = [p for m, p, _ in requests if m == "PUT" and "/blobs/uploads/" in p]
    assert not any("/v2/mount/two/" in p and encoded in p for p in puts)
    assert any("/v2/mount/one/" in p and encoded in p for p in puts)
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{site_a.url}/metrics")).text
    assert re.search(r'dockyard_replication_blobs_total\{how="mount",[^}]*\} [1-9]', text)


async def test_pull_mode_copies_from_distribution(
    site_a: DockyardServer, distribution: Distribution
) -> None:
    image = small_image(500)
    async with RegistryClient(distribution.url) as d, a_client(site_a) as a:
        await push_image(d, "pulled/app", image, "v1")
        await push_image(d, "other/app", small_image(501), "v1")  # not the rule's
        await eventually(lambda: has_tag(a, "pulled/app", "v1", image.digest), "pulled/app on A")
        assert (await a.get_manifest("pulled/app", "v1")).payload == image.manifest.data
        assert await a.head_manifest("other/app", "v1") is None


async def test_a_refused_image_is_recorded_as_failed_and_skipped(
    site_a: DockyardServer, site_b: DockyardServer
) -> None:
    """Denied is not an outage: max_attempts attempts, then the event is recorded as
    failed and the cursor moves on to the next image, which arrives."""
    refused, next_one = small_image(600), small_image(601)
    async with a_client(site_a) as a, b_client(site_b) as b:
        await push_image(a, "denied/app", refused, "v1")
        await push_image(a, "apps/after-denied", next_one, "v1")
        await eventually(
            lambda: has_tag(b, "apps/after-denied", "v1", next_one.digest), "the next image"
        )
        assert await b.head_manifest("denied/app", "v1") is None
    status = await status_of(site_a)
    deadline = time.monotonic() + ARRIVAL
    while _target(status, "to-site-b-as-alice")["failed"] < 1 and time.monotonic() < deadline:
        await trio.sleep(0.5)
        status = await status_of(site_a)
    target = _target(status, "to-site-b-as-alice")
    assert target["failed"] == 1
    assert "Denied" in target["last_error"]
    assert target["cursor"] >= len(target["failed_events"])
    # Copied again on request: refused again, so still one failed event.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    again = await trio.run_process(
        [
            sys.executable,
            "-m",
            "dockyard.cli",
            "replication",
            "redeliver",
            "--config",
            site_a.env["DOCKYARD_CONFIG"],
            "--rule",
            "to-site-b-as-alice",
            "--all",
        ],
        env=env,
        capture_stdout=True,
    )
    assert again.stdout.startswith(b"marked 1 failed event"), again.stdout


def _target(status: dict[str, Any], rule: str) -> dict[str, Any]:
    target: dict[str, Any] = next(r for r in status["rules"] if r["name"] == rule)["targets"][0]
    return target


async def status_of(site: DockyardServer) -> dict[str, Any]:
    return await trio.to_thread.run_sync(replication_status, site.env["DOCKYARD_CONFIG"])


def replication_status(config: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dockyard.cli",
            "replication",
            "status",
            "--config",
            config,
            "--json",
        ],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


async def test_status_json(site_a: DockyardServer, site_b: DockyardServer) -> None:
    image = small_image(700)
    async with a_client(site_a) as a, b_client(site_b) as b:
        await push_image(a, "apps/status", image, "v1")
        await eventually(lambda: has_tag(b, "apps/status", "v1", image.digest), "apps/status")
    config = site_a.env["DOCKYARD_CONFIG"]
    deadline = time.monotonic() + ARRIVAL
    while True:
        doc = await trio.to_thread.run_sync(replication_status, config)
        rules = {r["name"]: r for r in doc["rules"]}
        pull = rules["from-distribution"]["last_run"]
        target = rules["to-site-b"]["targets"][0]
        if (pull and pull["finished"] and target["backlog_events"] == 0) or (
            time.monotonic() > deadline
        ):
            break
        await trio.sleep(0.5)
    assert set(rules) == {"to-site-b", "to-site-b-as-alice", "to-distribution", "from-distribution"}
    assert target["consumer"].startswith("replication:to-site-b:")
    assert target["cursor"] == doc["log_end"] and target["backlog_events"] == 0
    assert target["lease"] is not None
    # The only failure this module causes on purpose (test_an_outage_of_site_b...).
    assert target["failed"] == 0 or "ContentGone" in target["last_error"]
    assert pull is not None and pull["failed"] == 0 and pull["last_error"] is None
    # The metrics: images copied per rule and target, the backlog per consumer.
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{site_a.url}/metrics")).text
    b_url = rules["to-site-b"]["targets"][0]["url"]
    series = f'dockyard_replication_images_total{{remote="{b_url}",rule="to-site-b"}}'
    found = re.search(re.escape(series) + r" ([0-9.]+)", text)
    assert found is not None and float(found[1]) >= 1, text[-3000:]
    assert 'dockyard_replication_blobs_total{how="upload"' in text
    assert f'dockyard_webhook_backlog_events{{endpoint="{target["consumer"]}"}} 0.0' in text
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    # `| head`: a closed stdout ends the command quietly.
    piped = await trio.run_process(
        f"'{sys.executable}' -m dockyard.cli replication status --config '{config}' | head -n 1",
        shell=True,
        env=env,
        capture_stdout=True,
        capture_stderr=True,
    )
    assert piped.stdout.startswith(b"event log ends at"), piped
    assert b"Traceback" not in piped.stderr, piped.stderr
    # Webhook listings leave replication's consumers out.
    hooks = await trio.run_process(
        [
            sys.executable,
            "-m",
            "dockyard.cli",
            "events",
            "webhooks",
            "list",
            "--json",
            "--config",
            config,
        ],
        env=env,
        capture_stdout=True,
    )
    assert json.loads(hooks.stdout) == {"endpoints": []}
