"""Manifests of cached repositories: from the cache while fresh, else from the upstream.

By tag: served from the cache while the tag was resolved upstream less than ``tag_ttl``
seconds ago. Otherwise the upstream is asked with a HEAD first (as Distribution's proxy
does, to spare rate limits): the same digest only refreshes ``tags.resolved``; a new
digest is fetched by digest (checked against it by the client), stored sparse (no blob
and no child of an index is required) with ``manifests.upstream`` set, and the tag moved,
in one transaction. By digest: served from the cache when present, else fetched and
stored the same way.

When the upstream is down, times out, answers 5xx or 429 (or refuses the credentials),
what is cached is served anyway, even past the TTL, with a warning and the ``stale``
counter; with nothing cached the answer is the upstream's failure (``cache/common.py``).
An upstream 404 for a tag that is cached serves the cached copy too, as Distribution's
proxy does (its tag service falls back to the local tag on any remote error): a tag
deleted upstream stays here until retention or a DELETE removes it.

Pull events of content fetched from the upstream carry ``target.cache = "fill"`` and
``target.upstream``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from dockyard.cache.common import CacheCounters, NoCounters, failure, log, reason_of
from dockyard.cache.upstreams import Route, UpstreamMap
from dockyard.core.common import RequestInfo
from dockyard.core.errors import ManifestUnknown, UpstreamUnavailable
from dockyard.meta.records import ManifestRecord, NewManifest
from dockyard.meta.store import Database
from dockyard.oci.digest import Digest, DigestError
from dockyard.oci.manifest import ManifestError, parse_manifest, referrer_artifact_type
from dockyard.oci.names import ReferenceError_, parse_reference
from dockyard.upstream.client import NotFound, UpstreamError

GetManifest = Callable[
    [RequestInfo, str, str, bool, Callable[[str], bool] | None], Awaitable[ManifestRecord]
]
# core's ``Manifests.record_pull``: (ctx, repository, tag, found, **target) records a pull.
RecordPull = Callable[..., None]


class CachedManifests:
    def __init__(
        self,
        upstreams: UpstreamMap,
        inner: GetManifest,
        db: Database,
        record_pull: RecordPull,
        counters: CacheCounters | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstreams = upstreams
        self.inner = inner
        self.db = db
        self.meta = db.meta
        self._record_pull = record_pull
        self.counters = counters or NoCounters()
        self.clock = clock

    async def get_manifest(
        self,
        ctx: RequestInfo,
        repository: str,
        reference: str,
        record_pull: bool,
        accepts: Callable[[str], bool] | None = None,
    ) -> ManifestRecord:
        """``Registry.get_manifest`` for every repository (ordinary ones pass through)."""
        route = self.upstreams.route(repository)
        if route is None:
            return await self.inner(ctx, repository, reference, record_pull, accepts)
        try:
            ref = parse_reference(reference)
        except (DigestError, ReferenceError_):
            # The registry's own answer to a malformed reference.
            return await self.inner(ctx, repository, reference, record_pull, accepts)
        if isinstance(ref, Digest):
            return await self._by_digest(ctx, route, repository, str(ref), record_pull, accepts)
        return await self._by_tag(ctx, route, repository, ref, record_pull, accepts)

    async def _by_digest(
        self,
        ctx: RequestInfo,
        route: Route,
        repository: str,
        digest: str,
        record_pull: bool,
        accepts: Callable[[str], bool] | None,
    ) -> ManifestRecord:
        name = route.upstream.name
        if await self.db.read(self.meta.get_manifest, repository, digest) is not None:
            self.counters.hit(name, "manifest")
            return await self.inner(ctx, repository, digest, record_pull, accepts)
        try:
            remote = await route.upstream.client.get_manifest(route.remote, digest)
        except UpstreamError as e:
            self.counters.error(name, reason_of(e))
            raise failure(
                name, e, ManifestUnknown(f"no manifest {digest} in {repository} (upstream {name})")
            ) from None
        await self._store(route, repository, remote.digest, remote.media_type, remote.payload)
        return await self._serve_fill(ctx, route, repository, digest, None, record_pull, accepts)

    async def _by_tag(
        self,
        ctx: RequestInfo,
        route: Route,
        repository: str,
        tag: str,
        record_pull: bool,
        accepts: Callable[[str], bool] | None,
    ) -> ManifestRecord:
        up = route.upstream
        cached = await self.db.read(self.meta.cached_tag, repository, tag)
        now = self.clock()
        resolved = cached.resolved if cached is not None else None
        if resolved is not None and now - resolved < up.settings.tag_ttl:
            self.counters.hit(up.name, "manifest")
            return await self.inner(ctx, repository, tag, record_pull, accepts)
        try:
            head = await up.client.head_manifest(route.remote, tag)
            if head is None:
                raise NotFound(f"{route.remote}:{tag} is not on the upstream", 404)
            if cached is not None and cached.digest == head.digest:
                await self.db.run(self.meta.resolve_cached_tag, repository, tag, head.digest, now)
                self.counters.hit(up.name, "manifest")
                return await self.inner(ctx, repository, tag, record_pull, accepts)
            # The content may be here already (another tag, or pulled by digest).
            known = await self.db.read(self.meta.get_manifest, repository, head.digest)
            if known is not None:
                await self._store(
                    route, repository, known.digest, known.media_type, known.payload, tag, now
                )
                self.counters.hit(up.name, "manifest")
                return await self.inner(ctx, repository, tag, record_pull, accepts)
            remote = await up.client.get_manifest(route.remote, head.digest)
        except UpstreamError as e:
            self.counters.error(up.name, reason_of(e))
            if cached is None:
                unknown = ManifestUnknown(f"no manifest {tag} in {repository} (upstream {up.name})")
                raise failure(up.name, e, unknown) from None
            self.counters.stale(up.name, "manifest")
            log.warning(
                "upstream %s failed (%s); serving %s:%s from the cache", up.name, e, repository, tag
            )
            return await self.inner(ctx, repository, tag, record_pull, accepts)
        await self._store(
            route, repository, remote.digest, remote.media_type, remote.payload, tag, now
        )
        return await self._serve_fill(ctx, route, repository, tag, tag, record_pull, accepts)

    async def _store(
        self,
        route: Route,
        repository: str,
        digest: str,
        media_type: str,
        payload: bytes,
        tag: str | None = None,
        resolved: float | None = None,
    ) -> None:
        try:
            manifest = parse_manifest(payload, media_type)
        except ManifestError as e:
            self.counters.error(route.upstream.name, "rejected")
            raise UpstreamUnavailable(
                f"upstream {route.upstream.name} sent a manifest dockyard cannot store: {e}"
            ) from None
        await self.db.run(
            self.meta.put_cached_manifest,
            NewManifest(
                repository,
                digest,
                manifest.media_type,
                referrer_artifact_type(manifest),
                str(manifest.subject.digest) if manifest.subject else None,
                payload,
                manifest.annotations or None,
                [str(d.digest) for d in manifest.blobs],
                [str(d.digest) for d in manifest.children],
                [tag] if tag is not None else [],
            ),
            route.upstream.name,
            resolved,
        )

    async def _serve_fill(
        self,
        ctx: RequestInfo,
        route: Route,
        repository: str,
        reference: str,
        tag: str | None,
        record_pull: bool,
        accepts: Callable[[str], bool] | None,
    ) -> ManifestRecord:
        found = await self.inner(ctx, repository, reference, False, accepts)
        self.counters.fill(route.upstream.name, "manifest")
        if record_pull:
            self._record_pull(
                ctx, repository, tag, found, cache="fill", upstream=route.upstream.name
            )
        return found
