"""Blob uploads and cross-repository mounts.

Routes::

    POST                 /v2/<name>/blobs/uploads/   ?digest= | ?mount= [&from=]
                                                     | ?digest-algorithm=
    GET|PATCH|PUT|DELETE /v2/<name>/blobs/uploads/<id>  PUT: ?digest=

Chunk bodies stream from hypercorn's bounded receive queue straight into the core, which
hashes and writes each chunk as it comes: memory per upload stays bounded whatever the
blob size.
"""

from __future__ import annotations

from dockyard.auth import Authorizer
from dockyard.core import errors as err
from dockyard.core.registry import Registry
from dockyard.http.handlers.resource import Resource
from dockyard.http.request import Request, Response, parse_content_range, range_header
from dockyard.oci.names import is_valid_name


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _upload_headers(name: str, upload_id: str, offset: int) -> list[tuple[str, str]]:
    return [
        ("location", _location(name, upload_id)),
        ("range", range_header(offset)),
        ("docker-upload-uuid", upload_id),
    ]


def _created(name: str, digest: str) -> Response:
    return Response(
        201, [("location", f"/v2/{name}/blobs/{digest}"), ("docker-content-digest", digest)]
    )


def _chunk_bounds(req: Request) -> tuple[int | None, int | None]:
    """The chunk's start offset (None without Content-Range) and its expected length."""
    announced = req.content_length()
    content_range = parse_content_range(req.headers.get("content-range"))
    if content_range is None:
        return None, announced
    start, end = content_range
    length = end - start + 1
    if announced is not None and announced != length:
        raise err.SizeInvalid(
            f"Content-Length {announced} disagrees with Content-Range {start}-{end}"
        )
    return start, length


class Uploads(Resource):
    def __init__(self, registry: Registry, authorizer: Authorizer) -> None:
        super().__init__(authorizer)
        self.registry = registry

    async def _may_read(self, req: Request, repository: str) -> bool:
        # A mount source must be pullable; one that is not is treated as not holding the
        # blob (a plain upload follows), so a mount reveals nothing about it.
        return self.may(req, repository, "pull")

    async def start(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        mount = req.arg("mount")
        if mount is not None:
            source = req.arg("from")
            if source is not None and not is_valid_name(source):
                raise err.NameInvalid(f"invalid repository name {source[:100]!r} in from=")
            if await self.registry.mount_blob(
                req.info, name, mount, source, lambda repo: self._may_read(req, repo)
            ):
                return _created(name, mount)
        digest = req.arg("digest")
        if digest is not None and mount is None:
            stored = await self.registry.put_blob(
                req.info, name, digest, req.body(), req.content_length()
            )
            return _created(name, stored)
        # A mount that could not be served falls back to a fresh upload, as the spec says.
        algorithm = req.arg("digest-algorithm") or "sha256"
        status = await self.registry.start_upload(name, algorithm)
        return Response(202, _upload_headers(name, status.id, 0))

    async def status(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        status = await self.registry.upload_status(name, p["upload"])
        return Response(204, _upload_headers(name, status.id, status.offset))

    async def patch(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        start, expected = _chunk_bounds(req)
        status = await self.registry.write_chunk(name, p["upload"], req.body(), start, expected)
        return Response(202, _upload_headers(name, status.id, status.offset))

    async def finish(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        digest = req.arg("digest")
        if not digest:
            raise err.DigestInvalid("PUT needs ?digest= to complete an upload")
        start, expected = _chunk_bounds(req)
        stored = await self.registry.finish_upload(
            req.info, name, p["upload"], digest, req.body(), start, expected
        )
        return _created(name, stored)

    async def cancel(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self.registry.cancel_upload(name, p["upload"])
        return Response(204)
