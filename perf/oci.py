"""The client side of the OCI distribution flows, over one :class:`Connection`.

Each function checks the status the spec requires and raises :class:`UnexpectedStatus`
otherwise, so a scenario counts a failed push or pull instead of measuring it. Upload
locations are followed as the server gives them (Distribution returns absolute URLs
carrying state in the query; dockyard relative paths).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import quote

from perf.data import ACCEPT, OCI_MANIFEST, Blob, Image
from perf.httpclient import Connection, Response, target_of

OCTET = ("content-type", "application/octet-stream")


class UnexpectedStatus(Exception):
    def __init__(self, what: str, response: Response) -> None:
        detail = response.body[:200].decode("utf-8", "replace")
        super().__init__(f"{what}: HTTP {response.status} {detail}".strip())
        self.status = response.status


def _expect(what: str, response: Response, *statuses: int) -> Response:
    if response.status not in statuses:
        raise UnexpectedStatus(what, response)
    return response


def _location(what: str, response: Response) -> str:
    location = response.header("location")
    if not location:
        raise UnexpectedStatus(f"{what} (no Location)", response)
    return target_of(location)


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={quote(digest, safe=':')}"


def start_upload(conn: Connection, repo: str) -> str:
    r = conn.request("POST", f"/v2/{repo}/blobs/uploads/", keep_body=True)
    return _location("start upload", _expect("start upload", r, 202))


def upload_monolithic(conn: Connection, repo: str, blob: Blob) -> None:
    """POST, then PUT ?digest= with the whole body."""
    location = start_upload(conn, repo)
    r = conn.request("PUT", _with_digest(location, blob.digest), [OCTET], blob.data, keep_body=True)
    _expect(f"PUT {blob.name}", r, 201)


def upload_chunked(conn: Connection, repo: str, blob: Blob, chunk: int) -> None:
    """POST, PATCH chunks of ``chunk`` bytes with Content-Range, then an empty PUT."""
    if not isinstance(blob.data, bytes | bytearray | memoryview):
        raise TypeError("chunked uploads need a materialized blob")
    data = memoryview(blob.data)
    location = start_upload(conn, repo)
    for start in range(0, blob.size, chunk):
        part = data[start : start + chunk]
        r = conn.request(
            "PATCH",
            location,
            [OCTET, ("content-range", f"{start}-{start + len(part) - 1}")],
            part,
            keep_body=True,
        )
        location = _location(f"PATCH {blob.name}", _expect(f"PATCH {blob.name}", r, 202))
    r = conn.request("PUT", _with_digest(location, blob.digest), keep_body=True)
    _expect(f"PUT {blob.name}", r, 201)


def upload_streamed(conn: Connection, repo: str, blob: Blob) -> None:
    """What docker and skopeo do: POST, one PATCH with the whole body, an empty PUT."""
    location = start_upload(conn, repo)
    r = conn.request("PATCH", location, [OCTET], blob.data, keep_body=True)
    location = _location(f"PATCH {blob.name}", _expect(f"PATCH {blob.name}", r, 202))
    r = conn.request("PUT", _with_digest(location, blob.digest), keep_body=True)
    _expect(f"PUT {blob.name}", r, 201)


def blob_exists(conn: Connection, repo: str, digest: str) -> bool:
    r = conn.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    return _expect(f"HEAD blob {digest}", r, 200, 404).status == 200


def mount(conn: Connection, repo: str, digest: str, source: str) -> bool:
    """Cross-repository mount; False (and the offered upload cancelled) if refused."""
    r = conn.request(
        "POST",
        f"/v2/{repo}/blobs/uploads/?mount={quote(digest, safe=':')}&from={source}",
        keep_body=True,
    )
    if _expect(f"mount {digest}", r, 201, 202).status == 201:
        return True
    conn.request("DELETE", _location("mount", r), keep_body=True)
    return False


def put_manifest(conn: Connection, repo: str, reference: str, image: Image) -> str:
    r = conn.request(
        "PUT",
        f"/v2/{repo}/manifests/{reference}",
        [("content-type", OCI_MANIFEST)],
        image.manifest,
        keep_body=True,
    )
    _expect(f"PUT manifest {repo}:{reference}", r, 201)
    return r.header("docker-content-digest") or image.digest


def push_image(conn: Connection, repo: str, tag: str, image: Image) -> None:
    """Setup helper: upload every blob monolithically, then the manifest."""
    for b in image.blobs:
        upload_monolithic(conn, repo, b)
    put_manifest(conn, repo, tag, image)


def get_manifest(conn: Connection, repo: str, reference: str) -> bytes:
    r = conn.request(
        "GET", f"/v2/{repo}/manifests/{reference}", [("accept", ACCEPT)], keep_body=True
    )
    return _expect(f"GET manifest {repo}:{reference}", r, 200).body


def get_blob(
    conn: Connection, repo: str, digest: str, byte_range: tuple[int, int] | None = None
) -> int:
    """GET a blob (or an inclusive byte range of it), drained; returns the body size."""
    headers: Sequence[tuple[str, str]] = ()
    if byte_range is not None:
        headers = [("range", f"bytes={byte_range[0]}-{byte_range[1]}")]
    r = conn.request("GET", f"/v2/{repo}/blobs/{digest}", headers)
    expected = 206 if byte_range is not None else 200
    _expect(f"GET blob {digest}", r, expected)
    want = byte_range[1] - byte_range[0] + 1 if byte_range is not None else None
    if want is not None and r.received != want:
        raise UnexpectedStatus(f"range of {want} bytes answered with {r.received}", r)
    return r.received


def pull_image(conn: Connection, repo: str, reference: str) -> int:
    """GET the manifest, then the config and every layer; returns the bytes received."""
    manifest = json.loads(get_manifest(conn, repo, reference))
    total = 0
    for desc in [manifest["config"], *manifest["layers"]]:
        got = get_blob(conn, repo, desc["digest"])
        if got != desc["size"]:
            raise ValueError(f"{desc['digest']}: {got} bytes, manifest says {desc['size']}")
        total += got
    return total


def list_all(
    conn: Connection, path: str, key: str, n: int, limit: int = 1_000_000
) -> tuple[int, int]:
    """Follow ``Link: <...>; rel="next"`` from ``path?n=``; returns (items, pages)."""
    target: str | None = f"{path}?n={n}"
    items = pages = 0
    while target is not None and pages < limit:
        r = _expect(f"GET {target}", conn.request("GET", target, keep_body=True), 200)
        items += len(json.loads(r.body)[key] or [])
        pages += 1
        link = r.header("link")
        target = None
        if link and 'rel="next"' in link:
            target = target_of(link[link.index("<") + 1 : link.index(">")])
    return items, pages
