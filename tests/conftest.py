"""Shared fixtures and helpers for the in-process HTTP tests.

``services`` builds the whole registry from settings (filesystem storage and SQLite under
``tmp_path``) and runs its background tasks in a task group; ``client`` is an
``httpx.AsyncClient`` talking to the ASGI app in process through ``ASGITransport`` below
(request bodies stream chunk by chunk; see its docstring for why not httpx's own).

Helpers (import them with ``from tests.conftest import ...``): random blob bytes and
digests, pushing a blob or a whole image, building manifests, checking OCI error bodies
and reading the event log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import blake3
import httpx
import pytest

from dockyard.config import Settings, load
from dockyard.meta.records import StoredEvent
from dockyard.services import Services, build
from tests.fakegcs import fake_gcs as fake_gcs  # the session's fake-gcs-server (gcs tests)
from tests.pgserver import PostgresServer, require_postgres
from tests.seaweed import SeaweedServer

if TYPE_CHECKING:
    from tests.azurite import AzuriteServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

BASE_URL = "http://registry"

# -- the async backends the in-process tests run on (anyio's pytest plugin, auto mode)

TEST_BACKENDS = ("trio", "asyncio")

# The modules whose async tests run on asyncio as well as trio: those that exercise code
# whose behaviour depends on the event loop: sockets, streams and network clients (the
# storage drivers with one, upstream, replication, webhooks, token fetches, trivy's
# server), request and response bodies streamed through the app, task groups, timeouts
# and cancellation of background tasks (events, feed, scans, janitors, schedules), the
# dashboard app built for the loop (http/web.py). Every other module (configuration, OCI
# parsing, metadata SQL, retention plans, rules, error bodies, listings...) runs on trio
# only: what it tests is the same on either loop. So does the shared storage conformance
# suite (the drivers' semantics through the same client code, about a third of the
# suite's time on asyncio): a network driver's own tests (retries, restarts, credentials,
# large and streamed blobs) run on both loops, its conformance class on trio only.
# DOCKYARD_TEST_BACKENDS (comma-separated) runs every async test on exactly the backends
# it names instead, e.g. "trio,asyncio" for all on both. The servers of the e2e tests run
# on DOCKYARD_TEST_SERVER_BACKEND (scripts/test runs the HTTP, client and life-cycle e2e
# modules again on uvloop).
BOTH_LOOPS = frozenset(
    {
        # (a module, or one test of a module: "module::test")
        # the lifespan's background tasks; concurrent requests racing for a quota
        "test_api_errors::test_lifespan_protocol",
        "test_api_repositories::test_concurrent_pushes_cannot_both_pass",
        # bodies streamed through the app, disconnects, early answers
        "test_api_uploads",
        "test_api_blobs",
        "test_core_parts",
        # events, the feed, webhooks: task groups, timeouts, websockets, HTTP clients
        "test_api_events",
        "test_events",
        "test_event_counters",
        "test_event_pruning",
        "test_feed_asgi_path",
        "test_feed_connect",
        "test_feed_hooks",
        "test_webhooks",
        "test_metrics",
        "test_dashboard_api",
        # storage drivers with network clients
        "test_storage_s3",
        "test_storage_gcs",
        "test_storage_gcs_auth",
        "test_storage_azure",
        "test_meta_postgres_outage",
        # upstream, pull-through cache, replication, scanners: HTTP clients
        "test_upstream_client",
        "test_cache",
        "test_replication_copy",
        "test_trivy",
        "test_harbor",
        "test_scan_queue",
        "test_scan_auth",
        # background tasks and the auth paths that fetch over the network or time out
        "test_gc",
        "test_gc_schedule",
        "test_upload_janitor",
        "test_token_endpoint",
        "test_auth_cache",
        "test_connection_guard",
        "test_request_records",
        "test_logs",
    }
)


def chosen_backends() -> list[str]:
    """The backends to run async tests on: ``DOCKYARD_TEST_BACKENDS`` if set (every async
    test on each), by default both (asyncio then only for ``BOTH_LOOPS`` modules)."""
    chosen = os.environ.get("DOCKYARD_TEST_BACKENDS", "")
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = set(names) - set(TEST_BACKENDS)
    if unknown:
        raise pytest.UsageError(f"DOCKYARD_TEST_BACKENDS: unknown {sorted(unknown)}")
    return names or list(TEST_BACKENDS)


@pytest.fixture(scope="module", params=chosen_backends())
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _conformance(item: pytest.Item) -> bool:
    """A test of the shared storage conformance suite (tests/storage_conformance.py)."""
    from tests.storage_conformance import StorageConformance

    cls = getattr(item, "cls", None)
    return cls is not None and issubclass(cls, StorageConformance)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without DOCKYARD_TEST_BACKENDS, leave out the asyncio run of async tests outside
    ``BOTH_LOOPS`` and of the storage conformance suite (reported as deselected)."""
    if os.environ.get("DOCKYARD_TEST_BACKENDS", "").strip():
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_asyncio = callspec is not None and callspec.params.get("anyio_backend") == "asyncio"
        module = item.path.stem
        listed = (
            module in BOTH_LOOPS
            or f"{module}::{getattr(item, 'originalname', item.name)}" in BOTH_LOOPS
        ) and not _conformance(item)
        (dropped if on_asyncio and not listed else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# -- settings and the running registry


def make_settings(root: Path, **environ: str) -> Settings:
    """Settings for a test registry under ``root``; ``environ`` adds DOCKYARD_* overrides."""
    env = {
        "DOCKYARD_STORAGE_ROOT": str(root),
        "DOCKYARD_SERVER_INSTANCE": "test",
        "DOCKYARD_EVENTS_PULL_FLUSH_INTERVAL": "0.02",
        "DOCKYARD_UPLOADS_PURGE_INTERVAL": "3600",
        **environ,
    }
    return load(environ=env)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (tests/pgserver.py); skipped (failed in CI)
    when it is not installed."""
    server = PostgresServer(require_postgres()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """One real SeaweedFS S3 gateway for the session (tests/seaweed.py); each test (or
    store) makes its own bucket with ``new_bucket()``. Skipped (failed in CI) when the
    ``weed`` binary is not installed."""
    server = SeaweedServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url() -> str:
    """The registry's ``database.url``: empty, the embedded SQLite. A module runs its tests
    on PostgreSQL too by overriding it with ``sqlite_and_postgres`` (test_api_referrers.py)."""
    return ""


def sqlite_and_postgres(request: pytest.FixtureRequest) -> str:
    """For a ``database_url`` fixture with ``params=["sqlite", "postgres"]``: a fresh
    PostgreSQL database on the session's server for the second."""
    if request.param == "sqlite":
        return ""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, request: pytest.FixtureRequest) -> Settings:
    """Settings of a test registry whose server.backend is an async test's event loop (the
    app then builds the dashboard app that runs on it, http/web.py); trio for others."""
    backend = "trio"
    if "anyio_backend" in request.fixturenames:  # an async test: not parametrized anew
        chosen = request.getfixturevalue("anyio_backend")
        backend = chosen if isinstance(chosen, str) else chosen[0]
    environ = {"DOCKYARD_SERVER_BACKEND": backend}
    if database_url:
        environ["DOCKYARD_DATABASE_URL"] = database_url
    return make_settings(tmp_path / "data", **environ)


