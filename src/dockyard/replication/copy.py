"""Copying one image between two registries: the one routine both replication modes use.

An image is a manifest with everything it stands for: an index's children (recursively),
each manifest's blobs (config and layers) and, when asked, the referrers of each copied
manifest (signatures, SBOMs: manifests whose ``subject`` is it), recursively too.

``copy_image`` reads from a ``Source`` and writes to a ``Destination``, in the order
that never lets the destination see a manifest before what it references::

    for a manifest:  its blobs, its children (each copied this way), the manifest (under
                     its tag, or by digest), then its referrers (each copied this way)

The two sides of each mode:

    push   LocalSource (this registry: the metadata store and the blob store)
           -> RemoteDestination (a RegistryClient)
    pull   RemoteSource (a RegistryClient)
           -> LocalDestination (the core Registry: blobs through put_blob, which hashes
              as it stores and refuses a mismatch; manifests through put_manifest; so
              events, quotas and immutable tags apply, under the actor
              "replication:<rule>")

What the destination has is not sent again: a manifest it holds by digest is not walked
(only tagged, when a tag is asked for); a blob is HEADed first; a remote destination is
then asked for a cross-repository mount from the remote repository that last received
the digest (``MountMemory``, a bounded LRU per target), and only then is the blob
uploaded, streamed from storage.

Errors (what the caller classifies; see ``replication/push.py``)::

    upstream.client.UpstreamError   the remote side failed (Unavailable: retry later)
    ContentGone                     the local source no longer has the content
    core.errors.RegistryError       the local destination refused (invalid, quota, ...)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from dockyard.core.common import RequestInfo
from dockyard.core.errors import BlobUnknown, ManifestUnknown, NameUnknown
from dockyard.core.registry import Registry
from dockyard.oci.manifest import ManifestError, parse_manifest
from dockyard.storage.base import BlobStore
from dockyard.upstream.client import ChunkSource, RegistryClient

# Referrers asked for per page of the local referrers listing.
REFERRERS_PAGE = 1000
# Digests remembered per target for mounts (a digest and a repository name: ~200 bytes).
MOUNT_MEMORY = 20_000
# A target that refused this many mounts and granted none is not asked again.
MOUNT_GIVE_UP = 20


class ContentGone(Exception):
    """The local source no longer has what an event named (deleted since)."""


class InvalidContent(Exception):
    """A manifest of the source cannot be parsed: it cannot be copied."""


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    digest: str
    media_type: str
    payload: bytes


@dataclass(slots=True)
class CopyReport:
    """What one ``copy_image`` did (and the counters the metrics add up)."""

    manifests: int = 0  # manifests written to the destination
    blobs: int = 0  # blobs uploaded
    mounted: int = 0  # blobs mounted from another repository of the destination
    skipped: int = 0  # blobs the destination had
    bytes: int = 0  # blob bytes uploaded
    digests: list[str] = field(default_factory=list)  # manifests written, in order

    def add(self, other: CopyReport) -> None:
        self.manifests += other.manifests
        self.blobs += other.blobs
        self.mounted += other.mounted
        self.skipped += other.skipped
        self.bytes += other.bytes
        self.digests += other.digests


class Source(Protocol):
    async def get_manifest(self, repository: str, reference: str) -> FetchedManifest: ...

    def blob_chunks(self, repository: str, digest: str) -> ChunkSource:
        """A callable giving the blob's bytes from the start (again for a retry)."""
        ...

    async def referrers(self, repository: str, digest: str) -> list[str]:
        """The digests of the manifests whose subject is ``digest``."""
        ...


class Destination(Protocol):
    async def has_manifest(self, repository: str, digest: str) -> bool: ...

    async def tagged(self, repository: str, tag: str) -> str | None:
        """The digest ``tag`` names there, or None."""
        ...

    async def ensure_blob(
        self, repository: str, digest: str, size: int, chunks: ChunkSource, report: CopyReport
    ) -> None:
        """Make the blob present in ``repository`` (HEAD, mount, upload), counting how."""
        ...

    async def put_manifest(
        self, repository: str, reference: str, payload: bytes, media_type: str
    ) -> None: ...


