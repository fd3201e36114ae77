"""The one table from errors to OCI error codes, HTTP statuses and headers.

Every error answer of the server goes through here: core errors raised by any ``/v2/``
route (``ERROR_TABLE``), the router's own answers (no such endpoint, method not allowed,
internal error) and the dashboard app's HTTP errors (``for_status``). Each OCI code is a
member of ``Code``, spelt once.
"""

from __future__ import annotations

import json
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
    TAG_INVALID = "TAG_INVALID"
    # Not in the spec's list; clearer than any code that is.
    RANGE_INVALID = "RANGE_INVALID"
    # CNCF distribution's code for a bad n=.
    PAGINATION_NUMBER_INVALID = "PAGINATION_NUMBER_INVALID"
    # dockyard's own endpoints (the statistics' window=).
    PARAMETER_INVALID = "PARAMETER_INVALID"
    UNSUPPORTED = "UNSUPPORTED"
    DENIED = "DENIED"
    UNAUTHORIZED = "UNAUTHORIZED"
    # No such endpoint (distribution's answer to an unknown path).
    NOT_FOUND = "NOT_FOUND"
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


class Entry(NamedTuple):
    code: Code
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
    e.TagInvalid: Entry(Code.TAG_INVALID, 400),
    e.RangeNotSatisfiable: Entry(Code.RANGE_INVALID, 416, _blob_size),
    e.PaginationInvalid: Entry(Code.PAGINATION_NUMBER_INVALID, 400),
    e.ParameterInvalid: Entry(Code.PARAMETER_INVALID, 400),
    e.Unsupported: Entry(Code.UNSUPPORTED, 405),
    e.Denied: Entry(Code.DENIED, 403),
}
# Answers no core error stands for.
NO_ENDPOINT = Entry(Code.NOT_FOUND, 404)
METHOD_NOT_ALLOWED = Entry(Code.UNSUPPORTED, 405)
INTERNAL = Entry(Code.UNKNOWN, 500)
_BY_STATUS = {entry.status: entry for entry in (NO_ENDPOINT, METHOD_NOT_ALLOWED, INTERNAL)}


def entry_for(error: e.RegistryError) -> Entry:
    for cls in type(error).__mro__:
        entry = ERROR_TABLE.get(cls)
        if entry is not None:
            return entry
    return INTERNAL


def for_status(status: int) -> Entry:
    """The entry for an HTTP error status that comes without a core error (the web app's)."""
    return _BY_STATUS.get(status) or Entry(Code.UNKNOWN, status)


def error_body(code: Code, message: str, detail: object = None) -> bytes:
    entry: dict[str, object] = {"code": code.value, "message": message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode()


def render(error: e.RegistryError) -> tuple[int, Headers, bytes]:
    """Status, headers (``content-type`` first) and body of the answer to ``error``."""
    entry = entry_for(error)
    headers = [("content-type", "application/json"), *entry.headers(error)]
    return entry.status, headers, error_body(entry.code, error.message, error.detail)


def internal_error_body(request_id: str) -> bytes:
    """The 500 body: nothing about the failure, only the request id to find it in the log."""
    doc = {
        "errors": [
            {
                "code": Code.UNKNOWN.value,
                "message": "internal error",
                "detail": {"request": request_id},
            }
        ]
    }
    return json.dumps(doc, separators=(",", ":")).encode()