@pytest.fixture
def settings_root(settings: Settings) -> Path:
    """The data directory: blobs, uploads and the SQLite file."""
    return Path(settings.storage.root)


@asynccontextmanager
async def open_services(
    settings: Settings, clock: Callable[[], float] = time.time
) -> AsyncIterator[Services]:
    """A built registry with its background tasks running, as ``dockyard serve`` runs it."""
    svc = build(settings, clock=clock)
    try:
        async with anyio.create_task_group() as tasks:
            await svc.start(tasks)
            yield svc
            await svc.stop()
            tasks.cancel_scope.cancel()
    finally:
        svc.meta.close()


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with open_services(settings) as svc:
        yield svc


ASGIMessage = MutableMapping[str, Any]
ASGIApp = Callable[
    [ASGIMessage, Callable[[], Awaitable[ASGIMessage]], Callable[[ASGIMessage], Awaitable[None]]],
    Awaitable[None],
]


class ASGITransport(httpx.AsyncBaseTransport):
    """An httpx transport that calls an ASGI app in process (on either backend).

    Like ``httpx.ASGITransport``, with one difference that matters here: when the app
    answers before reading the whole request body (a bad length, a rejected chunk), the
    rest of the body is still sent, as a real client would. httpx's transport leaves its
    body generator half-consumed, which is reported as a ResourceWarning (an error
    under this suite's warning filter).
    """

    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        scope: ASGIMessage = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": self.client,
            "root_path": "",
        }
        body = request.stream.__aiter__()
        request_done = False
        response_done = anyio.Event()
        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []

        async def receive() -> ASGIMessage:
            nonlocal request_done
            if request_done:
                await response_done.wait()
                return {"type": "http.disconnect"}
            try:
                chunk = await body.__anext__()
            except StopAsyncIteration:
                request_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message: ASGIMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                assert status is None, "response started twice"
                status = message["status"]
                headers.extend(message.get("headers", []))
            elif message["type"] == "http.response.body":
                assert status is not None, "body before http.response.start"
                assert not response_done.is_set(), "body after the response ended"
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    response_done.set()

        await self.app(scope, receive, send)
        if not request_done:
            async for _ in body:
                pass
        assert response_done.is_set(), "the app returned without finishing its response"
        assert status is not None
        if request.method == "HEAD":
            assert b"".join(parts) == b"", "a HEAD response must not have a body"
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(b"".join(parts)))


