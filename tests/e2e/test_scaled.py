"""The scaled topology end to end: two ``dockyard serve`` instances behind haproxy (round
robin, no stickiness, /readyz health checks), sharing a PostgreSQL database and an S3
bucket on SeaweedFS and no local disk (tests/topology.py ``pg_s3_backend``; each instance
reaches both through relays of its own).

- skopeo and podman push and pull through haproxy, their requests spread over both;
- one chunked upload spread over both instances (POST on one, PATCHes alternating, PUT
  on the other) verifies, also where the other instance must re-hash the stored bytes;
- websocket subscribers on one instance see events made on the other (delay measured);
- webhooks are delivered once per event per endpoint, both instances delivering;
- every instance's stale-upload janitor runs, and purges only what is stale;
- kill -9 of an instance during a push: the client's retry through haproxy finishes it,
  nothing partial is visible, the restarted instance rejoins;
- /readyz fails when an instance's blob store or database is unreachable (its relay
  cut), haproxy takes it out and requests keep succeeding through the other.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    image_manifest,
    put_manifest,
    random_blob,
)
from tests.e2e.conftest import SCALED_MAX_IDLE, TOOL_TIMEOUT
from tests.e2e.containers_tools import INSECURE, ContainerStore
from tests.e2e.logread import access_log, field, log_lines
from tests.feedclient import open_feed
from tests.imagegen import OCILayout, build_image, make_layer
from tests.tools import require_tool
from tests.topology import Topology
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

LOCAL_IMAGE = "localhost/dockyard-scaled:v1"


def skopeo(topology: Topology, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [require_tool("skopeo"), "--insecure-policy", *args]
    done = subprocess.run(cmd, capture_output=True, timeout=TOOL_TIMEOUT, check=False)
    assert done.returncode == 0, (
        f"{cmd} exited {done.returncode}\n{done.stderr.decode(errors='replace')[-4000:]}\n"
        f"{topology.logs()}"
    )
    return done


def requests_served(topology: Topology, path_prefix: str) -> list[int]:
    """How many requests under ``path_prefix`` each instance answered (its access log,
    written by its log thread in batches: wait until the counts stop moving)."""
    counts: list[int] = []
    for _ in range(40):
        now = [
            sum(1 for d in access_log(s) if str(field(d, "url.path")).startswith(path_prefix))
            for s in topology.servers
        ]
        if now == counts and all(now):
            break
        counts = now
        time.sleep(0.1)
    return counts


def requests_served_by(topology: Topology, path_prefix: str, expected: int) -> list[int]:
    """Requests under ``path_prefix`` per instance, once ``expected`` were logged in all."""
    counts: list[int] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        counts = [
            sum(1 for d in access_log(s) if str(field(d, "url.path")).startswith(path_prefix))
            for s in topology.servers
        ]
        if sum(counts) >= expected:
            break
        time.sleep(0.05)
    return counts


def assert_blob(topology: Topology, repo: str, data: bytes, digest: str) -> None:
    """Every instance serves exactly ``data`` for ``digest``."""
    for server in topology.servers:
        r = httpx.get(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=30)
        assert r.status_code == 200, r.text
        assert r.content == data


# -- clients through haproxy


def test_skopeo_push_and_pull_through_haproxy(scaled: Topology, tmp_path: Path) -> None:
    layout = OCILayout(tmp_path / "layout")
    image = layout.add_image("v1", build_image([make_layer(900 + i) for i in range(4)]))
    target = f"docker://{scaled.host}/scaled/skopeo:v1"
    skopeo(scaled, "copy", "--dest-tls-verify=false", layout.ref("v1"), target)
    skopeo(scaled, "copy", "--src-tls-verify=false", target, f"dir:{tmp_path / 'out'}")
    assert (tmp_path / "out" / "manifest.json").read_bytes() == image.manifest.data
    for layer in image.layers:
        blob = tmp_path / "out" / layer.digest.removeprefix("sha256:")
        assert blob.read_bytes() == layer.blob.data
    # No stickiness: both instances answered requests of this push and pull.
    served = requests_served(scaled, "/v2/scaled/skopeo/")
    assert all(served), served


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> ContainerStore:
    store = ContainerStore(tmp_path_factory.mktemp("scaled-builder"))
    try:
        store.build_scratch_image(LOCAL_IMAGE, {"payload.bin": os.urandom(64 * 1024)})
    except AssertionError as e:
        message = f"buildah cannot build an image here (run the tests as root): {e}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return store


def test_podman_push_and_pull_through_haproxy(
    scaled: Topology, builder: ContainerStore, tmp_path: Path
) -> None:
    ref = f"{scaled.host}/scaled/podman:v1"
    policy = ("--signature-policy", str(builder.policy))
    builder.run("podman", "push", INSECURE, *policy, LOCAL_IMAGE, ref, server=scaled.servers[0])
    puller = ContainerStore(tmp_path / "puller")
    puller.run("podman", "pull", INSECURE, *policy, ref, server=scaled.servers[0])
    assert puller.image_id("podman", ref) == builder.image_id("podman", LOCAL_IMAGE)
    served = requests_served(scaled, "/v2/scaled/podman/")
    assert all(served), served


# -- one upload, chunks on both instances


@pytest.mark.parametrize(
    ("started", "finished"),
    [
        ("sha256", "sha256"),  # the saved SHA-256 state moves between instances
        ("blake3", "blake3"),  # no state can be saved: the other instance re-hashes
        ("sha256", "sha512"),  # another algorithm at PUT: re-hashed from stored bytes
    ],
)
def test_chunked_upload_spread_over_both_instances(
    scaled: Topology, started: str, finished: str
) -> None:
    repo = f"scaled/chunks-{started}-{finished}"
    parts = [random_blob(300_000 + i) for i in range(5)]
    data = b"".join(parts)
    digest = digest_of(data, finished)
    first, second = (httpx.Client(base_url=s.url, timeout=30) for s in scaled.servers)
    with first, second:
        r = first.post(f"/v2/{repo}/blobs/uploads/", params={"digest-algorithm": started})
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        offset = 0
        for i, part in enumerate(parts[:-1]):
            client = (second, first)[i % 2]
            r = client.patch(
                location,
                content=part,
                headers={
                    "content-type": "application/octet-stream",
                    "content-range": f"{offset}-{offset + len(part) - 1}",
                },
            )
            assert r.status_code == 202, r.text
            offset += len(part)
            assert r.headers["range"] == f"0-{offset - 1}"
            location = r.headers["location"]
        r = second.put(
            location,
            params={"digest": digest},
            content=parts[-1],
            headers={"content-type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
        assert r.headers["docker-content-digest"] == digest
    assert_blob(scaled, repo, data, digest)
    r = httpx.get(f"{scaled.url}/v2/{repo}/blobs/{digest}", timeout=30)
    assert r.status_code == 200 and r.content == data


# -- events across instances


async def push_blob_to(url: str, repo: str, data: bytes) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.post(
            f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data)}, content=data
        )
        assert r.status_code == 201, r.text
        return str(r.headers["docker-content-digest"])


# The feed's bound: PostgreSQL's NOTIFY wakes the other instance's hub at once; a polled
# backend (shared SQLite) reads every events.poll_interval (25 ms) and fits as well.
FEED_MEDIAN_BOUND = 0.25
FEED_MAX_BOUND = 1.0


async def test_subscribers_on_one_instance_see_events_made_on_the_other(
    scaled: Topology,
) -> None:
    repo = "scaled/feed"
    count = 20
    subscriber, maker = scaled.servers
    arrived: dict[str, float] = {}
    answered: dict[str, float] = {}
    async with open_feed(subscriber.port, {"repository": repo}) as feed:

        async def read() -> None:
            while len(arrived) < count:
                event = await feed.event(timeout=10)
                assert event["source"]["instance"] == scaled.instance_name(1), event
                arrived[event["target"]["digest"]] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for _ in range(count):
                digest = await push_blob_to(maker.url, repo, random_blob(256))
                answered[digest] = trio.current_time()
                await trio.sleep(0.05)
    assert set(arrived) == set(answered)
    # From the pushing client's 201 to the event on the other instance's websocket
    # (negative: the event arrived before the client had read its answer).
    delays = [arrived[d] - answered[d] for d in answered]
    median, worst = statistics.median(delays), max(delays)
    print(
        f"cross-instance feed delay over {count} events: median {median * 1000:.1f} ms, "
        f"max {worst * 1000:.1f} ms"
    )
    assert median < FEED_MEDIAN_BOUND and worst < FEED_MAX_BOUND, delays


async def test_webhooks_are_delivered_once_per_event_across_instances(
    scaled: Topology, scaled_receiver: Receiver
) -> None:
    repo = "hooks/app"  # the hooks' filter (SCALED_HOOK_REPOSITORIES)
    count = 12
    ids: set[int] = set()
    async with open_feed(scaled.port, {"repository": repo}) as feed:
        for i in range(count):
            await push_blob_to(scaled.servers[i % 2].url, repo, random_blob(128))
        for event in await feed.events(count, timeout=10):
            ids.add(int(event["id"]))
    instances = {scaled.instance_name(0), scaled.instance_name(1)}
    assert len(ids) == count
    for path in ("/a", "/b"):
        await scaled_receiver.wait_for_ids(ids, path, timeout=20)
    await trio.sleep(1.0)  # a duplicate would arrive in this time
    for path in ("/a", "/b"):
        got = scaled_receiver.accepted_ids(path)
        assert sorted(got) == sorted(ids), f"{path}: duplicates or strays in {got}"
    sources = {
        d.json()["events"][0]["source"]["instanceID"] for d in scaled_receiver.accepted("/a")
    }
    assert sources == instances  # events of both instances, each delivered once


# -- the stale-upload janitor on every instance


def purged_sessions(topology: Topology, skip: list[int]) -> int:
    """Stale sessions purged by all instances, from their logs after ``skip`` lines."""
    total = 0
    for server, before in zip(topology.servers, skip, strict=True):
        for line in log_lines(server)[before:]:
            message = str(field(line, "message"))
            if message.startswith("purged "):
                total += int(message.split()[1])
            assert "failed" not in message, message
    return total


async def test_every_instance_runs_the_janitor_and_purges_only_stale_uploads(
    scaled: Topology,
) -> None:
    repo = "scaled/janitor"
    skip = [len(log_lines(s)) for s in scaled.servers]
    stale: list[str] = []
    clients = [httpx.AsyncClient(base_url=s.url, timeout=30) for s in scaled.servers]
    try:
        for i in range(4):
            r = await clients[i % 2].post(f"/v2/{repo}/blobs/uploads/")
            assert r.status_code == 202, r.text
            r = await clients[i % 2].patch(
                r.headers["location"],
                content=b"x" * 1000,
                headers={"content-type": "application/octet-stream"},
            )
            assert r.status_code == 202, r.text
            stale.append(r.headers["location"])
        r = await clients[0].post(f"/v2/{repo}/blobs/uploads/")
        live, data = r.headers["location"], b""
        # Keep one upload busy, a chunk every second, alternating instances, while the
        # others go stale and both janitors look every SCALED_PURGE_INTERVAL.
        deadline = trio.current_time() + SCALED_MAX_IDLE + 3
        i = 0
        while trio.current_time() < deadline:
            chunk = random_blob(1000)
            r = await clients[i % 2].patch(
                live,
                content=chunk,
                headers={
                    "content-type": "application/octet-stream",
                    "content-range": f"{len(data)}-{len(data) + len(chunk) - 1}",
                },
            )
            assert r.status_code == 202, r.text
            live, data, i = r.headers["location"], data + chunk, i + 1
            await trio.sleep(1.0)
        for location in stale:
            r = await clients[0].get(location)
            assert r.status_code == 404, r.text
            assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        r = await clients[1].put(live, params={"digest": digest_of(data)})
        assert r.status_code == 201, r.text
    finally:
        for client in clients:
            await client.aclose()
    assert_blob(scaled, repo, data, digest_of(data))
    await trio.sleep(0.3)  # the log threads write in batches
    assert purged_sessions(scaled, skip) == len(stale)
    assert not scaled.tracebacks()


# -- kill -9 of an instance in the middle of a push


class RetryingPusher:
    """A client that pushes through haproxy and, like a CI client's retry, carries on
    after a failed request: it asks the upload's status (any instance answers), resumes
    from the saved offset, waits out a dead instance's lease (416), and starts a new
    session if the old one is gone. Bodies are paced so that requests are in flight."""

    PIECE = 256 * 1024
    CHUNK = 2 * 1024 * 1024

    def __init__(self, http: httpx.AsyncClient, repo: str, busy_after: int) -> None:
        self.http = http
        self.repo = repo
        self.pushed = 0
        self.failures: list[str] = []
        self.busy_after = busy_after
        self.busy = trio.Event()  # set once busy_after bytes went out

    async def paced(self, data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), self.PIECE):
            yield data[start : start + self.PIECE]
            self.pushed += min(self.PIECE, len(data) - start)
            if self.pushed >= self.busy_after:
                self.busy.set()
            await trio.sleep(0.02)

    async def retrying(
        self, what: str, call: Callable[[], Awaitable[httpx.Response]]
    ) -> httpx.Response:
        for _ in range(100):
            try:
                r = await call()
            except httpx.TransportError as e:
                self.failures.append(f"{what}: {e!r}")
            else:
                if r.status_code < 500:
                    return r
                self.failures.append(f"{what}: {r.status_code}")
            await trio.sleep(0.1)
        raise AssertionError(f"{what} kept failing: {self.failures[-5:]}")

    async def start(self) -> str:
        r = await self.retrying("POST", lambda: self.http.post(f"/v2/{self.repo}/blobs/uploads/"))
        assert r.status_code == 202, r.text
        return str(r.headers["location"])

    async def offset(self, location: str) -> tuple[str, int] | None:
        """The session's URL and saved offset; None if the session is gone."""
        r = await self.retrying("GET status", lambda: self.http.get(location))
        if r.status_code == 404:
            return None
        assert r.status_code == 204, r.text
        # "0-0" is also an empty upload's Range; this client never stores a lone byte.
        end = int(r.headers["range"].split("-")[1])
        return str(r.headers["location"]), end + 1 if end else 0

    async def push_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        location, offset = await self.start(), 0
        while offset < len(data):
            chunk = data[offset : offset + self.CHUNK]
            try:
                r = await self.http.patch(
                    location,
                    content=self.paced(chunk),
                    headers={"content-type": "application/octet-stream"},
                )
            except httpx.TransportError as e:
                self.failures.append(f"PATCH: {e!r}")
            else:
                if r.status_code == 202:
                    location, offset = r.headers["location"], offset + len(chunk)
                    continue
                # 416: a dead instance still holds the lease; 5xx: haproxy lost it.
                self.failures.append(f"PATCH: {r.status_code}")
                await trio.sleep(0.2)
            state = await self.offset(location)
            self.failures.append(f"resumed at {state and state[1]} of {len(data)}")
            if state is None:
                location, offset = await self.start(), 0
            else:
                location, offset = state
        r = await self.retrying("PUT", lambda: self.http.put(location, params={"digest": digest}))
        if r.status_code == 404:  # finished by the request that failed: it is there
            r = await self.retrying(
                "HEAD", lambda: self.http.head(f"/v2/{self.repo}/blobs/{digest}")
            )
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 201, (r.text, self.failures)
        return digest


