"""upstream/client.py against real registries: Debian's Distribution 2.8 (anonymous, and
with htpasswd Basic auth) and a dockyard with token auth (the Bearer flow), plus a small
stub server for the answers real registries do not give on demand (503, 429)."""

from __future__ import annotations

import functools
import http.server
import json
import random
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import anyio
import pytest

from dockyard.oci.digest import digest_of
from dockyard.upstream.client import (
    Corrupt,
    Denied,
    NotFound,
    RegistryClient,
    Unavailable,
)
from tests.conftest import TEST_BACKENDS
from tests.distribution import Distribution
from tests.e2e.conftest import serving
from tests.e2e.test_auth_e2e import PASSWORDS, write_auth_config
from tests.serverproc import DockyardServer, free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Remote:
    kind: str
    url: str
    username: str = ""
    password: str = ""
    server: DockyardServer | Distribution | None = None

    def client(self, password: str | None = None) -> RegistryClient:
        secret = self.password if password is None else password
        return RegistryClient(self.url, username=self.username, password=secret)


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("distribution")) as d:
        yield d


@pytest.fixture(scope="module")
def distribution_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("distribution-basic"), "alice", "s3cret") as d:
        yield d


@pytest.fixture(scope="module")
def dockyard_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("dockyard-token")
    config = write_auth_config(root, "token")
    env = {"DOCKYARD_CONFIG": str(config), "DOCKYARD_LOG_ACCESS": "true"}
    yield from serving(DockyardServer(root / "data", workers=1, env=env))


@pytest.fixture(params=["distribution", "distribution-basic", "dockyard-token"])
def remote(
    request: pytest.FixtureRequest,
) -> Remote:
    if request.param == "distribution":
        d: Distribution = request.getfixturevalue("distribution")
        return Remote("distribution", d.url, server=d)
    if request.param == "distribution-basic":
        d = request.getfixturevalue("distribution_basic")
        return Remote("distribution", d.url, "alice", "s3cret", d)
    s: DockyardServer = request.getfixturevalue("dockyard_token")
    return Remote("dockyard", s.url, "root", PASSWORDS["root"], s)


def image(seed: int) -> tuple[dict[str, bytes], bytes]:
    """Blobs (digest -> bytes) and the manifest of a small image."""
    layer = random.Random(seed).randbytes(300_000)
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    blobs = {str(digest_of(layer)): layer, str(digest_of(config)): config}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": str(digest_of(config)), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": str(digest_of(layer)), "size": len(layer)}],
    }
    return blobs, json.dumps(manifest).encode()


def source(data: bytes) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    return chunks()


def of_backend(seed: int, backend: str) -> int:
    """An image seed of the test's own for each backend: the module's servers outlive a
    test's first run, so its run on the other backend must push content not there yet."""
    return seed + 100 * TEST_BACKENDS.index(backend)


async def push_image(client: RegistryClient, repository: str, seed: int, tag: str) -> str:
    blobs, manifest = image(seed)
    for digest, data in blobs.items():
        assert await client.head_blob(repository, digest) is None
        await client.push_blob(repository, digest, len(data), functools.partial(source, data))
        assert await client.head_blob(repository, digest) == len(data)
    return await client.put_manifest(repository, tag, manifest, OCI_MANIFEST)


async def test_push_and_pull_an_image(remote: Remote) -> None:
    repository = f"client/{remote.kind}-{free_port()}"
    blobs, manifest = image(1)
    async with remote.client() as client:
        await client.ping()
        digest = await push_image(client, repository, 1, "v1")
        assert digest == str(digest_of(manifest))
        head = await client.head_manifest(repository, "v1")
        assert head is not None and (head.digest, head.media_type) == (digest, OCI_MANIFEST)
        assert head.size == len(manifest)
        for reference in ("v1", digest):
            got = await client.get_manifest(repository, reference)
            assert (got.digest, got.media_type, got.payload) == (digest, OCI_MANIFEST, manifest)
        for blob_digest, data in blobs.items():
            async with client.open_blob(repository, blob_digest) as blob:
                assert blob.size == len(data)
                assert b"".join([c async for c in blob.chunks()]) == data
        assert await client.tags(repository) == ["v1"]
        assert repository in await client.catalog()
        # Cross-repository mounts, asked alone and as part of a push.
        layer = next(iter(blobs))
        assert await client.mount_blob(f"{repository}-mounted", layer, repository)
        assert await client.head_blob(f"{repository}-mounted", layer) == len(blobs[layer])
        config, config_bytes = list(blobs.items())[1]
        await client.push_blob(
            f"{repository}-mounted",
            config,
            len(config_bytes),
            lambda: source(b"never read: the mount succeeds"),
            mount_from=repository,
        )
        assert await client.head_blob(f"{repository}-mounted", config) == len(config_bytes)
        await client.delete_manifest(repository, digest)
        assert await client.head_manifest(repository, digest) is None