def make_client(svc: Services, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client of ``svc``'s app; ``headers`` go on every request (credentials)."""
    return httpx.AsyncClient(transport=ASGITransport(svc.app), base_url=BASE_URL, headers=headers)


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(services) as c:
        yield c


# -- bytes and digests


def random_blob(size: int = 1024) -> bytes:
    return os.urandom(size)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    if algorithm == "blake3":
        return f"blake3:{blake3.blake3(data).hexdigest()}"
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def fake_digest(algorithm: str = "sha256") -> str:
    """A well-formed digest of content nobody pushed."""
    return digest_of(os.urandom(32), algorithm)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    """A streamed request body (httpx sends it chunked, without Content-Length)."""
    for part in parts:
        yield part


# -- checks


# The error-code table of the OCI distribution spec: a 4xx body may carry no other code.
OCI_ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)


def assert_bare(response: httpx.Response, status: int) -> None:
    """The response is ``status`` without a body: no spec error code fits it."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.content == b"", response.text


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an OCI error body with ``code``; returns the first error."""
    assert code in OCI_ERROR_CODES, code
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert isinstance(doc, dict) and list(doc) == ["errors"], doc
    errors = doc["errors"]
    assert isinstance(errors, list) and errors, doc
    for entry in errors:
        assert entry["code"] in OCI_ERROR_CODES, doc
        assert isinstance(entry["message"], str) and entry["message"]
    first = errors[0]
    assert first["code"] == code, doc
    assert isinstance(first, dict)
    return first


def parse_link(value: str) -> str:
    """The URL of a ``Link: <url>; rel="next"`` header."""
    url, _, rel = value.partition(";")
    assert rel.strip() == 'rel="next"', value
    url = url.strip()
    assert url.startswith("<") and url.endswith(">"), value
    return url[1:-1]


# -- pushing content


async def push_blob(
    client: httpx.AsyncClient, repo: str, data: bytes, algorithm: str = "sha256"
) -> str:
    """Push ``data`` with a single POST ?digest=; returns its digest."""
    digest = digest_of(data, algorithm)
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    return digest


