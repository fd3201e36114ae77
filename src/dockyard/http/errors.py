"""The one table from core errors to OCI error codes and HTTP statuses."""

from __future__ import annotations

import json

from dockyard.core import errors as e

# Most specific classes first: lookup walks the exception's MRO.
ERROR_TABLE: dict[type[e.RegistryError], tuple[str, int]] = {
    e.NameInvalid: ("NAME_INVALID", 400),
    e.NameUnknown: ("NAME_UNKNOWN", 404),
    e.BlobUnknown: ("BLOB_UNKNOWN", 404),
    e.UploadUnknown: ("BLOB_UPLOAD_UNKNOWN", 404),
    e.UploadOutOfOrder: ("BLOB_UPLOAD_INVALID", 416),
    e.UploadInvalid: ("BLOB_UPLOAD_INVALID", 400),
    e.DigestInvalid: ("DIGEST_INVALID", 400),
    e.SizeInvalid: ("SIZE_INVALID", 400),
    e.ManifestUnknown: ("MANIFEST_UNKNOWN", 404),
    e.ManifestInvalid: ("MANIFEST_INVALID", 400),
    e.ManifestBlobUnknown: ("MANIFEST_BLOB_UNKNOWN", 400),
    e.ManifestTooLarge: ("SIZE_INVALID", 413),
    e.TagInvalid: ("TAG_INVALID", 400),
    e.RangeNotSatisfiable: ("RANGE_INVALID", 416),  # not in the spec list; clearer than any that is
    e.PaginationInvalid: ("PAGINATION_NUMBER_INVALID", 400),  # distribution's code
    e.ParameterInvalid: ("PARAMETER_INVALID", 400),  # dockyard's own endpoints
    e.Unsupported: ("UNSUPPORTED", 405),
    e.Denied: ("DENIED", 403),
}


def status_and_code(error: e.RegistryError) -> tuple[str, int]:
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ("UNKNOWN", 500)


def error_body(code: str, message: str, detail: object = None) -> bytes:
    entry: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode()