# A refused PATCH (416 while the dead instance's lease lasts) leaves httpx's wrapper of
# the paced body unfinished; that is the client's business, not the registry's.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object AsyncIteratorByteStream"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_kill_9_during_a_push_the_retry_finishes_it(scaled: Topology) -> None:
    repo = "scaled/killed"
    layers = [random_blob(8 * 1024 * 1024 + i) for i in range(3)]
    config = b'{"architecture": "amd64", "os": "linux"}'
    total = sum(map(len, layers))
    victim: list[int] = []
    async with httpx.AsyncClient(base_url=scaled.url, timeout=60) as http:
        pusher = RetryingPusher(http, repo, busy_after=total // 3)

        async def kill_mid_push() -> None:
            await pusher.busy.wait()
            # The instance with a request in flight (haproxy's current sessions).
            for _ in range(200):
                busy = [
                    i for i, n in enumerate(await trio.to_thread.run_sync(scaled.sessions)) if n
                ]
                if busy:
                    break
                await trio.sleep(0.005)
            victim.append(busy[0] if busy else 0)
            await trio.to_thread.run_sync(scaled.kill9, victim[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_mid_push)
            digests = [await pusher.push_blob(layer) for layer in layers]
            config_digest = await pusher.push_blob(config)
        manifest = image_manifest(
            descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, b) for b in layers]
        )
        r = await pusher.retrying(
            "PUT manifest",
            lambda: put_manifest(http, repo, "v1", manifest),
        )
        assert r.status_code == 201, r.text
    assert pusher.failures, "the kill did not hit a request: nothing was retried"
    print(f"killed {scaled.instance_name(victim[0])}; the client retried: {pusher.failures}")
    # What the survivor serves is whole: every blob's bytes match its digest.
    blobs = [*zip(layers, digests, strict=True), (config, config_digest)]
    async with httpx.AsyncClient(base_url=scaled.servers[1 - victim[0]].url, timeout=60) as s:
        for data, digest in blobs:
            r = await s.get(f"/v2/{repo}/blobs/{digest}")
            assert r.status_code == 200 and digest_of(r.content) == digest
            assert r.content == data
    # The killed instance comes back, haproxy takes it in again, and it serves it all.
    await trio.to_thread.run_sync(scaled.restart, victim[0])
    await trio.to_thread.run_sync(scaled.wait_ready)
    for data, digest in blobs:
        await trio.to_thread.run_sync(assert_blob, scaled, repo, data, digest)
    for server in scaled.servers:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as one:
            r = await one.get(f"/v2/{repo}/manifests/v1", headers={"accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.content == manifest


# -- /readyz and haproxy


@pytest.mark.parametrize("dependency", ["storage", "database"])
def test_an_instance_that_loses_a_dependency_is_taken_out(
    scaled: Topology, dependency: str
) -> None:
    backend = scaled.backend
    fault, heal = (
        (backend.break_storage, backend.heal_storage)
        if dependency == "storage"
        else (backend.break_database, backend.heal_database)
    )
    if fault is None or heal is None:
        pytest.skip(
            f"the {backend.name} backend cannot take one instance's {dependency} away "
            "(the pg-s3 backend's relays can)"
        )
    repo = f"scaled/ready-{dependency}"
    fault(0)
    try:
        r = httpx.get(f"{scaled.servers[0].url}/readyz", timeout=10)
        assert r.status_code == 503, r.text
        assert httpx.get(f"{scaled.servers[1].url}/readyz", timeout=10).status_code == 200
        scaled.wait_down(0)
        # Every request now goes to the other instance, and succeeds.
        with httpx.Client(base_url=scaled.url, timeout=30) as http:
            for i in range(10):
                data = random_blob(1000 + i)
                digest = digest_of(data)
                r = http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
                assert r.status_code == 201, r.text
                r = http.get(f"/v2/{repo}/blobs/{digest}")
                assert r.status_code == 200 and r.content == data
    finally:
        heal(0)
    served = requests_served_by(scaled, f"/v2/{repo}/", expected=20)
    assert served == [0, 20], served  # haproxy sent none of them to the broken instance
    scaled.wait_ready(0)
    assert_blob(scaled, repo, data, digest)
