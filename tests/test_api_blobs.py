"""Blob reads and deletes: GET/HEAD, ranges, DELETE, repository isolation."""

from __future__ import annotations

import httpx
import pytest

from tests.authfixtures import client_logged_in, settings_with_and_without_auth  # noqa: F401
from tests.conftest import assert_bare, assert_error, fake_digest, push_blob, random_blob


def assert_blob_headers(r: httpx.Response, digest: str, length: int) -> None:
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["content-length"] == str(length)
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
async def test_get_and_head_blob(client: httpx.AsyncClient, algorithm: str) -> None:
    data = random_blob(3 * 1024 * 1024 + 17)  # more than one 1 MiB read
    digest = await push_blob(client, "lib/app", data, algorithm)

    r = await client.get(f"/v2/lib/app/blobs/{digest}")
    assert r.status_code == 200
    assert_blob_headers(r, digest, len(data))
    assert r.content == data

    r = await client.head(f"/v2/lib/app/blobs/{digest}")
    assert r.status_code == 200
    assert_blob_headers(r, digest, len(data))
    assert r.content == b""


async def test_zero_byte_blob(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "empty", b"")
    assert digest == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    r = await client.get(f"/v2/empty/blobs/{digest}")
    assert r.status_code == 200
    assert_blob_headers(r, digest, 0)
    assert r.content == b""
    # Nothing to select in an empty blob.
    r = await client.get(f"/v2/empty/blobs/{digest}", headers={"range": "bytes=0-"})
    assert_bare(r, 416)
    assert r.headers["content-range"] == "bytes */0"


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=100-", 100, 999),
        ("bytes=-10", 990, 999),
        ("bytes=990-5000", 990, 999),  # end past the blob is clamped
        ("bytes=-5000", 0, 999),  # suffix longer than the blob: the whole blob
        # Numbers too large for 64 bits are out of range like any other.
        ("bytes=990-" + "9" * 30, 990, 999),
        ("bytes=-18446744073709551616", 0, 999),
        ("bytes=-" + "9" * 5000, 0, 999),
    ],
)
async def test_range(client: httpx.AsyncClient, range_header: str, start: int, end: int) -> None:
    data = random_blob(1000)
    digest = await push_blob(client, "ranged", data)
    for method in ("GET", "HEAD"):
        r = await client.request(
            method, f"/v2/ranged/blobs/{digest}", headers={"range": range_header}
        )
        assert r.status_code == 206, (method, r.text)
        assert r.headers["content-range"] == f"bytes {start}-{end}/1000"
        assert_blob_headers(r, digest, end - start + 1)
        assert r.content == (data[start : end + 1] if method == "GET" else b"")


@pytest.mark.parametrize(
    "range_header",
    [
        "bytes=1000-",
        "bytes=5000-6000",
        "bytes=-0",
        "bytes=18446744073709551616-",  # 2**64
        "bytes=" + "9" * 25 + "-" + "9" * 26,
        "bytes=" + "9" * 5000 + "-",
    ],
)
async def test_unsatisfiable_range(client: httpx.AsyncClient, range_header: str) -> None:
    data = random_blob(1000)
    digest = await push_blob(client, "ranged", data)
    r = await client.get(f"/v2/ranged/blobs/{digest}", headers={"range": range_header})
    assert_bare(r, 416)
    assert r.headers["content-range"] == "bytes */1000"


@pytest.mark.parametrize(
    "range_header",
    [
        "bytes=5-2",
        "items=0-10",
        "bytes=0-1,5-6",
        "bytes=-",
        # Digits of other scripts are not numbers (int() of "\u00b2" raised: a 500).
        "bytes=\u00b2-\u00b3",
        "bytes=-\u00b9",
        "bytes=0-\u00b2",
        "bytes=+1-2",
    ],
)
async def test_unusable_range_is_ignored(client: httpx.AsyncClient, range_header: str) -> None:
    # RFC 9110: a Range the server cannot use is ignored and the whole blob is sent.
    data = random_blob(100)
    digest = await push_blob(client, "ranged", data)
    r = await client.get(
        f"/v2/ranged/blobs/{digest}", headers={b"range": range_header.encode("latin-1")}
    )
    assert r.status_code == 200
    assert "content-range" not in r.headers
    assert r.content == data


async def test_unknown_blob(client: httpx.AsyncClient) -> None:
    await push_blob(client, "known", b"something")
    digest = fake_digest()
    r = await client.get(f"/v2/known/blobs/{digest}")
    err = assert_error(r, 404, "BLOB_UNKNOWN")
    assert digest in err["message"]
    r = await client.head(f"/v2/known/blobs/{digest}")
    assert r.status_code == 404
    assert r.content == b""
    # A repository that does not exist at all.
    r = await client.get(f"/v2/nothing/here/blobs/{digest}")
    assert_error(r, 404, "BLOB_UNKNOWN")


async def test_delete_blob(client: httpx.AsyncClient) -> None:
    data = random_blob(100)
    digest = await push_blob(client, "del", data)
    other = await push_blob(client, "del", random_blob(100))

    r = await client.delete(f"/v2/del/blobs/{digest}")
    assert r.status_code == 202
    assert r.content == b""

    r = await client.head(f"/v2/del/blobs/{digest}")
    assert r.status_code == 404
    assert_error(await client.get(f"/v2/del/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(await client.delete(f"/v2/del/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    # Other blobs are untouched.
    r = await client.get(f"/v2/del/blobs/{other}")
    assert r.status_code == 200


async def test_delete_blob_only_unlinks_that_repository(client: httpx.AsyncClient) -> None:
    data = random_blob(100)
    digest = await push_blob(client, "one", data)
    await push_blob(client, "two", data)
    r = await client.delete(f"/v2/one/blobs/{digest}")
    assert r.status_code == 202
    assert (await client.head(f"/v2/one/blobs/{digest}")).status_code == 404
    r = await client.get(f"/v2/two/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data


async def test_delete_unknown_blob(client: httpx.AsyncClient) -> None:
    assert_error(await client.delete(f"/v2/nope/blobs/{fake_digest()}"), 404, "BLOB_UNKNOWN")


async def test_blob_is_private_to_its_repository_until_mounted(client: httpx.AsyncClient) -> None:
    data = random_blob(300)
    digest = await push_blob(client, "team/a", data)
    assert_error(await client.get(f"/v2/team/b/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert (await client.head(f"/v2/team/b/blobs/{digest}")).status_code == 404

    r = await client.post("/v2/team/b/blobs/uploads/", params={"mount": digest, "from": "team/a"})
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/team/b/blobs/{digest}"
    assert r.headers["docker-content-digest"] == digest

    r = await client.get(f"/v2/team/b/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:abc",
        "sha256:" + "A" * 64,  # upper-case hex
        "md5:d41d8cd98f00b204e9800998ecf8427e",  # unsupported algorithm
        "sha512:" + "a" * 64,  # wrong length for sha512
        "sha256",
        "notadigest",
    ],
)
async def test_malformed_blob_digest(client: httpx.AsyncClient, bad: str) -> None:
    await push_blob(client, "repo", b"x")
    for method in ("GET", "DELETE"):
        r = await client.request(method, f"/v2/repo/blobs/{bad}")
        assert_error(r, 400, "DIGEST_INVALID")
    r = await client.head(f"/v2/repo/blobs/{bad}")
    assert r.status_code == 400