async def start_upload(client: httpx.AsyncClient, repo: str, **params: str) -> str:
    """POST a new upload session; returns its Location."""
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params=params)
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    return location


def descriptor(
    media_type: str, content: bytes, algorithm: str = "sha256", **extra: Any
) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": digest_of(content, algorithm),
        "size": len(content),
        **extra,
    }


def data_descriptor(media_type: str, content: bytes, **extra: Any) -> dict[str, Any]:
    """A descriptor that carries ``content`` in its ``data`` field (need not be pushed)."""
    return descriptor(media_type, content, data=base64.b64encode(content).decode(), **extra)


def to_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


def image_manifest(
    config: dict[str, Any],
    layers: Sequence[dict[str, Any]],
    media_type: str = OCI_MANIFEST,
    **extra: Any,
) -> bytes:
    return to_json(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config,
            "layers": list(layers),
            **extra,
        }
    )


def index_manifest(
    manifests: Sequence[dict[str, Any]], media_type: str = OCI_INDEX, **extra: Any
) -> bytes:
    return to_json(
        {"schemaVersion": 2, "mediaType": media_type, "manifests": list(manifests), **extra}
    )


async def put_manifest(
    client: httpx.AsyncClient,
    repo: str,
    reference: str,
    payload: bytes,
    media_type: str | None = OCI_MANIFEST,
    params: dict[str, str | list[str]] | None = None,
) -> httpx.Response:
    headers = {"content-type": media_type} if media_type else {}
    return await client.put(
        f"/v2/{repo}/manifests/{reference}", content=payload, headers=headers, params=params
    )


@dataclass
class Image:
    repo: str
    digest: str
    payload: bytes
    media_type: str
    config: bytes
    layers: list[bytes] = field(default_factory=list)

    @property
    def descriptor(self) -> dict[str, Any]:
        return descriptor(self.media_type, self.payload)


async def push_image(
    client: httpx.AsyncClient,
    repo: str,
    tag: str | None = None,
    *,
    layers: int = 2,
    media_type: str = OCI_MANIFEST,
    config_type: str | None = None,
    layer_type: str | None = None,
    **extra: Any,
) -> Image:
    """Push config and layer blobs, then the manifest (by tag, else by digest)."""
    docker = media_type == DOCKER_MANIFEST
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": os.urandom(8).hex()})
    config_bytes = config.encode()
    layer_blobs = [random_blob(512 + i) for i in range(layers)]
    await push_blob(client, repo, config_bytes)
    for layer in layer_blobs:
        await push_blob(client, repo, layer)
    payload = image_manifest(
        descriptor(config_type or (DOCKER_CONFIG if docker else OCI_CONFIG), config_bytes),
        [descriptor(layer_type or (DOCKER_LAYER if docker else OCI_LAYER), b) for b in layer_blobs],
        media_type,
        **extra,
    )
    digest = digest_of(payload)
    r = await put_manifest(client, repo, tag or digest, payload, media_type)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    return Image(repo, digest, payload, media_type, config_bytes, layer_blobs)


# -- the event log


def events(svc: Services, after: int = 0) -> list[StoredEvent]:
    return svc.meta.events_after(after, 1000)


def last_event_id(svc: Services) -> int:
    found = events(svc)
    return found[-1].id if found else 0


async def wait_for_events(
    svc: Services, after: int, count: int, timeout: float = 5.0
) -> list[StoredEvent]:
    """Wait until at least ``count`` events follow ``after`` (pull events are batched)."""
    with anyio.fail_after(timeout):
        while True:
            found = events(svc, after)
            if len(found) >= count:
                return found
            await anyio.sleep(0.01)


# -- servers started once per session


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite for the azure driver's tests (tests/azurite.py); each test makes its own
    container."""
    from tests.azurite import azurite_server  # the Azure SDK loads only when asked for

    yield from azurite_server(tmp_path_factory.mktemp("azurite"))
