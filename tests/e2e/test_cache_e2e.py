"""The pull-through cache end to end: a ``dockyard serve --workers 2`` caching two real
upstreams, Debian's Distribution 2.8 (anonymous) and a second dockyard with token auth
(the cache's credentials are a username and password); skopeo copies through the cache,
then again with the upstream stopped, byte for byte; ten concurrent GETs of one missing
blob make one upstream GET (Distribution's access log), across both worker processes."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from dockyard.oci.digest import digest_of
from dockyard.upstream.client import RegistryClient
from tests.distribution import Distribution
from tests.e2e.conftest import Skopeo, serving
from tests.e2e.containers_tools import ContainerStore
from tests.e2e.test_auth_e2e import PASSWORDS, write_auth_config
from tests.imagegen import OCILayout, build_image, make_layer, random_layers
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e


# What the cache raises when an upstream's blob does not match its digest.


@dataclass
class Upstreams:
    distribution: Distribution
    token: DockyardServer


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    root = tmp_path_factory.mktemp("token-upstream")
    config = write_auth_config(root, "token")
    token = DockyardServer(root / "data", env={"DOCKYARD_CONFIG": str(config)})
    with Distribution(tmp_path_factory.mktemp("distribution")) as d:
        for server in serving(token):
            yield Upstreams(d, server)


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams
) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("cache")
    config = root / "dockyard.toml"
    # tag_ttl = 0: every tag pull asks the upstream, so a stopped one is noticed at once.
    config.write_text(
        "[[upstreams]]\n"
        'name = "dist"\n'
        f'url = "{upstreams.distribution.url}"\n'
        'prefix = "dist"\n'
        "tag_ttl = 0\n"
        "\n"
        "[[upstreams]]\n"
        'name = "yard"\n'
        f'url = "{upstreams.token.url}"\n'
        'prefix = "yard"\n'
        'username = "root"\n'
        f"password = {json.dumps(PASSWORDS['root'])}\n"
        "tag_ttl = 0\n"
        "\n"
        "[[upstreams]]\n"
        'name = "wrong"\n'
        f'url = "{upstreams.token.url}"\n'
        'prefix = "wrong"\n'
        'username = "root"\n'
        'password = "not-the-password"\n'
    )
    env = {"DOCKYARD_CONFIG": str(config)}
    server = DockyardServer(root / "data", workers=2, env=env).start()
    try:
        yield server
    finally:
        server.stop()
    # As tests/e2e/conftest.py's serving(): the corrupt blob's response is cut short
    # without an unhandled error.
    text = server.log_path.read_text(errors="replace")
    if "Traceback" in text:
        pytest.fail(f"dockyard logged an unhandled error:\n{text[-8000:]}", pytrace=False)


@pytest.fixture
def skopeo(cache: DockyardServer) -> Skopeo:
    return Skopeo(require_tool("skopeo"), cache)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_concurrent_gets_of_a_missing_blob_fetch_it_once(
    cache: DockyardServer, upstreams: Upstreams
) -> None:
    blob = os.urandom(8 * 1024 * 1024 + 3)
    digest = str(digest_of(blob))
    async with RegistryClient(upstreams.distribution.url) as up:
        await up.push_blob("lib/big", digest, len(blob), functools.partial(_once, blob))
    got: list[str] = []

    async def fetch(client: httpx.AsyncClient) -> None:
        r = await client.get(f"/v2/dist/lib/big/blobs/{digest}")
        assert r.status_code == 200, r.text
        got.append(hashlib.sha256(r.content).hexdigest())

    # One connection each: hypercorn's two workers share the socket, so both take some.
    clients = [httpx.AsyncClient(base_url=cache.url, timeout=60) for _ in range(10)]
    try:
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(fetch, client)
    finally:
        for client in clients:
            await client.aclose()
    assert got == [digest.removeprefix("sha256:")] * 10
    assert upstreams.distribution.count("GET", f"/v2/lib/big/blobs/{digest}") == 1


def test_podman_pulls_through_a_mirror_location_with_a_path(
    skopeo: Skopeo, cache: DockyardServer, upstreams: Upstreams, tmp_path: Path
) -> None:
    """docs/proxy.md's registries.conf: a mirror location "host:port/dist" makes podman
    ask the cache for dist/<the image's path>."""
    layout = OCILayout(tmp_path / "layout")
    image = layout.add_image("v1", build_image([make_layer(31)]))
    target = f"docker://{upstreams.distribution.host}/lib/podman:v1"
    skopeo.copy(layout.ref("v1"), target, "--preserve-digests")
    store = ContainerStore(tmp_path / "podman")
    (store.root / "registries.conf").write_text(
        "unqualified-search-registries = []\n"
        "[[registry]]\n"
        'prefix = "mirror.invalid"\n'
        'location = "mirror.invalid"\n'
        "[[registry.mirror]]\n"
        f'location = "{cache.host}/dist"\n'
        "insecure = true\n"
    )
    store.run(
        "podman",
        "pull",
        "--signature-policy",
        str(store.policy),
        "mirror.invalid/lib/podman:v1",
        server=cache,
    )
    assert store.image_id(
        "podman", "mirror.invalid/lib/podman:v1"
    ) == image.config.digest.removeprefix("sha256:")
    r = httpx.get(f"{cache.url}/v2/dist/lib/podman/tags/list")
    assert r.status_code == 200 and r.json()["tags"] == ["v1"]


