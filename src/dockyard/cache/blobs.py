"""Blobs of cached repositories: a missing blob is fetched from the upstream as it is
served.

``blob_size`` of a blob not linked here asks the upstream with a HEAD (no fetch: a HEAD
request stays a HEAD). ``read_blob`` then fills it: one read from the upstream, each
chunk hashed, written to storage, then yielded to the client (the client's bytes and
the stored bytes are the same stream). At the end the digest and size are checked: a
match claims the blob (``claim_blob``, as an upload's commit does: the collector keeps
the bytes from then on), commits the bytes and links them with
``repository_blobs.upstream`` set; a mismatch aborts the writer, stores nothing and
raises in the stream, so the response ends short of its Content-Length (one chunk is
always held back until the check). A client that goes away mid-fill does not stop it:
hypercorn drops the bytes a closed connection cannot take and the fill runs to its end
(tests/e2e/test_cache_e2e.py). Should the stream be abandoned all the same, its
``finally`` aborts the writer and frees the lease; bytes left by a killed process are
an orphan upload the janitor purges.

One fetch per digest, across worker processes and instances: a job lease named
``fill:<digest>`` (``job_acquire``; renewed while bytes flow, released and its row
deleted after). A request that finds the lease taken polls the link every ``FILL_POLL``
seconds (an inline read) until the blob is linked (then serves it from storage), and
tries the lease every ``ACQUIRE_EVERY`` polls (a write: the other fill may have failed,
then it fills itself), for at most ``FILL_WAIT`` seconds.

A ranged GET of a missing blob fills the whole blob first (the client waits), then
serves its range from storage: a layer is usually read whole soon after, and a range
fetched alone would be fetched again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import anyio

from dockyard.cache.common import CacheCounters, NoCounters, failure, log, reason_of
from dockyard.cache.upstreams import Route, UpstreamMap
from dockyard.core.common import Body, EventMaker, RequestInfo, parse_digest
from dockyard.core.errors import BlobUnknown, UpstreamUnavailable
from dockyard.core.uploads import claim_blob
from dockyard.events.pulls import PullEventWriter
from dockyard.meta.store import Database
from dockyard.oci.digest import new_hasher
from dockyard.storage.base import BlobStore, DriverState, UploadWriter
from dockyard.upstream.client import RemoteBlob, UpstreamError

# The per-digest fill lease: held this long unless renewed, renewed this often.
FILL_LEASE = 30.0
FILL_RENEW = FILL_LEASE / 3
# A request waiting for another's fill looks again this often, for this long at most.
FILL_POLL = 0.1
FILL_WAIT = 600.0
# A waiting request tries to take the lease itself (the other fill may have failed)
# every this many polls.
ACQUIRE_EVERY = 10

BlobSize = Callable[[str, str], Awaitable[int]]
ReadBlob = Callable[[RequestInfo, str, str, int, int, int | None], Awaitable[Body]]
BlobRedirect = Callable[[RequestInfo, str, str, int], Awaitable[str | None]]


class CachedBlobs:
    def __init__(
        self,
        upstreams: UpstreamMap,
        db: Database,
        storage: BlobStore,
        pulls: PullEventWriter,
        events: EventMaker,
        *,
        blob_size: BlobSize,
        read_blob: ReadBlob,
        blob_redirect: BlobRedirect,
        instance: str,
        gc_lease_seconds: float = 60.0,
        counters: CacheCounters | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.db = db
        self.meta = db.meta
        self.storage = storage
        self.pulls = pulls
        self._event = events
        self._blob_size = blob_size
        self._read_blob = read_blob
        self._blob_redirect = blob_redirect
        self.instance = instance
        self.gc_lease_seconds = gc_lease_seconds
        self.counters = counters or NoCounters()

    async def _linked(self, repository: str, digest: str) -> int | None:
        return await self.db.read(self.meta.linked_blob_size, repository, digest)

    # -- the Registry's blob API

    async def blob_size(self, repository: str, digest: str) -> int:
        try:
            return await self._blob_size(repository, digest)
        except BlobUnknown:
            route = self.upstreams.route(repository)
            if route is None:
                raise
        name = route.upstream.name
        unknown = BlobUnknown(f"blob {digest} is not in {repository} (upstream {name})")
        try:
            size = await route.upstream.client.head_blob(route.remote, digest)
        except UpstreamError as e:
            self.counters.error(name, reason_of(e))
            raise failure(name, e, unknown) from None
        if size is None:
            self.counters.error(name, "not_found")
            raise unknown
        return size

    async def blob_redirect(
        self, ctx: RequestInfo, repository: str, digest: str, size: int
    ) -> str | None:
        if self.upstreams.route(repository) is not None and (
            await self._linked(repository, digest) is None
        ):
            return None  # not stored yet: read_blob fills it
        return await self._blob_redirect(ctx, repository, digest, size)

    async def read_blob(
        self,
        ctx: RequestInfo,
        repository: str,
        digest: str,
        size: int,
        start: int = 0,
        length: int | None = None,
    ) -> Body:
        route = self.upstreams.route(repository)
        if route is None:
            return await self._read_blob(ctx, repository, digest, size, start, length)
        if await self._linked(repository, digest) is not None:
            self.counters.hit(route.upstream.name, "blob")
            return await self._read_blob(ctx, repository, digest, size, start, length)
        whole = start == 0 and (length is None or length == size)
        fill = await self._start_fill(ctx, route, repository, digest, size, record=whole)
        if fill is not None and whole:
            return fill
        if fill is not None:
            async for _ in fill:
                pass
        # Linked now (by this fill or another's): served from storage.
        return await self._read_blob(ctx, repository, digest, size, start, length)

    # -- filling

    async def _start_fill(
        self, ctx: RequestInfo, route: Route, repository: str, digest: str, size: int, record: bool
    ) -> Body | None:
        """Before the response starts: wait for or take the digest's lease, and open the
        upstream download, so that failures up to there are proper error answers. The
        fill's stream; None when the blob got linked meanwhile (serve it from storage)."""
        parse_digest(digest)
        job = f"fill:{digest}"
        lease = f"{self.instance}/fill-{uuid.uuid4().hex}"
        with anyio.move_on_after(FILL_WAIT):
            polls = 0
            while True:
                if await self._linked(repository, digest) is not None:
                    return None
                # The link is a cheap inline read; taking the lease is a write, so it is
                # tried only every ACQUIRE_EVERY polls while another fill holds it.
                if polls % ACQUIRE_EVERY == 0 and await self.db.run(
                    self.meta.job_acquire, job, lease, FILL_LEASE
                ):
                    break
                polls += 1
                await anyio.sleep(FILL_POLL)
        if not await self.db.run(self.meta.job_renew, job, lease, FILL_LEASE):
            raise UpstreamUnavailable(f"timed out waiting for another fill of {digest}")
        stack = AsyncExitStack()
        try:
            stack.push_async_callback(self._release, job, lease)
            if await self._link_stored(route, repository, digest, size):
                await stack.aclose()
                return None
            name = route.upstream.name
            try:
                remote = await stack.enter_async_context(
                    route.upstream.client.open_blob(route.remote, digest)
                )
            except UpstreamError as e:
                self.counters.error(name, reason_of(e))
                raise failure(name, e, BlobUnknown(f"blob {digest} is not upstream")) from None
            # -1: no Content-Length (chunked); the byte count is checked at the end anyway.
            if remote.size not in (size, -1):
                self.counters.error(name, "corrupt")
                raise UpstreamUnavailable(
                    f"upstream {name} sends {remote.size} bytes for {digest}, its HEAD said {size}"
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        return self._fill(ctx, route, repository, digest, size, remote, stack, job, lease, record)

    async def _release(self, job: str, lease: str) -> None:
        with anyio.CancelScope(shield=True):
            await self.db.run(self.meta.job_release, job, lease)
            await self.db.run(self.meta.job_forget, job, lease)

    async def _link_stored(self, route: Route, repository: str, digest: str, size: int) -> bool:
        """Bytes stored already (filled for another repository): link them, no fetch."""
        if await self.db.run(self.meta.blob_size, digest) != size:
            return False
        if await self.storage.stat(digest) != size:
            return False
        await self._claim(digest, size)
        await self.db.run(self.meta.link_cached_blob, repository, digest, size, route.upstream.name)
        return True

    async def _claim(self, digest: str, size: int) -> None:
        await claim_blob(self.db, digest, size, self.gc_lease_seconds, "pull")

    async def _fill(
        self,
        ctx: RequestInfo,
        route: Route,
        repository: str,
        digest: str,
        size: int,
        remote: RemoteBlob,
        stack: AsyncExitStack,
        job: str,
        lease: str,
        record: bool,
    ) -> AsyncIterator[bytes]:
        name = route.upstream.name
        want = parse_digest(digest)
        storage_id = f"fill-{uuid.uuid4().hex}"
        state: DriverState = {}
        writer: UploadWriter | None = None
        committed = False
        try:
            state = await self.storage.create_upload(storage_id)
            writer = await self.storage.open_writer(storage_id, 0, state)
            hasher = new_hasher(want.algorithm)
            written = 0
            renewed = time.monotonic()
            # One chunk is held back until the digest is checked: a mismatch must end the
            # response short of its Content-Length.
            held: bytes | None = None
            async for chunk in remote.chunks():
                if not chunk:
                    continue
                hasher.update(chunk)
                await writer.write(chunk)
                written += len(chunk)
                self.counters.fetched(name, len(chunk))
                if written > size:
                    break
                if time.monotonic() - renewed > FILL_RENEW:
                    renewed = time.monotonic()
                    await self.db.run(self.meta.job_renew, job, lease, FILL_LEASE)
                if held is not None:
                    yield held
                held = chunk
            state = await writer.close()
            writer = None
            got = hasher.digest()
            if written != size or got != want:
                self.counters.error(name, "corrupt")
                log.warning(
                    "upstream %s sent %d bytes with digest %s for %s (%d bytes): not stored",
                    name,
                    written,
                    got,
                    digest,
                    size,
                )
                raise UpstreamUnavailable(f"upstream {name} sent content that is not {digest}")
            with anyio.CancelScope(shield=True):
                await self._claim(digest, size)
                await self.storage.commit_upload(storage_id, state, size, digest)
                committed = True
                await self.db.run(self.meta.link_cached_blob, repository, digest, size, name)
            self.counters.fill(name, "blob")
            if record:
                self.pulls.record(
                    self._event(
                        ctx,
                        "pull",
                        repository,
                        digest,
                        "application/octet-stream",
                        size,
                        kind="blob",
                        cache="fill",
                        upstream=name,
                    )
                )
            if held is not None:
                yield held
        finally:
            with anyio.CancelScope(shield=True):
                if writer is not None:
                    await writer.abort()
                if not committed:
                    await self.storage.delete_upload(storage_id, state)
                await stack.aclose()
