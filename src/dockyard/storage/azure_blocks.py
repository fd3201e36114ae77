"""Uploads of the ``azure`` driver: block lists in the driver state, and the writer.

The driver state of an upload is ``{"blocks": [[block id, size], ...], "etag": ...}``:
the blocks that make its bytes, in order, and the ETag of the upload blob once they
were committed. It is all any instance needs to continue the upload.
"""

from __future__ import annotations

import secrets
from typing import Any, cast

from azure.storage.blob import BlobBlock, BlobClient

from dockyard.storage.azure_client import AzureCalls, ServiceError
from dockyard.storage.base import DriverState, StorageError, UploadNotFound

Blocks = list[list[Any]]  # [[block id, size], ...]: JSON has no tuples


def new_block_id(offset: int, nonce: str) -> str:
    """A block id that is unique per upload, offset and writer, and always 25 characters
    (every block id of a blob must have the same length; the SDK base64-encodes it)."""
    return f"{offset:012x}-{nonce}"


def new_nonce() -> str:
    return secrets.token_hex(6)


def parse_blocks(state: DriverState) -> Blocks | None:
    """The state's block list, None when it has none; StorageError when it is malformed."""
    blocks = state.get("blocks")
    if blocks is None:
        return None
    if not isinstance(blocks, list) or not all(
        isinstance(b, list)
        and len(b) == 2
        and isinstance(b[0], str)
        and isinstance(b[1], int)
        and b[1] >= 0
        for b in blocks
    ):
        raise StorageError("azure: the upload's saved block list is malformed")
    return blocks


def total(blocks: Blocks) -> int:
    return sum(size for _, size in blocks)


def make_state(blocks: Blocks, etag: str) -> DriverState:
    return {"blocks": blocks, "etag": etag}


async def commit_blocks(
    calls: AzureCalls, blob: BlobClient, upload_id: str, blocks: Blocks, if_match: str
) -> str:
    """Commit ``blocks`` as the upload blob's content if it is still at ``if_match``;
    the new ETag. Blocks staged but left out (an aborted writer's) are dropped."""
    try:
        result = await calls.run(
            "put block list",
            lambda: blob.commit_block_list(
                [BlobBlock(block_id) for block_id, _ in blocks], if_match=if_match
            ),
        )
    except ServiceError as e:
        if e.status == 404:
            raise UploadNotFound(upload_id) from None
        if e.status == 412:
            raise StorageError(
                f"azure: upload {upload_id} was changed by another writer meanwhile"
            ) from None
        raise
    return str(result["etag"])


class AzureWriter:
    """Appends to an upload from ``offset``: stages a block whenever ``block_size`` bytes
    are buffered, and on close commits the saved blocks before ``offset`` plus the new
    ones onto the upload blob, on condition that nobody else committed meanwhile."""

    def __init__(
        self,
        calls: AzureCalls,
        blob: BlobClient,
        upload_id: str,
        *,
        kept: Blocks,
        head: bytes,
        etag: str,
        block_size: int,
        unchanged: DriverState | None,
    ) -> None:
        self._calls = calls
        self._blob = blob
        self._upload_id = upload_id
        self._blocks = list(kept)
        # The bytes of a saved block cut at ``offset`` start the buffer (see open_writer).
        self._buffer = bytearray(head)
        self._position = total(kept)
        self._etag = etag
        self._block_size = block_size
        self._nonce = new_nonce()
        # The saved state, when the upload blob holds exactly it: a close with nothing
        # written then has nothing to commit.
        self._unchanged = unchanged

    async def _stage(self) -> None:
        # Handed over whole, not copied: an upload holds one block's bytes at a time.
        data, self._buffer = self._buffer, bytearray()
        block_id = new_block_id(self._position, self._nonce)
        await self._calls.run(
            # The SDK sends a bytearray body as it is (its annotation says bytes).
            "put block",
            lambda: self._blob.stage_block(block_id, cast(bytes, data), length=len(data)),
        )
        self._blocks.append([block_id, len(data)])
        self._position += len(data)
        self._unchanged = None

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._block_size:
            await self._stage()

    async def close(self) -> DriverState:
        if self._buffer:
            await self._stage()
        if self._unchanged is not None:
            return self._unchanged
        etag = await commit_blocks(
            self._calls, self._blob, self._upload_id, self._blocks, self._etag
        )
        return make_state(self._blocks, etag)

    async def abort(self) -> None:
        # Nothing to undo remotely: staged blocks stay uncommitted until the next commit
        # of the upload (which leaves them out) or its deletion. A call here would also
        # run shielded while the service may be the reason the request failed.
        self._buffer.clear()
