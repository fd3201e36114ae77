"""The commit of the ``azure`` driver: a server-side copy of the upload blob to the blob
key that cannot overwrite, and the waits for a copy still in progress."""

from __future__ import annotations

from typing import Any

import anyio
from azure.core import MatchConditions
from azure.storage.blob import BlobClient, BlobProperties

from dockyard.storage.azure_client import AzureCalls, ServiceError
from dockyard.storage.base import StorageError

# How long a commit waits for a pending server-side copy, and how often it looks.
COPY_WAIT_SECONDS = 600.0
COPY_POLL_SECONDS = 0.2


def complete(props: BlobProperties) -> bool:
    """Whether the blob has all its bytes (it is not a pending or failed copy)."""
    return props.copy.status in (None, "success")


async def properties(calls: AzureCalls, client: BlobClient) -> BlobProperties | None:
    try:
        return await calls.run("get blob properties", client.get_blob_properties)
    except ServiceError as e:
        if e.status == 404:
            return None
        raise


async def copy_blob(
    calls: AzureCalls, source: BlobClient, target: BlobClient, etag: str, upload_id: str
) -> None:
    """Copy ``source`` at ``etag`` to ``target`` unless ``target`` exists (dedupe);
    return once ``target`` is complete."""
    for _ in range(3):
        try:
            result: dict[str, Any] = await calls.run(
                "copy blob",
                lambda: target.start_copy_from_url(
                    source.url, if_none_match="*", source_if_match=etag
                ),
            )
        except ServiceError as e:
            if e.status not in (409, 412):
                raise
            # The blob is stored already, or being copied by a racing commit: dedupe
            # onto it once it is complete.
            if await wait_for_copy(calls, target) is not None:
                return
            if e.status == 412 and "source" in e.code.lower():
                raise StorageError(f"upload {upload_id} changed during its commit") from None
            continue  # it went away meanwhile (a failed copy, a delete): try again
        if result.get("copy_status") == "success":
            return
        if await wait_for_copy(calls, target) is not None:
            return
    raise StorageError(f"azure: the copy of upload {upload_id} to {target.blob_name} failed")


async def wait_for_copy(calls: AzureCalls, target: BlobClient) -> BlobProperties | None:
    """The blob once complete; None if it is not there or its copy failed (then the
    failed copy is deleted, so that the commit can try again)."""
    with anyio.move_on_after(COPY_WAIT_SECONDS):
        while True:
            props = await properties(calls, target)
            if props is None or complete(props):
                return props
            if props.copy.status != "pending":
                await _delete_failed_copy(calls, target, props.etag)
                return None
            await anyio.sleep(COPY_POLL_SECONDS)
    raise StorageError(f"azure: the copy to {target.blob_name} is still pending")


async def _delete_failed_copy(calls: AzureCalls, target: BlobClient, etag: str) -> None:
    try:
        await calls.run(
            "delete failed copy",
            lambda: target.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified),
        )
    except ServiceError as e:
        if e.status not in (404, 412):
            raise