async def copy_image(
    source: Source,
    destination: Destination,
    source_repository: str,
    destination_repository: str,
    reference: str,
    tag: str | None,
    *,
    referrers: bool,
) -> CopyReport:
    """Copy the manifest ``reference`` names (a digest, or a tag of the source) with all it
    references to the destination, under ``tag`` when given (else by digest)."""
    report = CopyReport()
    copier = _Copier(source, destination, source_repository, destination_repository, referrers)
    await copier.copy(reference, tag, report)
    return report


class _Copier:
    def __init__(
        self,
        source: Source,
        destination: Destination,
        source_repository: str,
        destination_repository: str,
        referrers: bool,
    ) -> None:
        self.source = source
        self.destination = destination
        self.src = source_repository
        self.dst = destination_repository
        self.referrers = referrers
        self.seen: set[str] = set()  # manifests handled in this copy (referrer cycles)

    async def copy(self, reference: str, tag: str | None, report: CopyReport) -> None:
        fetched = await self.source.get_manifest(self.src, reference)
        digest = fetched.digest
        first = digest not in self.seen
        self.seen.add(digest)
        if first and not await self.destination.has_manifest(self.dst, digest):
            try:
                manifest = parse_manifest(fetched.payload, fetched.media_type)
            except ManifestError as e:
                raise InvalidContent(f"manifest {digest} of {self.src}: {e}") from None
            for blob in manifest.blobs:
                if blob.data is not None or blob.non_distributable:
                    continue  # embedded, or foreign layers the destination fetches itself
                await self.destination.ensure_blob(
                    self.dst,
                    str(blob.digest),
                    blob.size,
                    self.source.blob_chunks(self.src, str(blob.digest)),
                    report,
                )
            for child in manifest.children:
                await self.copy(str(child.digest), None, report)
            await self._put(fetched, digest, report)
        # Not rewritten when already in place: a tag put again is a new push event, and two
        # sites replicating to each other would otherwise copy it back and forth forever.
        if tag is not None and await self.destination.tagged(self.dst, tag) != digest:
            await self._put(fetched, tag, report)
        if first and self.referrers:
            for referrer in await self.source.referrers(self.src, digest):
                if referrer not in self.seen:
                    await self.copy(referrer, None, report)

    async def _put(self, fetched: FetchedManifest, reference: str, report: CopyReport) -> None:
        await self.destination.put_manifest(
            self.dst, reference, fetched.payload, fetched.media_type
        )
        report.manifests += 1
        report.digests.append(fetched.digest)


# -- this registry


class LocalSource:
    """Reads this registry's manifests and blobs (no pull events: replication is not a
    client's pull)."""

    def __init__(self, registry: Registry, storage: BlobStore) -> None:
        self.registry = registry
        self.storage = storage
        self.ctx = RequestInfo(method="REPLICATE")

    async def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        try:
            found = await self.registry.get_manifest(self.ctx, repository, reference, False)
        except (ManifestUnknown, NameUnknown) as e:
            raise ContentGone(e.message) from None
        return FetchedManifest(found.digest, found.media_type, found.payload)

    def blob_chunks(self, repository: str, digest: str) -> ChunkSource:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                await self.registry.blob_size(repository, digest)
            except BlobUnknown as e:
                raise ContentGone(e.message) from None
            async for chunk in self.storage.read(digest):
                yield chunk

        return chunks

    async def referrers(self, repository: str, digest: str) -> list[str]:
        found: list[str] = []
        last: str | None = None
        while True:
            page, last = await self.registry.referrers(
                repository, digest, None, REFERRERS_PAGE, last
            )
            found += [r.digest for r in page]
            if last is None:
                return found


