"""The pull-through cache (docs/proxy.md, "Pull-through cache").

Repositories under an ``[[upstreams]]`` prefix mirror that registry: local
``<prefix>/<path>`` is the upstream's ``<path>``. ``PullThroughCache.install`` puts the
cache below the HTTP handlers by replacing the Registry's bound methods
(``core/registry.py``) with wrappers: ``get_manifest`` (``cache/manifests.py``),
``blob_size``, ``read_blob`` and ``blob_redirect`` (``cache/blobs.py``), and the pushes,
which a cached repository refuses. Every wrapper starts with a prefix check, and an
ordinary repository goes straight to the method it replaced: it pays for nothing else.

Pushes into a cached repository (blob uploads, mounts, manifests) are refused with 403
``DENIED`` naming the upstream, as Harbor's proxy-cache projects and Distribution's
proxy mode do: a push would be shadowed by the upstream's next answer for the tag.
Deletes are allowed (they evict content; the next pull fetches it again).

Layout: ``upstreams.py`` (which upstream a repository belongs to, namespaces),
``manifests.py``, ``blobs.py``, ``common.py`` (counters, upstream failures as registry
errors). Imports core/, meta/, storage/, events/, upstream/, oci/; never http/.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from dockyard.cache.blobs import CachedBlobs
from dockyard.cache.common import CacheCounters, NoCounters
from dockyard.cache.manifests import CachedManifests
from dockyard.cache.upstreams import Route, Upstream, UpstreamMap, namespace_of
from dockyard.core.common import Body, EventMaker, PushedManifest, RequestInfo, UploadStatus
from dockyard.core.errors import Denied
from dockyard.core.registry import Registry
from dockyard.oci.digest import CANONICAL


class PullThroughCache:
    def __init__(
        self,
        upstreams: UpstreamMap,
        registry: Registry,
        *,
        instance: str,
        gc_lease_seconds: float = 60.0,
        counters: CacheCounters | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstreams = upstreams
        self.registry = registry
        counters = counters or NoCounters()
        events = EventMaker(instance, clock)
        self.manifests = CachedManifests(
            upstreams,
            registry.get_manifest,
            registry.blobs.db,
            registry.manifests.record_pull,
            counters,
            clock,
        )
        self.blobs = CachedBlobs(
            upstreams,
            registry.blobs.db,
            registry.blobs.storage,
            registry.blobs.pulls,
            events,
            blob_size=registry.blob_size,
            read_blob=registry.read_blob,
            blob_redirect=registry.blob_redirect,
            instance=instance,
            gc_lease_seconds=gc_lease_seconds,
            counters=counters,
        )
        self._start_upload = registry.start_upload
        self._put_blob = registry.put_blob
        self._mount_blob = registry.mount_blob
        self._put_manifest = registry.put_manifest

    def install(self) -> None:
        """Put the cache in front of the registry's pull methods and refuse pushes."""
        r = self.registry
        r.get_manifest = self.manifests.get_manifest
        r.blob_size = self.blobs.blob_size
        r.read_blob = self.blobs.read_blob
        r.blob_redirect = self.blobs.blob_redirect
        r.start_upload = self.start_upload
        r.put_blob = self.put_blob
        r.mount_blob = self.mount_blob
        r.put_manifest = self.put_manifest

    def _refuse_push(self, repository: str) -> None:
        route = self.upstreams.route(repository)
        if route is not None:
            raise Denied(
                f"{repository} is a pull-through cache of upstream {route.upstream.name}"
                f" ({route.upstream.settings.url}): push to the upstream instead"
            )

    async def start_upload(self, repository: str, algorithm: str = CANONICAL) -> UploadStatus:
        self._refuse_push(repository)
        return await self._start_upload(repository, algorithm)

    async def put_blob(
        self, ctx: RequestInfo, repository: str, digest: str, body: Body, expected: int | None
    ) -> str:
        self._refuse_push(repository)
        return await self._put_blob(ctx, repository, digest, body, expected)

    async def mount_blob(
        self,
        ctx: RequestInfo,
        repository: str,
        digest: str,
        source: str | None,
        may_read: Callable[[str], Awaitable[bool]],
    ) -> bool:
        self._refuse_push(repository)
        return await self._mount_blob(ctx, repository, digest, source, may_read)

    async def put_manifest(
        self,
        ctx: RequestInfo,
        repository: str,
        reference: str,
        payload: bytes,
        content_type: str | None,
        extra_tags: list[str],
    ) -> PushedManifest:
        self._refuse_push(repository)
        return await self._put_manifest(
            ctx, repository, reference, payload, content_type, extra_tags
        )


__all__ = [
    "CacheCounters",
    "PullThroughCache",
    "Route",
    "Upstream",
    "UpstreamMap",
    "namespace_of",
]
