"""``RegistryClient``: one remote registry spoken to over the OCI Distribution API.

One client per remote registry, shared by every task of a process (httpx's connection
pool underneath, running on trio through anyio). Repository names are the remote's own.

Authentication, as Docker and containerd do it: a request goes out with the credential
cached for its scope (none at first); a 401 answer's ``WWW-Authenticate`` challenge says
how to authenticate. ``Basic``: the request is repeated with ``username``/``password``.
``Bearer realm=...,service=...,scope=...``: a token is fetched from the realm (GET with
``service`` and each ``scope``, Basic credentials when set, anonymous otherwise), cached
per scope until ``expires_in`` (default 60 s) minus a margin, and the request repeated
once with it. A second 401 is ``Denied``.

Retries: transport errors, timeouts, 5xx and 429 are retried ``max_attempts`` times in all
with exponential backoff (429's ``Retry-After`` honoured, capped); then ``Unavailable``.
Other 4xx answers are not retried.

Integrity: ``get_manifest`` computes the digest over the payload and checks it against a
digest reference and the ``Docker-Content-Digest`` header; blob bytes are not checked here
(the caller hashes as it stores: ``open_blob`` streams them).

Errors::

    UpstreamError     base; ``status`` is the HTTP status when there was one
      Unavailable     could not get an answer: transport error, timeout, 5xx, 429
      NotFound        404 (MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN, ...)
      Denied          401 after authenticating, or 403
      Rejected        any other 4xx (a manifest the remote refuses, ...)
      Corrupt         the content does not match its digest
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from dockyard.config import RemoteRegistry
from dockyard.oci.manifest import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

# What a manifest GET or HEAD accepts: every manifest kind dockyard stores.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))


class UpstreamError(Exception):
    """A remote registry could not do what was asked; the message says what and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(UpstreamError):
    """No usable answer: a transport error, a timeout, 5xx or 429 (after the retries)."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class NotFound(UpstreamError):
    """404: the remote has no such repository, manifest or blob."""


class Denied(UpstreamError):
    """401 after authenticating, or 403."""


class Rejected(UpstreamError):
    """Another 4xx: the remote refused the request (an invalid manifest, ...)."""


class Corrupt(UpstreamError):
    """The content the remote sent does not match its digest."""


@dataclass(frozen=True, slots=True)
class RemoteDescriptor:
    """What a manifest HEAD says (``Docker-Content-Digest``, ``Content-Type``, size)."""

    digest: str
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class RemoteManifest:
    """A manifest fetched and checked: ``digest`` is computed over ``payload``."""

    digest: str
    media_type: str
    payload: bytes


class RemoteBlob:
    """An open blob download: ``size`` from ``Content-Length``, ``chunks()`` the bytes."""

    def __init__(self, size: int, chunks: AsyncIterator[bytes]) -> None:
        self.size = size
        self._chunks = chunks

    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks


# A source of a blob's bytes that can be read again from the start (a retried upload).
ChunkSource = Callable[[], AsyncIterable[bytes]]


class RegistryClient:
    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        timeout: float = 30.0,
        verify: bool | str = True,
        max_attempts: int = 3,
        backoff: float = 0.5,
    ) -> None:
        raise NotImplementedError

    @classmethod
    def from_settings(cls, remote: RemoteRegistry) -> RegistryClient:
        """A client of ``remote`` (url, credentials, TLS verification, timeout)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def ping(self) -> None:
        """``GET /v2/`` (authenticating if challenged); raises if it is not 200."""
        raise NotImplementedError

    async def head_manifest(self, repository: str, reference: str) -> RemoteDescriptor | None:
        """The manifest a tag or digest names, without its body; None when 404."""
        raise NotImplementedError

    async def get_manifest(self, repository: str, reference: str) -> RemoteManifest:
        """The manifest a tag or digest names (``Corrupt`` if a digest does not match)."""
        raise NotImplementedError

    async def head_blob(self, repository: str, digest: str) -> int | None:
        """The blob's size, or None when the remote does not have it there."""
        raise NotImplementedError

    def open_blob(self, repository: str, digest: str) -> AbstractAsyncContextManager[RemoteBlob]:
        """``async with client.open_blob(repo, digest) as blob``: the download, streamed
        (redirects followed); ``NotFound`` on 404. Retries happen before the first byte
        only: a failure mid-stream raises ``Unavailable`` from ``chunks()``."""
        raise NotImplementedError

    async def push_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        chunks: ChunkSource,
        mount_from: str | None = None,
    ) -> None:
        """Upload a blob the remote lacks (POST, then one streamed PUT ?digest=). With
        ``mount_from``, a cross-repository mount is asked first (the remote answers 201
        when it mounted, 202 with an upload otherwise). ``chunks`` is called again for a
        retry."""
        raise NotImplementedError

    async def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Ask for a cross-repository mount from ``source``; True when the remote mounted
        it (201), False when it did not (the upload it opened is cancelled)."""
        raise NotImplementedError

    async def put_manifest(
        self, repository: str, reference: str, payload: bytes, media_type: str
    ) -> str:
        """Store a manifest under a tag or digest; the digest the remote answers."""
        raise NotImplementedError

    async def delete_manifest(self, repository: str, reference: str) -> None:
        raise NotImplementedError

    async def tags(self, repository: str) -> list[str]:
        """Every tag of a repository (all pages); [] when the repository is unknown."""
        raise NotImplementedError

    async def catalog(self) -> list[str]:
        """Every repository the remote lists to these credentials (all pages)."""
        raise NotImplementedError

    async def referrers(self, repository: str, digest: str) -> list[dict[str, Any]]:
        """The referrers API's descriptors for ``digest`` ([] when the remote has none or
        does not implement the API)."""
        raise NotImplementedError
