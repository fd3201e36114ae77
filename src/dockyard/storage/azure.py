"""Blobs in Azure Blob Storage (block blobs), the ``azure`` driver.

Layout in the container, under the configured prefix::

    blobs/<algorithm>/<encoded>   committed blobs, immutable
    uploads/<upload id>           one block blob per upload in progress

Uploads. Blocks belong to the blob they were staged on, and staged (uncommitted) blocks
cannot be read. So each upload is a block blob of its own that is always committed:
``create_upload`` puts it empty (``If-None-Match: *``, so an id is never reused), each
writer stages its bytes as blocks (Put Block, one per ``block_size`` bytes buffered) and
its ``close`` commits the saved blocks plus the new ones (Put Block List) on condition
that the blob is still at the ETag seen when the writer opened. The block ids, their
sizes and that ETag are the driver state the upload session saves (``azure_blocks``),
so any instance can continue the upload, and ``read_upload`` (the re-hash path) is a
ranged GET of the upload blob. A block id holds its offset and a random per-writer part,
so ids are unique per upload, offset and writer, and all have the same length. A writer
that failed, or whose session was not saved, leaves staged blocks or a commit past the
saved offset: the next writer commits the saved list, which drops them (Azure discards
blocks a Put Block List leaves out). ``abort`` therefore calls nothing.

Commit. Staged blocks cannot be committed into another blob, so the blob key is made by
a server-side Copy Blob of the committed upload blob, with ``If-None-Match: *`` (a
racing commit of the same digest cannot overwrite: it gets 409 and dedupes onto the
stored copy) and ``x-ms-source-if-match`` (the copy takes exactly the verified bytes).
A copy within one account is normally complete when the call returns; a pending copy is
waited for, and until it succeeds the blob is not there for ``stat``, ``read`` or
``list_blobs``. Then the upload blob is deleted.

Reads are ranged GETs of ``READ_CHUNK`` bytes (after one HEAD for size and copy state).
Credentials: a shared key, a SAS token or a connection string (``azure_client``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from azure.core import MatchConditions
from azure.storage.blob import BlobClient, BlobProperties

from dockyard.storage.azure_blocks import (
    AzureWriter,
    Blocks,
    commit_blocks,
    make_state,
    parse_blocks,
    total,
)
from dockyard.storage.azure_client import AzureAccount, AzureCalls, ServiceError
from dockyard.storage.azure_copy import complete, copy_blob, properties
from dockyard.storage.base import (
    BlobNotFound,
    DriverState,
    StorageError,
    StoredBlob,
    UploadNotFound,
)

MiB = 1024 * 1024
# Bytes buffered per upload before they are staged as a block: fewer, larger Put Blocks
# are faster (docs/architecture.md, "Azure client"), and this is an upload's memory.
DEFAULT_BLOCK_SIZE = 8 * MiB
# Upload ids the registry makes are UUID hex, with "mono-" for single-request pushes.
_UPLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# The OCI digest grammar (algorithm ":" encoded); anything else is no blob.
_DIGEST = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")


class AzureStore:
    name = "azure"

    def __init__(
        self,
        account: AzureAccount,
        prefix: str = "",
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        connections: int = 16,
    ) -> None:
        self.container = account.container
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.block_size = block_size
        self._calls = AzureCalls(account, connections)

    def __repr__(self) -> str:
        return f"AzureStore(container={self.container!r}, prefix={self.prefix!r})"

    # -- names

    def _blob_key(self, digest: str) -> str:
        match = _DIGEST.fullmatch(digest) if len(digest) <= 255 else None
        if match is None:
            raise BlobNotFound(digest)
        return f"{self.prefix}blobs/{match[1]}/{match[2]}"

    def _upload_key(self, upload_id: str) -> str:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise UploadNotFound(upload_id)
        return f"{self.prefix}uploads/{upload_id}"

    def _client(self, key: str) -> BlobClient:
        return self._calls.container.get_blob_client(key)

    # -- calls shared by blobs and uploads

    async def _properties(self, key: str) -> BlobProperties | None:
        return await properties(self._calls, self._client(key))

    async def _download(
        self, key: str, offset: int, length: int, etag: str, missing: StorageError
    ) -> AsyncIterator[bytes]:
        """``length`` bytes from ``offset`` of the blob at ``etag``, one GET per chunk."""
        client = self._client(key)
        try:
            downloader = await self._calls.run(
                "get blob",
                lambda: client.download_blob(
                    offset=offset,
                    length=length,
                    max_concurrency=1,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                ),
            )
            chunks = downloader.chunks()
            while True:
                chunk = await self._calls.run("get blob", lambda: next(chunks, None))
                if chunk is None:
                    return
                if chunk:
                    yield chunk
        except ServiceError as e:
            if e.status in (404, 412):  # deleted or replaced since the HEAD
                raise missing from None
            raise

    async def _delete_key(self, key: str, what: str) -> bool:
        client = self._client(key)
        try:
            await self._calls.run(what, client.delete_blob)
        except ServiceError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def _list(self, start: str, include: list[str]) -> AsyncIterator[BlobProperties]:
        container = self._calls.container
        pages = container.list_blobs(name_starts_with=start, include=include).by_page()

        def next_page() -> list[BlobProperties] | None:
            page = next(pages, None)
            return None if page is None else list(page)

        while (page := await self._calls.run("list blobs", next_page)) is not None:
            for item in page:
                yield item

    # -- committed blobs

    async def stat(self, digest: str) -> int | None:
        try:
            key = self._blob_key(digest)
        except BlobNotFound:
            return None
        props = await self._properties(key)
        return int(props.size) if props is not None and complete(props) else None

    async def read(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self._blob_key(digest)
        props = await self._properties(key)
        if props is None or not complete(props):
            raise BlobNotFound(digest)
        size = int(props.size)
        end = size if length is None else offset + length
        if offset < 0 or end < offset or end > size:
            raise StorageError(f"{digest} has {size} bytes, cannot read {offset} to {end}")
        if end > offset:
            async for chunk in self._download(
                key, offset, end - offset, props.etag, BlobNotFound(digest)
            ):
                yield chunk

    async def delete(self, digest: str) -> bool:
        try:
            key = self._blob_key(digest)
        except BlobNotFound:
            return False
        return await self._delete_key(key, "delete blob")

    async def list_blobs(self) -> AsyncIterator[str]:
        async for blob in self.list_blob_details():
            yield blob.digest

    async def list_blob_details(self) -> AsyncIterator[StoredBlob]:
        start = f"{self.prefix}blobs/"
        async for item in self._list(start, ["copy"]):
            algorithm, _, encoded = item.name[len(start) :].partition("/")
            digest = f"{algorithm}:{encoded}"
            if complete(item) and _DIGEST.fullmatch(digest):
                modified = item.last_modified.timestamp() if item.last_modified else 0.0
                yield StoredBlob(digest, int(item.size), modified)

    # -- uploads

    async def create_upload(self, upload_id: str) -> DriverState:
        client = self._client(self._upload_key(upload_id))
        try:
            result = await self._calls.run(
                "create upload", lambda: client.upload_blob(b"", if_none_match="*")
            )
        except ServiceError as e:
            if e.status in (409, 412):
                raise StorageError(f"upload {upload_id} already exists") from None
            raise
        return make_state([], str(result["etag"]))

    async def _blocks(self, key: str, upload_id: str, state: DriverState) -> Blocks:
        """The state's blocks; a state without any (saved by no writer) takes the upload
        blob's committed block list."""
        blocks = parse_blocks(state)
        if blocks is not None:
            return blocks
        client = self._client(key)
        try:
            committed, _ = await self._calls.run(
                "get block list", lambda: client.get_block_list("committed")
            )
        except ServiceError as e:
            if e.status == 404:
                raise UploadNotFound(upload_id) from None
            raise
        return [[block.id, int(block.size)] for block in committed]

    async def _upload_properties(self, upload_id: str) -> tuple[str, BlobProperties]:
        key = self._upload_key(upload_id)
        props = await self._properties(key)
        if props is None:
            raise UploadNotFound(upload_id)
        return key, props

    async def open_writer(self, upload_id: str, offset: int, state: DriverState) -> AzureWriter:
        key, props = await self._upload_properties(upload_id)
        blocks = await self._blocks(key, upload_id, state)
        if not 0 <= offset <= total(blocks):
            raise StorageError(f"upload {upload_id} holds {total(blocks)} bytes, not {offset}")
        kept: Blocks = []
        cut = 0
        for block_id, size in blocks:
            if cut + size > offset:
                break
            kept.append([block_id, size])
            cut += size
        head = b""
        if cut < offset:
            # offset falls inside a saved block: its first part is staged again, with the
            # new writer's bytes after it.
            missing = UploadNotFound(upload_id)
            head = b"".join(
                [c async for c in self._download(key, cut, offset - cut, props.etag, missing)]
            )
        exact = offset == total(blocks) and state.get("etag") == props.etag
        return AzureWriter(
            self._calls,
            self._client(key),
            upload_id,
            kept=kept,
            head=head,
            etag=props.etag,
            block_size=self.block_size,
            unchanged=dict(state) if exact else None,
        )

    async def read_upload(
        self, upload_id: str, state: DriverState, length: int
    ) -> AsyncIterator[bytes]:
        key, props = await self._upload_properties(upload_id)
        blocks = parse_blocks(state)
        held = int(props.size) if blocks is None else min(total(blocks), int(props.size))
        if not 0 <= length <= held:
            raise StorageError(f"upload {upload_id} holds {held} bytes, not {length}")
        # A failed writer's commit can only have added bytes past the saved ones, so the
        # first ``length`` bytes are the saved ones.
        if length:
            async for chunk in self._download(
                key, 0, length, props.etag, UploadNotFound(upload_id)
            ):
                yield chunk

    async def commit_upload(
        self, upload_id: str, state: DriverState, size: int, digest: str
    ) -> None:
        target = self._blob_key(digest)
        key, props = await self._upload_properties(upload_id)
        blocks = await self._blocks(key, upload_id, state)
        if total(blocks) != size:
            raise StorageError(f"upload {upload_id} holds {total(blocks)} bytes, expected {size}")
        etag = props.etag
        if int(props.size) != size or ("etag" in state and state["etag"] != etag):
            # A failed writer committed past the saved blocks: put the saved list back.
            etag = await commit_blocks(self._calls, self._client(key), upload_id, blocks, etag)
        await copy_blob(self._calls, self._client(key), self._client(target), etag, upload_id)
        await self._delete_key(key, "delete upload")

    async def delete_upload(self, upload_id: str, state: DriverState) -> None:
        try:
            key = self._upload_key(upload_id)
        except UploadNotFound:
            return
        await self._delete_key(key, "delete upload")

    async def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        start = f"{self.prefix}uploads/"
        # Uncommitted blobs too: blocks staged onto an upload deleted meanwhile make one.
        async for item in self._list(start, ["uncommittedblobs"]):
            modified = item.last_modified.timestamp() if item.last_modified else 0.0
            yield item.name[len(start) :], modified

    def local_path(self, digest: str) -> str | None:
        return None  # not on this machine's file system

    async def presigned_url(self, digest: str, method: str = "GET") -> str | None:
        return None

    async def check(self) -> None:
        # A HEAD of a name no upload can have: 404 BlobNotFound proves the service answers,
        # the credentials work and the container exists. No retries: /readyz wants now.
        client = self._client(f"{self.prefix}uploads/.readiness-probe")
        try:
            await self._calls.run(
                "check",
                lambda: client.get_blob_properties(retry_total=0),
                abandon_on_cancel=True,
            )
        except ServiceError as e:
            if e.status == 404 and e.code == "ContainerNotFound":
                raise StorageError(f"azure: container {self.container} does not exist") from None
            if e.status != 404:
                raise

    async def aclose(self) -> None:
        self._calls.close()