async def test_a_corrupt_upstream_blob_fails_the_download(
    cache: DockyardServer, upstreams: Upstreams
) -> None:
    blob = os.urandom(3 * 1024 * 1024)
    digest = str(digest_of(blob))
    async with RegistryClient(upstreams.distribution.url) as up:
        await up.push_blob("lib/corrupt", digest, len(blob), functools.partial(_once, blob))
    stored = upstreams.distribution.blob_path(digest)
    stored.write_bytes(bytes(len(blob)))
    path = f"{cache.url}/v2/dist/lib/corrupt/blobs/{digest}"
    # The response is cut short of its Content-Length: the client sees a broken download.
    async with httpx.AsyncClient(timeout=30) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(path)
        stored.write_bytes(blob)
        r = await client.get(path)
        assert r.status_code == 200 and r.content == blob
    # Nothing was kept of the first fetch: the second fetched again.
    assert upstreams.distribution.count("GET", f"/v2/lib/corrupt/blobs/{digest}") == 2
    # Cut short on purpose (a warning), not an unhandled error (checked by the fixture).
    for _ in range(50):  # the log is written by a thread
        if "response cut short" in cache.log_path.read_text(errors="replace"):
            break
        await trio.sleep(0.1)
    assert "response cut short" in cache.log_path.read_text(errors="replace")


async def test_a_client_that_goes_away_mid_fill_does_not_stop_it(
    cache: DockyardServer, upstreams: Upstreams
) -> None:
    blob = os.urandom(32 * 1024 * 1024)
    digest = str(digest_of(blob))
    async with RegistryClient(upstreams.distribution.url) as up:
        await up.push_blob("lib/gone", digest, len(blob), functools.partial(_once, blob))
    path = f"/v2/dist/lib/gone/blobs/{digest}"
    stream = await trio.open_tcp_stream("127.0.0.1", cache.port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {cache.host}\r\n\r\n".encode())
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
    # hypercorn drops what the closed connection can no longer take, and the fill goes
    # on: the blob is stored, the next GET does not ask the upstream again.
    async with httpx.AsyncClient(base_url=cache.url, timeout=30) as client:
        r = await client.get(path)
        assert r.status_code == 200 and r.content == blob
    assert upstreams.distribution.count("GET", f"/v2/lib/gone/blobs/{digest}") == 1


def test_refused_upstream_credentials_are_a_clear_error(cache: DockyardServer) -> None:
    r = httpx.get(f"{cache.url}/v2/wrong/lib/app/manifests/v1", timeout=30)
    assert r.status_code == 503
    (error,) = r.json()["errors"]
    assert error["code"] == "UNAVAILABLE" and "upstream wrong" in error["message"]
    assert "not-the-password" not in r.text


def _dir_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("kind", ["dist", "yard"])
def test_skopeo_copies_through_the_cache_and_without_the_upstream(
    kind: str, skopeo: Skopeo, upstreams: Upstreams, tmp_path: Path
) -> None:
    layout = OCILayout(tmp_path / "layout")
    image = layout.add_image("v1", build_image([make_layer(21), *random_layers(22, 2)]))
    if kind == "dist":
        target, creds = f"docker://{upstreams.distribution.host}/lib/app:v1", []
        stop = upstreams.distribution.stop
    else:
        target = f"docker://{upstreams.token.host}/lib/app:v1"
        creds = ["--dest-creds", f"root:{PASSWORDS['root']}"]
        stop = upstreams.token.stop
    skopeo.copy(layout.ref("v1"), target, "--preserve-digests", *creds)

    through = skopeo.docker(f"{kind}/lib/app:v1")
    skopeo.copy(through, f"dir:{tmp_path / 'first'}", "--preserve-digests")
    first = _dir_files(tmp_path / "first")
    assert first["manifest.json"] == image.manifest.data
    for d in image.blob_digests:
        assert d.removeprefix("sha256:") in first

    stop()
    skopeo.copy(through, f"dir:{tmp_path / 'again'}", "--preserve-digests")
    assert _dir_files(tmp_path / "again") == first
    # By digest too.
    skopeo.copy(
        skopeo.docker(f"{kind}/lib/app@{image.digest}"),
        f"dir:{tmp_path / 'by-digest'}",
        "--preserve-digests",
    )
    assert _dir_files(tmp_path / "by-digest") == first
