"""Answers for a request that met an outage: the blob store or the database did not
answer (after the driver's or pool's own retries). 503 with Retry-After, so the client
retries, here or behind a balancer on another instance; logged in one line."""

from __future__ import annotations

import logging

from dockyard.http.errors import INTERNAL, STORAGE_UNAVAILABLE, internal_error_body
from dockyard.http.request import Response
from dockyard.meta.records import StoreUnavailable
from dockyard.storage import BlobNotFound, StorageError, UploadNotFound

log = logging.getLogger("dockyard.http")


def database_failed(error: StoreUnavailable, method: str, path: str, request_id: str) -> Response:
    """The database did not answer (lost connection, none free in time): 503 as for a
    storage outage, logged in one line; the change was rolled back, the client retries."""
    log.warning("database failed in %s %s: %s", method, path[:200], error)
    return Response(
        STORAGE_UNAVAILABLE.status,
        [("content-type", "application/json"), ("retry-after", "1")],
        internal_error_body(request_id, "database unavailable"),
        error_code=STORAGE_UNAVAILABLE.code.value if STORAGE_UNAVAILABLE.code else None,
    )


def storage_failed(error: StorageError, method: str, path: str, request_id: str) -> Response:
    """A storage failure the driver could not retry away: 503, so the client retries (here
    or, behind a balancer, on another instance). Logged without a traceback (the driver's
    message says what failed; an outage would flood the log), never with credentials
    (drivers keep them out of their messages). Missing bytes that the metadata promised
    are no outage: a logged 500."""
    if isinstance(error, BlobNotFound | UploadNotFound):
        log.exception("missing storage object in %s %s", method, path[:200])
        entry, message, headers = INTERNAL, "internal error", []
    else:
        log.warning("storage failed in %s %s: %s", method, path[:200], error)
        entry, message = STORAGE_UNAVAILABLE, "storage unavailable"
        headers = [("retry-after", "1")]
    return Response(
        entry.status,
        [("content-type", "application/json"), *headers],
        internal_error_body(request_id, message),
        error_code=entry.code.value if entry.code else None,
    )
