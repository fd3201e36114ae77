"""What can go wrong in a registry operation, named for what went wrong.

The HTTP layer maps each class to one OCI error code and status (``http/errors.py``)::

    RegistryError
    +-- NameInvalid            repository name breaks the grammar
    +-- NameUnknown            no such repository
    +-- BlobUnknown            blob not stored or not linked to the repository
    +-- UploadUnknown          no such upload session (or it belongs elsewhere)
    +-- UploadInvalid          the request does not fit the upload session
    |   +-- UploadOutOfOrder   a chunk does not continue the upload (carries the offset)
    +-- DigestInvalid          malformed digest, or content does not match it
    +-- SizeInvalid            body length disagrees with Content-Length/Content-Range
    +-- ManifestUnknown        no such manifest or tag
    +-- ManifestInvalid        the manifest payload is unacceptable
    +-- ManifestBlobUnknown    a manifest references a blob the repository lacks
    +-- ManifestTooLarge       over limits.max_manifest_bytes
    +-- TagInvalid             a tag breaks the grammar
    +-- RangeNotSatisfiable    a blob Range outside the blob (carries the size)
    +-- PaginationInvalid      a page size (n=) that is not a non-negative integer
    +-- ParameterInvalid       another query parameter out of its range (stats window=)
    +-- Unsupported            the operation or parameter is not supported
    +-- Denied                 the authorizer refused the scope to a known caller
    +-- Unauthorized           no or bad credentials (carries the WWW-Authenticate challenge)
    +-- TooManyRequests        over a rate limit (carries the seconds to wait)
    +-- UpstreamUnavailable    a pull-through cache's upstream failed and nothing is cached
"""

from __future__ import annotations


class RegistryError(Exception):
    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NameInvalid(RegistryError):
    pass


class NameUnknown(RegistryError):
    pass


class BlobUnknown(RegistryError):
    pass


class UploadUnknown(RegistryError):
    pass


class UploadInvalid(RegistryError):
    pass


class UploadOutOfOrder(UploadInvalid):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class DigestInvalid(RegistryError):
    pass


class SizeInvalid(RegistryError):
    pass


class ManifestUnknown(RegistryError):
    pass


class ManifestInvalid(RegistryError):
    pass


class ManifestBlobUnknown(RegistryError):
    pass


class ManifestTooLarge(RegistryError):
    pass


class TagInvalid(RegistryError):
    pass


class RangeNotSatisfiable(RegistryError):
    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class PaginationInvalid(RegistryError):
    pass


class ParameterInvalid(RegistryError):
    pass


class Unsupported(RegistryError):
    pass


class Denied(RegistryError):
    pass


class Unauthorized(RegistryError):
    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge


class TooManyRequests(RegistryError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamUnavailable(RegistryError):
    pass
