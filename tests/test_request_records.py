"""The one record per request the HTTP layer hands its observers (access log, metrics):
route class, repository, reference, status, OCI error code and the bytes moved."""

from __future__ import annotations

import httpx

from dockyard.observability.record import RequestRecord
from dockyard.services import Services
from tests.conftest import digest_of, fake_digest, push_blob, push_image, random_blob


async def test_records_name_route_repository_status_and_bytes(
    services: Services, client: httpx.AsyncClient
) -> None:
    seen: list[RequestRecord] = []
    services.app.observers.append(seen.append)
    data = random_blob(3000)
    digest = await push_blob(client, "team/app", data)
    (push,) = seen
    assert (push.method, push.route, push.repository, push.status) == (
        "POST",
        "uploads",
        "team/app",
        201,
    )
    assert (push.bytes_in, push.bytes_out, push.error_code) == (3000, 0, None)
    assert push.request_id and push.duration > 0 and push.started > 0

    seen.clear()
    await client.get(f"/v2/team/app/blobs/{digest}")
    await client.head(f"/v2/team/app/blobs/{digest}")
    await client.get(f"/v2/team/app/blobs/{fake_digest()}")
    await client.get("/v2/team/app/manifests/missing", headers={"x-request-id": "req-1"})
    await client.request("PATCH", "/v2/team/app/manifests/v1")
    await client.get("/v2/not/an/endpoint")
    got = [(r.route, r.reference, r.status, r.error_code) for r in seen]
    assert got == [
        ("blobs", digest, 200, None),
        ("blobs", digest, 200, None),
        ("blobs", seen[2].reference, 404, "BLOB_UNKNOWN"),
        ("manifests", "missing", 404, "MANIFEST_UNKNOWN"),
        ("manifests", None, 405, "UNSUPPORTED"),  # refused before the path is read
        ("", None, 404, None),  # no route: the bare status
    ]
    # The blob, nothing for HEAD, the error documents, nothing for the bare 404.
    assert [r.bytes_out for r in seen[:2]] == [3000, 0] and seen[5].bytes_out == 0
    assert all(r.bytes_out > 0 for r in seen[2:5])
    assert seen[3].request_id == "req-1"

    seen.clear()
    image = await push_image(client, "team/app", "v1")
    put = seen[-1]
    assert (put.method, put.route, put.reference, put.bytes_in) == (
        "PUT",
        "manifests",
        "v1",
        len(image.payload),
    )
    assert digest_of(image.payload) == image.digest


async def test_a_failing_observer_does_not_fail_the_request(
    services: Services, client: httpx.AsyncClient
) -> None:
    def broken(record: RequestRecord) -> None:
        raise RuntimeError("observer bug")

    seen: list[RequestRecord] = []
    services.app.observers += [broken, seen.append]
    r = await client.get("/v2/")
    assert r.status_code == 200
    assert [x.route for x in seen] == ["version"]  # the next observer still ran
