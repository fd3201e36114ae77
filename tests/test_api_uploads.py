"""Blob uploads: POST (session, monolithic, mount), PATCH, GET status, PUT, DELETE."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from dockyard.services import Services
from tests.authfixtures import (  # noqa: F401
    client_logged_in,
    root_client,
    settings_with_and_without_auth,
    with_tokens,
)
from tests.conftest import (
    assert_error,
    chunks,
    digest_of,
    fake_digest,
    open_services,
    push_blob,
    random_blob,
    start_upload,
)

UPLOAD_PATH = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<id>[^/]+)")


def upload_id(location: str) -> str:
    match = UPLOAD_PATH.fullmatch(location)
    assert match is not None, location
    return match["id"]


def assert_upload_headers(r: httpx.Response, location: str, offset: int) -> None:
    assert r.headers["location"] == location
    assert r.headers["range"] == f"0-{max(offset - 1, 0)}"
    assert r.headers["docker-upload-uuid"] == upload_id(location)


async def assert_not_stored(client: httpx.AsyncClient, repo: str, digest: str) -> None:
    r = await client.head(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404
    assert_error(await client.get(f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


async def assert_stored(client: httpx.AsyncClient, repo: str, data: bytes, digest: str) -> None:
    r = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, r.text
    assert r.headers["docker-content-digest"] == digest
    assert r.content == data


def leftover_uploads(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "uploads").iterdir())


# -- POST


async def test_start_upload(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/lib/app/blobs/uploads/", headers={"content-length": "0"})
    assert r.status_code == 202
    location = r.headers["location"]
    assert UPLOAD_PATH.fullmatch(location)
    assert_upload_headers(r, location, 0)
    assert r.headers["range"] == "0-0"
    assert r.headers["content-length"] == "0"
    # Each POST is a new session.
    again = await client.post("/v2/lib/app/blobs/uploads/")
    assert again.headers["docker-upload-uuid"] != r.headers["docker-upload-uuid"]
    # The session exists and is empty.
    status = await client.get(location)
    assert status.status_code == 204
    assert_upload_headers(status, location, 0)


async def test_start_upload_without_trailing_slash(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/lib/app/blobs/uploads")
    assert r.status_code == 202
    assert UPLOAD_PATH.fullmatch(r.headers["location"])


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
async def test_monolithic_post(client: httpx.AsyncClient, algorithm: str) -> None:
    data = random_blob(200_000)
    digest = digest_of(data, algorithm)
    r = await client.post("/v2/mono/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/mono/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest
    await assert_stored(client, "mono", data, digest)


async def test_monolithic_post_streamed(client: httpx.AsyncClient) -> None:
    parts = [random_blob(70_000) for _ in range(4)]
    data = b"".join(parts)
    digest = digest_of(data)
    r = await client.post(
        "/v2/mono/blobs/uploads/", params={"digest": digest}, content=chunks(*parts)
    )
    assert r.status_code == 201, r.text
    await assert_stored(client, "mono", data, digest)


async def test_monolithic_post_wrong_digest(client: httpx.AsyncClient, settings_root: Path) -> None:
    data = random_blob(1000)
    wrong = digest_of(data + b"!")
    r = await client.post("/v2/mono/blobs/uploads/", params={"digest": wrong}, content=data)
    assert_error(r, 400, "DIGEST_INVALID")
    await assert_not_stored(client, "mono", wrong)
    await assert_not_stored(client, "mono", digest_of(data))
    assert leftover_uploads(settings_root) == []
    # The repository was not created by the failed push.
    assert (await client.get("/v2/_catalog")).json() == {"repositories": []}


@pytest.mark.parametrize("announced", ["999", "1001", "0", "1\u00b2", "+1000", "9" * 5000])
async def test_monolithic_post_content_length_mismatch(
    client: httpx.AsyncClient, settings_root: Path, announced: str
) -> None:
    data = random_blob(1000)
    digest = digest_of(data)
    r = await client.post(
        "/v2/mono/blobs/uploads/",
        params={"digest": digest},
        content=data,
        headers={b"content-length": announced.encode("latin-1")},
    )
    assert_error(r, 400, "SIZE_INVALID")
    await assert_not_stored(client, "mono", digest)
    assert leftover_uploads(settings_root) == []


async def test_monolithic_post_zero_bytes(client: httpx.AsyncClient) -> None:
    digest = digest_of(b"")
    r = await client.post("/v2/mono/blobs/uploads/", params={"digest": digest})
    assert r.status_code == 201
    await assert_stored(client, "mono", b"", digest)


async def test_monolithic_post_malformed_digest(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/mono/blobs/uploads/", params={"digest": "sha256:zz"}, content=b"x")
    assert_error(r, 400, "DIGEST_INVALID")
    r = await client.post("/v2/mono/blobs/uploads/", params={"digest": ""}, content=b"x")
    assert_error(r, 400, "DIGEST_INVALID")


async def test_monolithic_post_dedupes(client: httpx.AsyncClient) -> None:
    data = random_blob(500)
    digest = await push_blob(client, "a", data)
    assert await push_blob(client, "a", data) == digest
    assert await push_blob(client, "b", data) == digest
    await assert_stored(client, "a", data, digest)
    await assert_stored(client, "b", data, digest)


# -- mount


async def test_mount_from(client: httpx.AsyncClient) -> None:
    data = random_blob(100)
    digest = await push_blob(client, "src/repo", data)
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src/repo"})
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/dst/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest
    await assert_stored(client, "dst", data, digest)
    # Mounting again is harmless.
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src/repo"})
    assert r.status_code == 201


async def test_mount_without_from_finds_any_repository(client: httpx.AsyncClient) -> None:
    data = random_blob(100)
    digest = await push_blob(client, "somewhere/else", data)
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest})
    if with_tokens(client):
        # A token grants pull on the repositories it names only (here dst): nothing to
        # mount from, so a plain upload begins.
        assert r.status_code == 202
        return
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/dst/blobs/{digest}"
    await assert_stored(client, "dst", data, digest)


async def test_mount_not_readable_there_starts_a_session(client: httpx.AsyncClient) -> None:
    data = random_blob(100)
    digest = await push_blob(client, "holder", data)
    # The blob is not in "other", so mounting from there fails: a normal upload begins.
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "other"})
    assert r.status_code == 202
    location = r.headers["location"]
    assert_upload_headers(r, location, 0)
    await assert_not_stored(client, "dst", digest)
    # The session works: finish it with the content.
    r = await client.put(location, params={"digest": digest}, content=data)
    assert r.status_code == 201
    await assert_stored(client, "dst", data, digest)


async def test_mount_of_unknown_blob_starts_a_session(client: httpx.AsyncClient) -> None:
    digest = fake_digest()
    for params in ({"mount": digest}, {"mount": digest, "from": "nowhere"}):
        r = await client.post("/v2/dst/blobs/uploads/", params=params)
        assert r.status_code == 202
        assert UPLOAD_PATH.fullmatch(r.headers["location"])
    await assert_not_stored(client, "dst", digest)


async def test_mount_bad_input(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "src", b"abc")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": "sha256:nope", "from": "src"})
    assert_error(r, 400, "DIGEST_INVALID")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "Bad/Name"})
    assert_error(r, 400, "NAME_INVALID")
    await assert_not_stored(client, "dst", digest)


# -- chunked uploads


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
async def test_chunked_upload(client: httpx.AsyncClient, algorithm: str) -> None:
    parts = [random_blob(100_000), random_blob(65_536), random_blob(1)]
    data = b"".join(parts)
    digest = digest_of(data, algorithm)
    params = {} if algorithm == "sha256" else {"digest-algorithm": algorithm}
    location = await start_upload(client, "chunky", **params)
    offset = 0
    for part in parts:
        r = await client.patch(
            location,
            content=part,
            headers={
                "content-range": f"{offset}-{offset + len(part) - 1}",
                "content-type": "application/octet-stream",
            },
        )
        offset += len(part)
        assert r.status_code == 202, r.text
        assert_upload_headers(r, location, offset)
        status = await client.get(location)
        assert status.status_code == 204
        assert_upload_headers(status, location, offset)
        assert status.content == b""
    r = await client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/chunky/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest
    await assert_stored(client, "chunky", data, digest)
    # The session is gone once finished.
    assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
async def test_put_with_final_chunk(client: httpx.AsyncClient, algorithm: str) -> None:
    first, last = random_blob(5000), random_blob(3000)
    digest = digest_of(first + last, algorithm)
    location = await start_upload(client, "chunky", **{"digest-algorithm": algorithm})
    r = await client.patch(location, content=first, headers={"content-range": "0-4999"})
    assert r.status_code == 202
    r = await client.put(
        location,
        params={"digest": digest},
        content=last,
        headers={"content-range": "5000-7999"},
    )
    assert r.status_code == 201, r.text
    await assert_stored(client, "chunky", first + last, digest)


async def test_post_then_put_monolithic(client: httpx.AsyncClient) -> None:
    data = random_blob(10_000)
    digest = digest_of(data)
    location = await start_upload(client, "pp")
    r = await client.put(location, params={"digest": digest}, content=data)
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/pp/blobs/{digest}"
    await assert_stored(client, "pp", data, digest)


async def test_patch_streamed_without_content_range(client: httpx.AsyncClient) -> None:
    parts = [random_blob(40_000) for _ in range(3)]
    data = b"".join(parts)
    location = await start_upload(client, "stream")
    r = await client.patch(location, content=chunks(*parts[:2]))
    assert r.status_code == 202, r.text
    assert "content-length" not in r.request.headers  # really streamed, chunked
    assert_upload_headers(r, location, 80_000)
    r = await client.patch(location, content=chunks(parts[2]))
    assert r.status_code == 202
    assert_upload_headers(r, location, 120_000)
    r = await client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201
    await assert_stored(client, "stream", data, digest_of(data))


async def test_digest_algorithm_mismatch_at_put_is_rehashed(client: httpx.AsyncClient) -> None:
    # Started as sha256, finished with a sha512 digest: the registry re-reads the bytes.
    data = random_blob(20_000)
    location = await start_upload(client, "mixed")
    r = await client.patch(location, content=data, headers={"content-range": "0-19999"})
    assert r.status_code == 202
    digest = digest_of(data, "sha512")
    r = await client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    await assert_stored(client, "mixed", data, digest)


async def test_unsupported_digest_algorithm(client: httpx.AsyncClient) -> None:
    for algorithm in ("md5", "SHA256", "sha384", ""):
        r = await client.post("/v2/algo/blobs/uploads/", params={"digest-algorithm": algorithm})
        if algorithm == "":
            assert r.status_code == 202  # empty means the default
            continue
        assert_error(r, 400, "DIGEST_INVALID")


@pytest.mark.parametrize("content_range", ["5-9", "1-10", "100-199"])
async def test_out_of_order_chunk(client: httpx.AsyncClient, content_range: str) -> None:
    location = await start_upload(client, "ooo")
    first = random_blob(10)
    r = await client.patch(location, content=first, headers={"content-range": "0-9"})
    assert r.status_code == 202
    start, end = (int(x) for x in content_range.split("-"))
    r = await client.patch(
        location, content=random_blob(end - start + 1), headers={"content-range": content_range}
    )
    assert_error(r, 416, "BLOB_UPLOAD_INVALID")
    assert r.headers["range"] == "0-9"
    # Nothing changed: the upload continues where it was.
    status = await client.get(location)
    assert_upload_headers(status, location, 10)
    second = random_blob(10)
    r = await client.patch(location, content=second, headers={"content-range": "10-19"})
    assert r.status_code == 202
    digest = digest_of(first + second)
    assert (await client.put(location, params={"digest": digest})).status_code == 201
    await assert_stored(client, "ooo", first + second, digest)


async def test_first_chunk_must_start_at_zero(client: httpx.AsyncClient) -> None:
    location = await start_upload(client, "ooo")
    r = await client.patch(location, content=b"abcde", headers={"content-range": "1-5"})
    assert_error(r, 416, "BLOB_UPLOAD_INVALID")
    assert r.headers["range"] == "0-0"
    assert_upload_headers(await client.get(location), location, 0)


async def test_retried_chunk_is_rejected(client: httpx.AsyncClient) -> None:
    location = await start_upload(client, "retry")
    part = random_blob(1000)
    headers = {"content-range": "0-999"}
    assert (await client.patch(location, content=part, headers=headers)).status_code == 202
    r = await client.patch(location, content=part, headers=headers)
    assert_error(r, 416, "BLOB_UPLOAD_INVALID")
    assert r.headers["range"] == "0-999"
    # The repeated bytes were not appended.
    digest = digest_of(part)
    r = await client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    await assert_stored(client, "retry", part, digest)


async def test_final_put_with_wrong_content_range(client: httpx.AsyncClient) -> None:
    location = await start_upload(client, "ooo")
    part = random_blob(10)
    assert (await client.patch(location, content=part, headers={"content-range": "0-9"})).is_success
    tail = random_blob(5)
    digest = digest_of(part + tail)
    r = await client.put(
        location, params={"digest": digest}, content=tail, headers={"content-range": "11-15"}
    )
    assert_error(r, 416, "BLOB_UPLOAD_INVALID")
    assert r.headers["range"] == "0-9"
    await assert_not_stored(client, "ooo", digest)
    r = await client.put(
        location, params={"digest": digest}, content=tail, headers={"content-range": "10-14"}
    )
    assert r.status_code == 201


@pytest.mark.parametrize(
    ("content_range", "status"),
    [
        ("abc", 400),
        ("0-", 400),
        ("-5", 400),
        ("bytes=0-5", 400),
        ("0-5/6", 400),
        ("5-2", 416),
        # Too large for 64 bits: out of order like any other start past the offset.
        ("18446744073709551616-18446744073709551621", 416),
        # Digits of other scripts are not numbers here (int() of "\u00b2" raised: a 500).
        ("\u00b2-\u00b3", 400),
        ("0-\u00b9", 400),
    ],
)
async def test_malformed_content_range(
    client: httpx.AsyncClient, content_range: str, status: int
) -> None:
    location = await start_upload(client, "bad")
    # Latin-1, as a client's raw header bytes decode ("\u00b2" is the byte 0xb2).
    headers = {b"content-range": content_range.encode("latin-1")}
    r = await client.patch(location, content=b"abcdef", headers=headers)
    assert_error(r, status, "BLOB_UPLOAD_INVALID")
    assert_upload_headers(await client.get(location), location, 0)


@pytest.mark.parametrize("content_range", ["0-" + "9" * 5000, "9" * 5000 + "-" + "9" * 5001])
async def test_content_range_of_thousands_of_digits(
    client: httpx.AsyncClient, content_range: str
) -> None:
    # Far longer than the body announced: a size error, not int()'s digit limit (a 500).
    location = await start_upload(client, "bad")
    r = await client.patch(location, content=b"abcdef", headers={"content-range": content_range})
    assert_error(r, 400, "SIZE_INVALID")
    assert_upload_headers(await client.get(location), location, 0)


@pytest.mark.parametrize(
    ("content_range", "announced", "body"),
    [
        ("0-9", "10", b"x" * 9),  # body shorter than both
        ("0-9", "10", b"x" * 11),  # body longer than both
        ("0-9", "9", b"x" * 9),  # headers disagree with each other
        (None, "10", b"x" * 12),  # no Content-Range: Content-Length is the size
        (None, "10", b"x" * 3),
    ],
)
async def test_patch_length_mismatch_changes_nothing(
    client: httpx.AsyncClient, content_range: str | None, announced: str, body: bytes
) -> None:
    location = await start_upload(client, "sizes")
    head = random_blob(100)
    r = await client.patch(location, content=head, headers={"content-range": "0-99"})
    assert r.status_code == 202
    headers = {"content-length": announced}
    if content_range is not None:
        start, end = (int(x) + 100 for x in content_range.split("-"))
        headers["content-range"] = f"{start}-{end}"
    r = await client.patch(location, content=body, headers=headers)
    assert_error(r, 400, "SIZE_INVALID")
    assert_upload_headers(await client.get(location), location, 100)
    # The upload is still usable and holds exactly what was accepted.
    tail = random_blob(10)
    r = await client.patch(location, content=tail, headers={"content-range": "100-109"})
    assert r.status_code == 202, r.text
    digest = digest_of(head + tail)
    r = await client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    await assert_stored(client, "sizes", head + tail, digest)


async def test_blake3_failed_patch_does_not_poison_the_upload(client: httpx.AsyncClient) -> None:
    # blake3 cannot save its state, so the running hasher is kept in memory; a chunk
    # that is rejected half-way must not leave its bytes in that hasher.
    location = await start_upload(client, "b3", **{"digest-algorithm": "blake3"})
    head, tail = random_blob(1000), random_blob(1000)
    assert (await client.patch(location, content=head)).status_code == 202
    r = await client.patch(location, content=random_blob(50), headers={"content-length": "20"})
    assert_error(r, 400, "SIZE_INVALID")
    assert (await client.patch(location, content=tail)).status_code == 202
    digest = digest_of(head + tail, "blake3")
    r = await client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    await assert_stored(client, "b3", head + tail, digest)


async def test_put_length_mismatch_changes_nothing(client: httpx.AsyncClient) -> None:
    location = await start_upload(client, "sizes")
    data = random_blob(100)
    digest = digest_of(data)
    r = await client.put(
        location, params={"digest": digest}, content=data, headers={"content-length": "90"}
    )
    assert_error(r, 400, "SIZE_INVALID")
    await assert_not_stored(client, "sizes", digest)
    assert_upload_headers(await client.get(location), location, 0)
    r = await client.put(location, params={"digest": digest}, content=data)
    assert r.status_code == 201


async def test_concurrent_patches_of_one_upload(client: httpx.AsyncClient) -> None:
    location = await start_upload(client, "lease")
    holding, release = anyio.Event(), anyio.Event()
    first = random_blob(100)

    async def slow_body() -> AsyncIterator[bytes]:
        yield first[:50]
        holding.set()  # the registry asked for more: it holds the upload's lease
        await release.wait()
        yield first[50:]

    results: list[httpx.Response] = []

    async def slow_patch() -> None:
        results.append(await client.patch(location, content=slow_body()))

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(slow_patch)
        await holding.wait()
        r = await client.patch(location, content=b"zzzz", headers={"content-range": "0-3"})
        assert_error(r, 416, "BLOB_UPLOAD_INVALID")
        release.set()
    assert results[0].status_code == 202
    assert_upload_headers(results[0], location, 100)
    digest = digest_of(first)
    assert (await client.put(location, params={"digest": digest})).status_code == 201
    await assert_stored(client, "lease", first, digest)


async def test_zero_byte_chunked_upload(client: httpx.AsyncClient) -> None:
    location = await start_upload(client, "zero")
    r = await client.patch(location, content=b"")
    assert r.status_code == 202
    assert_upload_headers(r, location, 0)
    digest = digest_of(b"")
    r = await client.put(location, params={"digest": digest})
    assert r.status_code == 201, r.text
    await assert_stored(client, "zero", b"", digest)


# -- PUT errors


async def test_put_wrong_digest_stores_nothing(
    client: httpx.AsyncClient, settings_root: Path
) -> None:
    location = await start_upload(client, "wrong")
    data = random_blob(1000)
    r = await client.patch(location, content=data, headers={"content-range": "0-999"})
    assert r.status_code == 202
    wrong = digest_of(data + b"x")
    r = await client.put(location, params={"digest": wrong})
    assert_error(r, 400, "DIGEST_INVALID")
    await assert_not_stored(client, "wrong", wrong)
    await assert_not_stored(client, "wrong", digest_of(data))
    # The session is gone with its bytes.
    assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        await client.put(location, params={"digest": digest_of(data)}),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    assert leftover_uploads(settings_root) == []


async def test_put_without_or_with_malformed_digest(client: httpx.AsyncClient) -> None:
    location = await start_upload(client, "nodigest")
    data = random_blob(10)
    assert (await client.patch(location, content=data)).status_code == 202
    assert_error(await client.put(location), 400, "DIGEST_INVALID")
    assert_error(await client.put(location, params={"digest": "sha256:1"}), 400, "DIGEST_INVALID")
    assert_error(
        await client.put(location, params={"digest": "md5:" + "a" * 32}), 400, "DIGEST_INVALID"
    )
    # The session survived the bad requests.
    assert_upload_headers(await client.get(location), location, 10)
    r = await client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201


# -- cancel and unknown sessions


async def test_cancel_upload(client: httpx.AsyncClient, settings_root: Path) -> None:
    location = await start_upload(client, "cancel")
    data = random_blob(100)
    assert (await client.patch(location, content=data)).status_code == 202
    r = await client.delete(location)
    assert r.status_code == 204
    assert r.content == b""
    assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await client.patch(location, content=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        await client.put(location, params={"digest": digest_of(data)}), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    assert_error(await client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_not_stored(client, "cancel", digest_of(data))
    assert leftover_uploads(settings_root) == []


async def test_unknown_upload_id(client: httpx.AsyncClient) -> None:
    location = "/v2/repo/blobs/uploads/0123456789abcdef0123456789abcdef"
    assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await client.patch(location, content=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
    r = await client.put(location, params={"digest": digest_of(b"x")}, content=b"x")
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_not_stored(client, "repo", digest_of(b"x"))


async def test_upload_id_of_another_repository(client: httpx.AsyncClient) -> None:
    location = await start_upload(client, "owner")
    data = random_blob(10)
    assert (await client.patch(location, content=data)).status_code == 202
    foreign = location.replace("/v2/owner/", "/v2/intruder/")
    assert_error(await client.get(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await client.patch(foreign, content=b"more"), 404, "BLOB_UPLOAD_UNKNOWN")
    r = await client.put(foreign, params={"digest": digest_of(data)})
    assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await client.delete(foreign), 404, "BLOB_UPLOAD_UNKNOWN")
    await assert_not_stored(client, "intruder", digest_of(data))
    # The owner's session is intact.
    assert_upload_headers(await client.get(location), location, 10)
    r = await client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201
    await assert_not_stored(client, "intruder", digest_of(data))


async def test_upload_survives_a_new_app_on_the_same_data(
    services: Services, client: httpx.AsyncClient
) -> None:
    # Resumable: the saved hash state lets a fresh process continue the upload (started
    # and stopped as a worker is: what it built is closed again).
    location = await start_upload(client, "resume")
    head, tail = random_blob(70_000), random_blob(30_000)
    assert (await client.patch(location, content=head)).status_code == 202
    async with open_services(services.settings) as other, root_client(other) as second:
        assert_upload_headers(await second.get(location), location, 70_000)
        r = await second.put(location, params={"digest": digest_of(head + tail)}, content=tail)
        assert r.status_code == 201, r.text
    await assert_stored(client, "resume", head + tail, digest_of(head + tail))


# -- dedupe


async def test_two_sessions_of_the_same_blob(
    client: httpx.AsyncClient, settings_root: Path
) -> None:
    data = random_blob(10_000)
    digest = digest_of(data)
    first = await start_upload(client, "dup/a")
    second = await start_upload(client, "dup/b")
    assert (await client.patch(first, content=data)).status_code == 202
    assert (await client.patch(second, content=data)).status_code == 202
    assert (await client.put(first, params={"digest": digest})).status_code == 201
    r = await client.put(second, params={"digest": digest})
    assert r.status_code == 201, r.text
    await assert_stored(client, "dup/a", data, digest)
    await assert_stored(client, "dup/b", data, digest)
    assert leftover_uploads(settings_root) == []


async def test_push_again_after_delete(client: httpx.AsyncClient) -> None:
    data = random_blob(1000)
    digest = await push_blob(client, "again", data)
    assert (await client.delete(f"/v2/again/blobs/{digest}")).status_code == 202
    await assert_not_stored(client, "again", digest)
    location = await start_upload(client, "again")
    r = await client.put(location, params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    await assert_stored(client, "again", data, digest)
