"""The one table from errors to OCI error codes, HTTP statuses and headers.

Every error answer of the server goes through here: core errors raised by any ``/v2/``
route (``ERROR_TABLE``), the router's own answers (no such endpoint, method not allowed,
internal error) and the dashboard app's HTTP errors (``for_status``). Each OCI code is a
member of ``Code``, spelt once.

``Code`` holds only the codes of the OCI distribution spec's error-code table (plus UNKNOWN,
used only for the 500 body): clients match on them. Where no spec code fits (a bad tag, a
``Range`` past the end, a bad ``n=`` or ``window=``, no such endpoint) the entry's code is
None and the answer is the bare status, without a body.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from enum import StrEnum, unique
from typing import NamedTuple

from dockyard.core import errors as e
from dockyard.http.request import range_header

Headers = list[tuple[str, str]]


@unique
class Code(StrEnum):
    NAME_INVALID = "NAME_INVALID"
    NAME_UNKNOWN = "NAME_UNKNOWN"
    BLOB_UNKNOWN = "BLOB_UNKNOWN"
    BLOB_UPLOAD_UNKNOWN = "BLOB_UPLOAD_UNKNOWN"
    BLOB_UPLOAD_INVALID = "BLOB_UPLOAD_INVALID"
    DIGEST_INVALID = "DIGEST_INVALID"
    SIZE_INVALID = "SIZE_INVALID"
    MANIFEST_UNKNOWN = "MANIFEST_UNKNOWN"
    MANIFEST_INVALID = "MANIFEST_INVALID"
    MANIFEST_BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"
    UNAUTHORIZED = "UNAUTHORIZED"
    DENIED = "DENIED"
    UNSUPPORTED = "UNSUPPORTED"
    TOOMANYREQUESTS = "TOOMANYREQUESTS"
    # Distribution's own code for 503 (a pull-through cache's upstream is down).
    UNAVAILABLE = "UNAVAILABLE"
    # Only in the 500 body, never in a 4xx one.
    UNKNOWN = "UNKNOWN"


def _no_headers(error: e.RegistryError) -> Headers:
    return []


def _upload_offset(error: e.RegistryError) -> Headers:
    # A chunk out of order tells the client where the upload stands (unless unknown, -1).
    assert isinstance(error, e.UploadOutOfOrder)
    return [("range", range_header(error.offset))] if error.offset >= 0 else []


def _blob_size(error: e.RegistryError) -> Headers:
    assert isinstance(error, e.RangeNotSatisfiable)
    return [("content-range", f"bytes */{error.size}")]


def _challenge(error: e.RegistryError) -> Headers:
    assert isinstance(error, e.Unauthorized)
    return [("www-authenticate", error.challenge)]


def _retry_after(error: e.RegistryError) -> Headers:
    # Whole seconds (RFC 9110 10.2.3), rounded up so a client that waits is let in.
    assert isinstance(error, e.TooManyRequests)
    return [("retry-after", str(max(1, math.ceil(error.retry_after))))]


class Entry(NamedTuple):
    code: Code | None  # None: no spec code fits, the answer has no body
    status: int
    headers: Callable[[e.RegistryError], Headers] = _no_headers


# Most specific classes first: lookup walks the exception's MRO.
ERROR_TABLE: dict[type[e.RegistryError], Entry] = {
    e.NameInvalid: Entry(Code.NAME_INVALID, 400),
    e.NameUnknown: Entry(Code.NAME_UNKNOWN, 404),
    e.BlobUnknown: Entry(Code.BLOB_UNKNOWN, 404),
    e.UploadUnknown: Entry(Code.BLOB_UPLOAD_UNKNOWN, 404),
    e.UploadOutOfOrder: Entry(Code.BLOB_UPLOAD_INVALID, 416, _upload_offset),
    e.UploadInvalid: Entry(Code.BLOB_UPLOAD_INVALID, 400),
    e.DigestInvalid: Entry(Code.DIGEST_INVALID, 400),
    e.SizeInvalid: Entry(Code.SIZE_INVALID, 400),
    e.ManifestUnknown: Entry(Code.MANIFEST_UNKNOWN, 404),
    e.ManifestInvalid: Entry(Code.MANIFEST_INVALID, 400),
    e.ManifestBlobUnknown: Entry(Code.MANIFEST_BLOB_UNKNOWN, 400),
    e.ManifestTooLarge: Entry(Code.SIZE_INVALID, 413),
    e.TagInvalid: Entry(None, 400),
    e.RangeNotSatisfiable: Entry(None, 416, _blob_size),
    e.PaginationInvalid: Entry(None, 400),
    e.ParameterInvalid: Entry(None, 400),
    e.Unsupported: Entry(Code.UNSUPPORTED, 405),
    e.Denied: Entry(Code.DENIED, 403),
    e.Unauthorized: Entry(Code.UNAUTHORIZED, 401, _challenge),
    e.TooManyRequests: Entry(Code.TOOMANYREQUESTS, 429, _retry_after),
    # Distribution's errcode.ErrorCodeUnavailable (not a spec code; its proxy's answer).
    e.UpstreamUnavailable: Entry(Code.UNAVAILABLE, 503),
}
# Answers no core error stands for.
NO_ENDPOINT = Entry(None, 404)
METHOD_NOT_ALLOWED = Entry(Code.UNSUPPORTED, 405)
INTERNAL = Entry(Code.UNKNOWN, 500)
# The blob store failed after the driver's own retries (asgi.py): worth a retry.
STORAGE_UNAVAILABLE = Entry(Code.UNKNOWN, 503)
_BY_STATUS = {entry.status: entry for entry in (NO_ENDPOINT, METHOD_NOT_ALLOWED, INTERNAL)}


def entry_for(error: e.RegistryError) -> Entry:
    for cls in type(error).__mro__:
        entry = ERROR_TABLE.get(cls)
        if entry is not None:
            return entry
    return INTERNAL


def for_status(status: int) -> Entry:
    """The entry for an HTTP error status that comes without a core error (the web app's)."""
    return _BY_STATUS.get(status) or Entry(Code.UNKNOWN if status >= 500 else None, status)


def error_body(code: Code | None, message: str, detail: object = None) -> bytes:
    """The OCI error document; empty when there is no spec code to send."""
    if code is None:
        return b""
    entry: dict[str, object] = {"code": code.value, "message": message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode()


def render(error: e.RegistryError) -> tuple[int, Headers, bytes]:
    """Status, headers (``content-type`` first) and body of the answer to ``error``."""
    entry = entry_for(error)
    headers = entry.headers(error)
    if entry.code is not None:
        headers = [("content-type", "application/json"), *headers]
    return entry.status, headers, error_body(entry.code, error.message, error.detail)


def internal_error_body(request_id: str, message: str = "internal error") -> bytes:
    """The 5xx body: nothing about the failure, only the request id to find it in the log."""
    doc = {
        "errors": [
            {
                "code": Code.UNKNOWN.value,
                "message": message,
                "detail": {"request": request_id},
            }
        ]
    }
    return json.dumps(doc, separators=(",", ":")).encode()
