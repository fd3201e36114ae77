"""Blob downloads and deletes: ``GET|HEAD|DELETE /v2/<name>/blobs/<digest>``.

Downloads honour a single ``Range`` and stream from the core in 1 MiB reads; a HEAD
answers with the GET's headers and ``Content-Length`` and no body. When the store gives a
presigned URL (the s3 driver with ``redirect = true``), a GET without ``Range`` answers
307 to it; HEAD and ranged GETs are always answered here.
"""

from __future__ import annotations

from dockyard.auth import Authorizer
from dockyard.core.registry import Registry
from dockyard.http.handlers.resource import Resource
from dockyard.http.request import Request, Response, parse_range


class Blobs(Resource):
    def __init__(self, registry: Registry, authorizer: Authorizer) -> None:
        super().__init__(authorizer)
        self.registry = registry

    async def get(self, req: Request, p: dict[str, str]) -> Response:
        name, digest = p["name"], p["digest"]
        size = await self.registry.blob_size(name, digest)
        headers = [
            ("content-type", "application/octet-stream"),
            ("docker-content-digest", digest),
            ("accept-ranges", "bytes"),
            ("etag", f'"{digest}"'),
            ("cache-control", "max-age=31536000"),
        ]
        status, start, length = 200, 0, size
        range_header = req.headers.get("range")
        if range_header is not None:
            selected = parse_range(range_header, size)
            if selected is not None:
                start, length = selected
                status = 206
                headers.append(("content-range", f"bytes {start}-{start + length - 1}/{size}"))
        if req.method == "HEAD":
            return Response(status, headers, length=length)
        if range_header is None:
            url = await self.registry.blob_redirect(req.info, name, digest, size)
            if url is not None:
                return Response(307, [("location", url), ("docker-content-digest", digest)])
        stream = await self.registry.read_blob(req.info, name, digest, size, start, length)
        return Response(status, headers, stream=stream, length=length)

    async def delete(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self.registry.delete_blob(req.info, name, p["digest"])
        return Response(202)
