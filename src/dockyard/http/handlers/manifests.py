"""Manifests: ``GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>`` (PUT: ``?tag=``).

GET and HEAD are the hottest requests a CI farm makes: the payload goes out byte for byte
as stored, and a HEAD records no pull.
"""

from __future__ import annotations

from dockyard.auth import Authorizer
from dockyard.core import errors as err
from dockyard.core.registry import Registry
from dockyard.http.handlers.resource import Resource
from dockyard.http.request import Request, Response, accepts


class Manifests(Resource):
    def __init__(self, registry: Registry, authorizer: Authorizer, max_bytes: int) -> None:
        super().__init__(authorizer)
        self.registry = registry
        self.max_bytes = max_bytes

    async def get(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        accept = req.headers.get("accept")
        found = await self.registry.get_manifest(
            req.info,
            name,
            p["reference"],
            record_pull=req.method == "GET",
            accepts=lambda media_type: accepts(accept, media_type),
        )
        headers = [
            ("content-type", found.media_type),
            ("docker-content-digest", found.digest),
            ("etag", f'"{found.digest}"'),
        ]
        response = Response(200, headers, found.payload)
        response.keepable = True
        if req.method == "GET":
            response.again = self.registry.manifest_pull_recorder(name, p["reference"], found)
        return response

    async def _read_body(self, req: Request) -> bytes:
        limit = self.max_bytes
        announced = req.content_length()
        if announced is not None and announced > limit:
            raise err.ManifestTooLarge(f"manifest of {announced} bytes is over the {limit} limit")
        parts: list[bytes] = []
        total = 0
        async for chunk in req.body():
            total += len(chunk)
            if total > limit:
                raise err.ManifestTooLarge(f"manifest is over the {limit} byte limit")
            parts.append(chunk)
        if announced is not None and total != announced:
            raise err.SizeInvalid(f"body has {total} bytes, Content-Length said {announced}")
        return b"".join(parts)

    async def put(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        payload = await self._read_body(req)
        content_type = req.headers.get("content-type")
        if content_type is not None:
            content_type = content_type.split(";")[0].strip() or None
        pushed = await self.registry.put_manifest(
            req.info, name, p["reference"], payload, content_type, req.query.get("tag", [])
        )
        headers = [
            ("location", f"/v2/{name}/manifests/{pushed.digest}"),
            ("docker-content-digest", pushed.digest),
        ]
        headers += [("oci-tag", tag) for tag in pushed.tags if req.query.get("tag")]
        if pushed.subject is not None:
            headers.append(("oci-subject", pushed.subject))
        return Response(201, headers)

    async def delete(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self.registry.delete_manifest(req.info, name, p["reference"])
        return Response(202)
