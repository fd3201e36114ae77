"""The s3 driver against a real SeaweedFS S3 gateway (tests/seaweed.py)."""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import trustme

from dockyard.config.model import S3Settings
from dockyard.storage.base import BlobStore, StorageError
from dockyard.storage.s3 import S3Store
from tests.e2e.conftest import Skopeo
from tests.imagegen import OCILayout, build_image, layout_blob, layout_tags, make_layer
from tests.seaweed import SeaweedServer
from tests.serverproc import DockyardServer
from tests.storage_conformance import (
    MiB,
    StorageConformance,
    payload,
    push,
    read_all,
    read_upload_all,
    sha256,
    write_upload,
)
from tests.tools import require_tool


def s3_settings(seaweed: SeaweedServer, bucket: str, **overrides: Any) -> S3Settings:
    settings = S3Settings(
        bucket=bucket,
        endpoint=seaweed.endpoint,
        region=seaweed.region,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        path_style=True,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def bucket_contents(seaweed: SeaweedServer, bucket: str) -> tuple[list[str], list[str]]:
    """(every object key, every incomplete multipart upload's key) in the bucket."""
    client = seaweed.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return keys, [upload["Key"] for upload in uploads]


class TestS3Store(StorageConformance):
    @pytest.fixture
    def bucket(self, seaweed: SeaweedServer) -> str:
        return seaweed.new_bucket()

    @pytest.fixture
    async def store(self, seaweed: SeaweedServer, bucket: str) -> AsyncIterator[BlobStore]:
        # The smallest part size: multipart commits and their boundaries at small sizes.
        s = S3Store(s3_settings(seaweed, bucket, prefix="registry/", part_size=5 * MiB))
        s.test_seaweed, s.test_bucket = seaweed, bucket  # type: ignore[attr-defined]
        yield s
        await s.aclose()

    async def reopen(self, store: BlobStore) -> BlobStore:
        seaweed: SeaweedServer = store.test_seaweed  # type: ignore[attr-defined]
        bucket: str = store.test_bucket  # type: ignore[attr-defined]
        return S3Store(s3_settings(seaweed, bucket, prefix="registry/", part_size=5 * MiB))

    def assert_contained(self, store: BlobStore) -> None:
        seaweed: SeaweedServer = store.test_seaweed  # type: ignore[attr-defined]
        bucket: str = store.test_bucket  # type: ignore[attr-defined]
        keys, uploads = bucket_contents(seaweed, bucket)
        assert [key for key in keys + uploads if not key.startswith("registry/")] == []

    async def assert_empty(self, store: BlobStore) -> None:
        await super().assert_empty(store)
        seaweed: SeaweedServer = store.test_seaweed  # type: ignore[attr-defined]
        bucket: str = store.test_bucket  # type: ignore[attr-defined]
        assert bucket_contents(seaweed, bucket) == ([], [])


# -- s3-specific behaviour -----------------------------------------------------------------


@pytest.fixture
def bucket(seaweed: SeaweedServer) -> str:
    return seaweed.new_bucket()


def new_store(seaweed: SeaweedServer, bucket: str, **overrides: Any) -> S3Store:
    return S3Store(s3_settings(seaweed, bucket, **overrides))


async def test_patches_each_on_a_new_store(seaweed: SeaweedServer, bucket: str) -> None:
    # Three PATCHes of 4 MiB, each handled by another instance that knows only the state.
    data = payload(12 * MiB, seed=50)
    first = new_store(seaweed, bucket)
    state = await first.create_upload("u")
    await first.aclose()
    for offset in range(0, len(data), 4 * MiB):
        store = new_store(seaweed, bucket)
        writer = await store.open_writer("u", offset, state)
        await writer.write(data[offset : offset + 4 * MiB])
        state = await writer.close()
        await store.aclose()
        json.dumps(state)  # the state is saved as JSON with the upload session
    # 8 MiB parts: one full segment and the 4 MiB tail.
    assert [size for _, size in state["segments"]] == [8 * MiB, 4 * MiB]
    store = new_store(seaweed, bucket)
    assert await read_upload_all(store, "u", state, len(data)) == data
    await store.commit_upload("u", state, len(data), sha256(data))
    assert await read_all(store, sha256(data)) == data
    keys, multipart = bucket_contents(seaweed, bucket)
    assert keys == [store.blob_key(sha256(data))] and multipart == []
    await store.aclose()


async def test_short_chunks_become_a_tail_then_a_part(seaweed: SeaweedServer, bucket: str) -> None:
    data = payload(7 * MiB + 3, seed=51)
    store = new_store(seaweed, bucket, part_size=5 * MiB)
    state = await store.create_upload("u")
    sizes = []
    info = store.upload_key("u", "info")
    for offset in range(0, len(data), MiB):
        before = {key for key, _ in state["segments"]}
        writer = await store.open_writer("u", offset, state)
        await writer.write(data[offset : offset + MiB])
        state = await writer.close()
        sizes.append([size for _, size in state["segments"]])
        tail_key = state["segments"][-1][0]
        assert tail_key.startswith(store.upload_prefix("u"))
        assert await store.objects.head(tail_key) == state["segments"][-1][1]  # a stored object
        # What is stored: the saved segments, and the tail this PATCH superseded (its state
        # may not get saved), which the next writer deletes. Not every tail there was.
        stored = set(bucket_contents(seaweed, bucket)[0])
        assert {key for key, _ in state["segments"]} | {info} <= stored
        assert stored <= {key for key, _ in state["segments"]} | {info} | before
    # A tail below 5 MiB grows with each PATCH (a new object each time) until it is a
    # whole part; the next bytes start a new tail.
    assert sizes == [
        [MiB],
        [2 * MiB],
        [3 * MiB],
        [4 * MiB],
        [5 * MiB],
        [5 * MiB, MiB],
        [5 * MiB, 2 * MiB],
        [5 * MiB, 2 * MiB + 3],
    ]
    await store.commit_upload("u", state, len(data), sha256(data))
    assert await read_all(store, sha256(data)) == data
    keys, multipart = bucket_contents(seaweed, bucket)
    # The superseded tails went with the upload.
    assert keys == [store.blob_key(sha256(data))] and multipart == []
    await store.aclose()


async def test_dedupe_keeps_the_stored_object(seaweed: SeaweedServer, bucket: str) -> None:
    store = new_store(seaweed, bucket, part_size=5 * MiB)
    data = payload(11 * MiB, seed=52)
    digest = await push(store, data, upload_id="first", chunk=MiB)
    client = seaweed.client()
    before = client.head_object(Bucket=bucket, Key=store.blob_key(digest))
    # Multipart-sized and small second uploads of the same digest.
    await push(store, data, upload_id="second", chunk=3 * MiB)
    await push(store, b"other bytes", upload_id="third", digest=digest)
    after = client.head_object(Bucket=bucket, Key=store.blob_key(digest))
    assert after["ETag"] == before["ETag"]
    assert after["LastModified"] == before["LastModified"]
    assert await read_all(store, digest) == data
    assert bucket_contents(seaweed, bucket) == ([store.blob_key(digest)], [])
    await store.aclose()


async def test_failed_commit_leaves_no_multipart_upload(
    seaweed: SeaweedServer, bucket: str
) -> None:
    store = new_store(seaweed, bucket, part_size=5 * MiB)
    data = payload(11 * MiB, seed=53)
    state = await write_upload(store, "u", data, chunk=MiB)
    # A segment lost behind the driver's back: the part copy fails, the commit fails.
    seaweed.client().delete_object(Bucket=bucket, Key=state["segments"][1][0])
    with pytest.raises(StorageError):
        await store.commit_upload("u", state, len(data), sha256(data))
    assert await store.stat(sha256(data)) is None
    assert bucket_contents(seaweed, bucket)[1] == []  # the multipart upload was aborted
    await store.delete_upload("u", state)
    assert bucket_contents(seaweed, bucket) == ([], [])
    await store.aclose()


# -- retries, credentials, AWS_CA_BUNDLE -----------------------------------------------------


class FlakyProxy:
    """A loopback HTTP proxy in front of the S3 gateway that first answers the queued
    errors (status, S3 error code), then forwards requests unchanged (signatures hold:
    the Host header is passed through)."""

    def __init__(self, upstream: str, errors: list[tuple[int, str]]) -> None:
        self.upstream = urlsplit(upstream)
        self.errors = list(errors)
        self.seen: list[int] = []  # status answered, per request
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if proxy.errors:
                    status, code = proxy.errors.pop(0)
                    error = f"<Error><Code>{code}</Code><Message>busy</Message></Error>"
                    self._answer(status, [("content-type", "application/xml")], error.encode())
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname or "", proxy.upstream.port, timeout=30
                )
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                answer = conn.getresponse()
                data = answer.read()
                self._answer(answer.status, answer.getheaders(), data)
                conn.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                proxy.seen.append(status)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD answer announces the object's length, not its own (empty) body's.
                length = dict((k.lower(), v) for k, v in headers).get("content-length")
                self.send_header("content-length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_retries_throttling_and_server_errors(seaweed: SeaweedServer, bucket: str) -> None:
    errors = [(503, "SlowDown"), (429, "TooManyRequests"), (500, "InternalError")]
    with FlakyProxy(seaweed.endpoint, errors) as proxy:
        store = new_store(seaweed, bucket, endpoint=proxy.endpoint, max_attempts=5)
        digest = await push(store, b"retried")  # the first request meets all three
        assert proxy.seen[:4] == [503, 429, 500, 200]
        assert await read_all(store, digest) == b"retried"
        await store.aclose()


async def test_retries_are_bounded(seaweed: SeaweedServer, bucket: str) -> None:
    with FlakyProxy(seaweed.endpoint, [(503, "SlowDown")] * 5) as proxy:
        store = new_store(seaweed, bucket, endpoint=proxy.endpoint, max_attempts=2)
        with pytest.raises(StorageError, match="SlowDown"):
            await store.create_upload("u")
        assert proxy.seen == [503, 503]
        await store.aclose()


async def test_no_credentials_in_errors_or_logs(
    seaweed: SeaweedServer, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + secrets.token_urlsafe(24)
    store = new_store(seaweed, bucket, secret_key=wrong, max_attempts=2)
    with pytest.raises(StorageError) as failure:
        await store.create_upload("u")
    with pytest.raises(StorageError) as check_failure:
        await store.check()
    texts = [str(failure.value), str(check_failure.value), repr(store), caplog.text]
    assert "SignatureDoesNotMatch" in texts[0]
    assert texts[0].count("s3 put_object") == 1, texts[0]  # said once, not wrapped again
    for text in texts:
        for credential in (wrong, seaweed.secret_key, seaweed.access_key):
            assert credential not in text
    settings = s3_settings(seaweed, bucket)
    assert seaweed.secret_key not in repr(settings)
    await store.aclose()


async def test_works_with_aws_ca_bundle_set(
    seaweed: SeaweedServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine's environment sets AWS_CA_BUNDLE; a plain-HTTP endpoint must not mind.
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    store = new_store(seaweed, bucket)
    digest = await push(store, b"bundled")
    assert await read_all(store, digest) == b"bundled"
    await store.aclose()


# -- the HTTP API with redirect = true -------------------------------------------------------


def s3_server(seaweed: SeaweedServer, bucket: str, root: Path) -> DockyardServer:
    """A dockyard serve process (not started) on ``bucket`` with redirect = true.
    AWS_CA_BUNDLE is set (to a CA that signed nothing): it must not matter over http."""
    trustme.CA().cert_pem.write_to_path(str(root / "ca.pem"))
    env = {
        "AWS_CA_BUNDLE": str(root / "ca.pem"),
        "DOCKYARD_STORAGE_DRIVER": "s3",
        "DOCKYARD_STORAGE_S3_BUCKET": bucket,
        "DOCKYARD_STORAGE_S3_ENDPOINT": seaweed.endpoint,
        "DOCKYARD_STORAGE_S3_REGION": seaweed.region,
        "DOCKYARD_STORAGE_S3_ACCESS_KEY": seaweed.access_key,
        "DOCKYARD_STORAGE_S3_SECRET_KEY": seaweed.secret_key,
        "DOCKYARD_STORAGE_S3_PATH_STYLE": "true",
        "DOCKYARD_STORAGE_S3_PART_SIZE": str(5 * MiB),
        "DOCKYARD_STORAGE_S3_REDIRECT": "true",
        "DOCKYARD_LOG_LEVEL": "debug",
    }
    return DockyardServer(root / "data", env=env)


def stopped_server_log(seaweed: SeaweedServer, server: DockyardServer) -> str:
    """The whole log of a stopped server, checked for credentials and tracebacks."""
    log = server.log_path.read_text(errors="replace")  # stopped: every line is written
    # Debug level, and still no credential (presigned URLs name the access key).
    assert seaweed.secret_key not in log and seaweed.access_key not in log
    assert "Traceback" not in log
    return log


@pytest.fixture(scope="module")
def s3_registry(
    seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DockyardServer, str]]:
    """A running s3_server on a bucket of its own, and the bucket."""
    bucket = seaweed.new_bucket("registry")
    server = s3_server(seaweed, bucket, tmp_path_factory.mktemp("s3-registry"))
    with server:
        yield server, bucket
    stopped_server_log(seaweed, server)


@pytest.mark.e2e
def test_blob_get_redirects_to_a_presigned_url(
    seaweed: SeaweedServer, s3_registry: tuple[DockyardServer, str]
) -> None:
    server, bucket = s3_registry
    data = payload(6 * MiB + 5, seed=60)
    digest = sha256(data)
    with httpx.Client() as http:
        started = http.post(f"{server.url}/v2/redirected/blobs/uploads/")
        assert started.status_code == 202
        location = urljoin(server.url, started.headers["location"])
        done = http.put(location, params={"digest": digest}, content=data)
        assert done.status_code == 201, done.text
        blob = f"{server.url}/v2/redirected/blobs/{digest}"

        answer = http.get(blob)
        assert answer.status_code == 307
        target = answer.headers["location"]
        assert target.startswith(f"{seaweed.endpoint}/{bucket}/")
        assert "X-Amz-Signature=" in target
        followed = http.get(blob, follow_redirects=True)
        assert followed.status_code == 200 and followed.content == data
        assert followed.headers["content-type"] == "application/octet-stream"
        # HEAD and ranged GETs are answered here.
        head = http.head(blob)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        ranged = http.get(blob, headers={"range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == data[10:20]
        # A blob not in the repository is unknown: no redirect for it.
        assert http.get(f"{server.url}/v2/other/blobs/{digest}").status_code == 404


@pytest.mark.e2e
def test_skopeo_round_trip_through_the_bucket(
    seaweed: SeaweedServer, bucket: str, tmp_path: Path
) -> None:
    # A real client pushes (multipart-sized layers among them) and pulls every blob
    # through the 307 to the store.
    source = OCILayout(tmp_path / "source")
    image = source.add_image(
        "v1", build_image([make_layer(70, files=3, file_size=4 * MiB), make_layer(71)])
    )
    pulled = tmp_path / "pulled"
    with s3_server(seaweed, bucket, tmp_path) as server:
        skopeo = Skopeo(require_tool("skopeo"), server)
        skopeo.copy(source.ref("v1"), skopeo.docker("s3/app:v1"), "--preserve-digests")
        skopeo.copy(skopeo.docker("s3/app:v1"), f"oci:{pulled}:v1", "--preserve-digests")
    assert layout_tags(pulled) == {"v1": image.digest}
    for layer in image.layers:
        assert layout_blob(pulled, layer.digest) == layer.blob.data
    log = stopped_server_log(seaweed, server)
    for layer in image.layers:  # skopeo fetched each layer from the store
        assert f'"GET /v2/s3/app/blobs/{layer.digest}\\" 307 ' in log
    keys, multipart = bucket_contents(seaweed, bucket)
    assert multipart == []
    assert [key for key in keys if not key.startswith("blobs/")] == []
