"""replication/copy.py between this registry (built in process) and a real remote:
Debian's Distribution 2.8. Push: what the remote has is not sent again, a second
repository gets shared layers by mount, a copy is idempotent. Pull: through the core
(events under the replication actor), and bytes that do not match their digest on the
remote are refused and nothing is linked."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator

import pytest

from dockyard.core.common import RequestInfo
from dockyard.core.errors import BlobUnknown, DigestInvalid
from dockyard.replication.copy import (
    ContentGone,
    LocalDestination,
    LocalSource,
    MountMemory,
    RemoteDestination,
    RemoteSource,
    copy_image,
)
from dockyard.services import Services
from dockyard.upstream.client import RegistryClient
from tests.distribution import Distribution
from tests.imagegen import Image, build_image, build_index, make_layer
from tests.serverproc import free_port

CTX = RequestInfo(method="TEST")


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("copy-distribution")) as d:
        yield d


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def push_local(svc: Services, repository: str, image: Image, tag: str | None) -> None:
    for blob in (image.config, *(layer.blob for layer in image.layers)):
        await svc.registry.put_blob(CTX, repository, blob.digest, _body(blob.data), blob.size)
    await svc.registry.put_manifest(
        CTX, repository, tag or image.digest, image.manifest.data, image.manifest.media_type, []
    )


async def push_remote(client: RegistryClient, repository: str, image: Image, tag: str) -> None:
    for blob in (image.config, *(layer.blob for layer in image.layers)):
        await client.push_blob(
            repository, blob.digest, blob.size, functools.partial(_body, blob.data)
        )
    await client.put_manifest(repository, tag, image.manifest.data, image.manifest.media_type)


async def test_push_copies_once_and_mounts_shared_layers(
    services: Services, distribution: Distribution
) -> None:
    shared = make_layer(1)
    amd, arm = (
        build_image([shared], architecture="amd64"),
        build_image([shared], architecture="arm64"),
    )
    index = build_index([amd, arm])
    await push_local(services, "app", amd, None)
    await push_local(services, "app", arm, None)
    await services.registry.put_manifest(
        CTX, "app", "v1", index.manifest.data, index.manifest.media_type, []
    )
    source = LocalSource(services.registry, services.storage)
    remote = f"copy/app-{free_port()}"
    async with RegistryClient(distribution.url) as client:
        destination = RemoteDestination(client, MountMemory())
        first = await copy_image(source, destination, "app", remote, "v1", "v1", referrers=True)
        # Two configs and the shared layer once; the children, the index, its tag.
        assert (first.blobs, first.skipped, first.mounted) == (3, 1, 0)
        assert first.manifests == 4 and first.digests[-1] == index.digest
        assert first.bytes == amd.config.size + arm.config.size + shared.blob.size
        found = await client.head_manifest(remote, "v1")
        assert found is not None and found.digest == index.digest

        again = await copy_image(source, destination, "app", remote, "v1", "v1", referrers=True)
        assert (again.manifests, again.blobs, again.mounted, again.bytes) == (0, 0, 0, 0)

        other = remote + "-mirror"
        third = await copy_image(source, destination, "app", other, "v1", "v1", referrers=True)
        assert (third.blobs, third.mounted, third.bytes) == (0, 3, 0)
    puts = [p for m, p, _ in distribution.requests() if m == "PUT" and "/blobs/uploads/" in p]
    assert not any(f"/v2/{other}/" in p for p in puts)


async def test_a_deleted_local_image_is_content_gone(
    services: Services, distribution: Distribution
) -> None:
    source = LocalSource(services.registry, services.storage)
    async with RegistryClient(distribution.url) as client:
        destination = RemoteDestination(client, MountMemory())
        with pytest.raises(ContentGone):
            await copy_image(source, destination, "nothing", "x", "v1", "v1", referrers=True)


async def test_pull_goes_through_the_core(services: Services, distribution: Distribution) -> None:
    image = build_image([make_layer(2)])
    remote = f"pull/app-{free_port()}"
    async with RegistryClient(distribution.url) as client:
        await push_remote(client, remote, image, "v1")
        report = await copy_image(
            RemoteSource(client),
            LocalDestination(services.registry, "replication:test"),
            remote,
            "mirrored/app",
            "v1",
            "v1",
            referrers=True,
        )
    assert report.blobs == 2 and report.manifests == 2
    found = await services.registry.get_manifest(CTX, "mirrored/app", "v1", False)
    assert found.digest == image.digest and found.payload == image.manifest.data
    events = await services.db.run(services.meta.events_after, 0, 100)
    pushes = [e for e in events if e.repository == "mirrored/app" and e.action == "push"]
    assert len(pushes) == 4  # two blobs, the manifest by digest, then its tag
    assert all(e.body["actor"] == {"name": "replication:test"} for e in pushes)


async def test_pull_refuses_bytes_that_do_not_match(
    services: Services, distribution: Distribution
) -> None:
    remote = f"pull/corrupt-{free_port()}"
    # A layer of its own: the Distribution outlives the test, which runs once per backend,
    # and corrupting the same blob a second time would restore its bytes.
    image = build_image([make_layer(3, extra={"run": remote.encode()})])
    async with RegistryClient(distribution.url) as client:
        await push_remote(client, remote, image, "v1")
        # Same length, other bytes: Distribution serves them under the digest.
        target = image.layers[0].blob
        path = distribution.blob_path(target.digest)
        path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))
        with pytest.raises(DigestInvalid):
            await copy_image(
                RemoteSource(client),
                LocalDestination(services.registry, "replication:test"),
                remote,
                "corrupt/app",
                "v1",
                "v1",
                referrers=True,
            )
    with pytest.raises(BlobUnknown):
        await services.registry.blob_size("corrupt/app", target.digest)