async def test_referrers(
    dockyard_token: DockyardServer, distribution: Distribution, anyio_backend: str
) -> None:
    empty = b"{}"
    async with RegistryClient(
        dockyard_token.url, username="root", password=PASSWORDS["root"]
    ) as client:
        repository = f"client/referred-{anyio_backend}"
        subject = await push_image(client, repository, of_backend(2, anyio_backend), "v1")
        await client.push_blob(repository, str(digest_of(empty)), 2, lambda: source(empty))
        signature = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": str(digest_of(empty)),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": str(digest_of(empty)),
                    "size": 2,
                }
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
        }
        payload = json.dumps(signature).encode()
        referrer = await client.put_manifest(
            repository, str(digest_of(payload)), payload, OCI_MANIFEST
        )
        found = await client.referrers(repository, subject)
        assert [(d["digest"], d["artifactType"]) for d in found] == [
            (referrer, "application/vnd.example.signature")
        ]
    # Distribution 2.8 has no referrers API: nothing, not an error.
    async with RegistryClient(distribution.url) as plain:
        plain_repository = f"client/plain-{anyio_backend}"
        digest = await push_image(plain, plain_repository, of_backend(3, anyio_backend), "v1")
        assert await plain.referrers(plain_repository, digest) == []


async def test_what_is_not_there(remote: Remote) -> None:
    async with remote.client() as client:
        digest = str(digest_of(b"nothing"))
        assert await client.head_manifest("client/none", "v1") is None
        assert await client.head_blob("client/none", digest) is None
        assert await client.tags("client/none") == []
        with pytest.raises(NotFound):
            await client.get_manifest("client/none", "v1")
        with pytest.raises(NotFound):
            async with client.open_blob("client/none", digest):
                pass


@pytest.mark.parametrize("kind", ["basic", "token"])
async def test_wrong_credentials_are_denied(
    kind: str, distribution_basic: Distribution, dockyard_token: DockyardServer
) -> None:
    url = distribution_basic.url if kind == "basic" else dockyard_token.url
    user = "alice" if kind == "basic" else "root"
    async with RegistryClient(url, username=user, password="wrong") as client:
        with pytest.raises(Denied):
            await client.head_manifest("client/any", "v1")
    # Anonymous, where credentials are needed.
    async with RegistryClient(url) as client:
        with pytest.raises(Denied):
            await client.head_manifest("client/any", "v1")


async def test_tokens_are_reused_until_they_expire(dockyard_token: DockyardServer) -> None:
    async def token_requests() -> int:
        # The access log is written by a thread: read until it stops changing.
        seen = -1
        while True:
            count = dockyard_token.log_path.read_text().count("/auth/token")
            if count == seen:
                return count
            seen = count
            await anyio.sleep(0.3)

    async with RegistryClient(
        dockyard_token.url, username="root", password=PASSWORDS["root"]
    ) as client:
        await client.head_manifest("client/reuse", "v1")
        before = await token_requests()
        for _ in range(5):
            await client.head_manifest("client/reuse", "v1")
            await client.tags("client/reuse")
        assert await token_requests() == before


async def test_a_manifest_that_does_not_match_its_digest_is_corrupt(
    distribution: Distribution, anyio_backend: str
) -> None:
    async with RegistryClient(distribution.url) as client:
        repository = f"client/corrupt-{anyio_backend}"
        digest = await push_image(client, repository, of_backend(4, anyio_backend), "v1")
        stored = distribution.blob_path(digest)
        stored.write_bytes(
            stored.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":2 ')
        )
        with pytest.raises(Corrupt):
            await client.get_manifest(repository, digest)
        with pytest.raises(Corrupt):  # by tag, against Docker-Content-Digest
            await client.get_manifest(repository, "v1")


class Flaky(http.server.BaseHTTPRequestHandler):
    """Answers the statuses queued in ``plan`` (then 200), counting requests."""

    plan: ClassVar[list[tuple[int, dict[str, str]]]] = []
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        status, headers = type(self).plan.pop(0) if type(self).plan else (200, {})
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Flaky.plan, Flaky.seen = [], 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_unavailable_answers_are_retried(flaky: str) -> None:
    Flaky.plan = [(503, {}), (429, {"Retry-After": "0.2"})]
    async with RegistryClient(flaky, max_attempts=3, backoff=0.01) as client:
        await client.ping()
    assert Flaky.seen == 3
    Flaky.plan, Flaky.seen = [(503, {})] * 5, 0
    async with RegistryClient(flaky, max_attempts=2, backoff=0.01) as client:
        with pytest.raises(Unavailable) as e:
            await client.ping()
    assert e.value.status == 503 and Flaky.seen == 2


async def test_an_unreachable_registry_is_unavailable(tmp_path: Path) -> None:
    async with RegistryClient(
        f"http://127.0.0.1:{free_port()}", max_attempts=2, backoff=0.01, timeout=2.0
    ) as client:
        with pytest.raises(Unavailable):
            await client.head_manifest("any/repo", "v1")