class LocalDestination:
    """Writes into this registry through the core, as a push by ``actor`` would."""

    def __init__(self, registry: Registry, actor: str) -> None:
        self.registry = registry
        self.ctx = RequestInfo(method="REPLICATE", actor=actor)

    async def has_manifest(self, repository: str, digest: str) -> bool:
        return await self.tagged(repository, digest) is not None

    async def tagged(self, repository: str, tag: str) -> str | None:
        try:
            found = await self.registry.get_manifest(self.ctx, repository, tag, False)
        except (ManifestUnknown, NameUnknown):
            return None
        return found.digest

    async def ensure_blob(
        self, repository: str, digest: str, size: int, chunks: ChunkSource, report: CopyReport
    ) -> None:
        try:
            await self.registry.blob_size(repository, digest)
        except BlobUnknown:
            pass
        else:
            report.skipped += 1
            return
        # put_blob hashes as it stores and refuses bytes that do not match the digest.
        await self.registry.put_blob(self.ctx, repository, digest, _iterate(chunks()), size)
        report.blobs += 1
        report.bytes += size

    async def put_manifest(
        self, repository: str, reference: str, payload: bytes, media_type: str
    ) -> None:
        await self.registry.put_manifest(self.ctx, repository, reference, payload, media_type, [])


async def _iterate(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield chunk


# -- a remote registry


class RemoteSource:
    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    async def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        m = await self.client.get_manifest(repository, reference)
        return FetchedManifest(m.digest, m.media_type, m.payload)

    def blob_chunks(self, repository: str, digest: str) -> ChunkSource:
        async def chunks() -> AsyncIterator[bytes]:
            async with self.client.open_blob(repository, digest) as blob:
                async for chunk in blob.chunks():
                    yield chunk

        return chunks

    async def referrers(self, repository: str, digest: str) -> list[str]:
        return [str(d["digest"]) for d in await self.client.referrers(repository, digest)]


class MountMemory:
    """Which remote repository last received each digest, for one target (an LRU)."""

    def __init__(self, size: int = MOUNT_MEMORY) -> None:
        self.size = size
        self._where: OrderedDict[str, str] = OrderedDict()
        self.granted = 0
        self.refused = 0

    def source_for(self, digest: str, repository: str) -> str | None:
        if self.refused >= MOUNT_GIVE_UP and not self.granted:
            return None  # the target does not mount (or not for these credentials)
        where = self._where.get(digest)
        if where is None or where == repository:
            return None
        self._where.move_to_end(digest)
        return where

    def received(self, digest: str, repository: str) -> None:
        self._where[digest] = repository
        self._where.move_to_end(digest)
        while len(self._where) > self.size:
            self._where.popitem(last=False)


class RemoteDestination:
    def __init__(self, client: RegistryClient, mounts: MountMemory) -> None:
        self.client = client
        self.mounts = mounts

    async def has_manifest(self, repository: str, digest: str) -> bool:
        return await self.client.head_manifest(repository, digest) is not None

    async def tagged(self, repository: str, tag: str) -> str | None:
        found = await self.client.head_manifest(repository, tag)
        return None if found is None else found.digest

    async def ensure_blob(
        self, repository: str, digest: str, size: int, chunks: ChunkSource, report: CopyReport
    ) -> None:
        if await self.client.head_blob(repository, digest) is not None:
            report.skipped += 1
            self.mounts.received(digest, repository)
            return
        source = self.mounts.source_for(digest, repository)
        if source is not None:
            if await self.client.mount_blob(repository, digest, source):
                self.mounts.granted += 1
                self.mounts.received(digest, repository)
                report.mounted += 1
                return
            self.mounts.refused += 1
        await self.client.push_blob(repository, digest, size, chunks)
        self.mounts.received(digest, repository)
        report.blobs += 1
        report.bytes += size

    async def put_manifest(
        self, repository: str, reference: str, payload: bytes, media_type: str
    ) -> None:
        await self.client.put_manifest(repository, reference, payload, media_type)


def remote_repository(prefix: str, name: str) -> str:
    """The remote side's repository for local ``name`` (``<prefix>/<name>``)."""
    return f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name
