"""``RegistryClient``: one remote registry spoken to over the OCI Distribution API.

One client per remote registry, shared by every task of a process (httpx's connection
pool underneath, on trio or asyncio through anyio). Repository names are the remote's own.

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

import base64
import json
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urljoin

import anyio
import httpx

from dockyard import __version__
from dockyard.config import RemoteRegistry
from dockyard.oci.digest import Digest, DigestError, digest_of
from dockyard.oci.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)

# What a manifest GET or HEAD accepts: every manifest kind dockyard stores.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
# The largest manifest read from a remote (dockyard's own default limit is 4 MiB).
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
# Bytes of an error answer read for its message.
ERROR_BODY_LIMIT = 64 * 1024
# Page size asked for in tag, catalog and referrer listings.
PAGE = 1000
# A token is used until this many seconds before it expires (at most half its life).
TOKEN_MARGIN = 30.0
# Longest wait honoured from a 429's Retry-After between two attempts.
MAX_RETRY_AFTER = 30.0
# Bytes per chunk of a blob download.
READ_CHUNK = 1024 * 1024


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
# A request body: bytes, or a source of chunks read again for a repeated request.
Content = bytes | ChunkSource | None

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def _scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


def _quote(repository: str) -> str:
    return quote(repository, safe="/")


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lower case) and parameters of a ``WWW-Authenticate`` value."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


def _media_type(response: httpx.Response, payload: bytes | None = None) -> str:
    content_type: str = response.headers.get("content-type", "").split(";")[0].strip()
    if content_type in MANIFEST_TYPES or payload is None:
        return content_type
    # Some registries answer application/json: the manifest's own mediaType says.
    try:
        declared = json.loads(payload).get("mediaType")
    except (ValueError, AttributeError):
        declared = None
    return str(declared) if isinstance(declared, str) else content_type


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
        self.url = url.rstrip("/")
        self._credentials = (username, password) if username else None
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            verify=verify,
            headers={"User-Agent": f"dockyard/{__version__}"},
        )
        # Learned from the first challenge: "basic" or "bearer" (with realm and service).
        self._scheme: str | None = None
        self._challenge: dict[str, str] = {}
        # Bearer tokens by the scopes they were asked for: (token, monotonic expiry).
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    @classmethod
    def from_settings(cls, remote: RemoteRegistry) -> RegistryClient:
        """A client of ``remote`` (url, credentials, TLS verification, timeout)."""
        verify: bool | str = remote.ca_bundle or remote.verify_tls
        return cls(
            remote.url,
            username=remote.username,
            password=remote.password,
            timeout=remote.timeout,
            verify=verify,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- authentication

    def _authorization(self, scopes: tuple[str, ...]) -> str | None:
        if self._scheme == "basic" and self._credentials is not None:
            user, password = self._credentials
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if self._scheme == "bearer":
            cached = self._tokens.get(scopes)
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
        return None

    async def _authenticate(self, header: str, scopes: tuple[str, ...]) -> None:
        """Act on a 401's challenge so that the repeated request may pass."""
        scheme, params = _parse_challenge(header)
        if scheme == "basic":
            if self._credentials is None:
                raise Denied(f"{self.url} asks for credentials and none are configured", 401)
            self._scheme = "basic"
            return
        if scheme != "bearer" or "realm" not in params:
            raise Denied(f"{self.url} answered 401 with a challenge dockyard cannot meet", 401)
        self._scheme, self._challenge = "bearer", params
        asked = scopes
        if params.get("scope") and params["scope"] not in asked:
            asked += (params["scope"],)
        await self._fetch_token(scopes, asked)

    async def _fetch_token(self, key: tuple[str, ...], scopes: tuple[str, ...]) -> None:
        """A token for ``scopes`` from the realm of the last challenge, cached as ``key``."""
        realm = self._challenge["realm"]
        query: list[tuple[str, str | int | float | bool | None]] = [("scope", s) for s in scopes]
        if self._challenge.get("service"):
            query.insert(0, ("service", self._challenge["service"]))
        auth = httpx.BasicAuth(*self._credentials) if self._credentials else None
        try:
            r = await self._http.get(realm, params=query, auth=auth)
        except httpx.HTTPError as e:
            raise Unavailable(f"token endpoint {realm}: {e!r}") from None
        if r.status_code in (401, 403):
            raise Denied(f"token endpoint {realm} refused: {r.status_code}", 401)
        if r.status_code != 200:
            raise Unavailable(f"token endpoint {realm}: {r.status_code}", r.status_code)
        try:
            doc = r.json()
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token endpoint {realm} sent no token")
        margin = min(TOKEN_MARGIN, lifetime / 2)
        self._tokens[key] = (token, time.monotonic() + lifetime - margin)

    async def _prepare(self, scopes: tuple[str, ...]) -> None:
        """Authenticate before a request rather than after its 401: a listing answered
        to anonymous callers would otherwise never challenge, and a streamed body would
        be sent twice. The first call learns the scheme from ``GET /v2/``."""
        if self._credentials is None:
            return
        if self._scheme is None:
            try:
                r = await self._http.get(self._v2(""))
            except httpx.HTTPError as e:
                raise Unavailable(f"GET {self.url}/v2/: {e!r}") from None
            challenge = r.headers.get("www-authenticate", "")
            if r.status_code != 401 or not challenge:
                self._scheme = "none"
                return
            scheme, params = _parse_challenge(challenge)
            if scheme == "basic":
                self._scheme = "basic"
            elif scheme == "bearer" and "realm" in params:
                self._scheme, self._challenge = "bearer", params
        if self._scheme == "bearer" and scopes and self._authorization(scopes) is None:
            await self._fetch_token(scopes, scopes)

    # -- requests

    async def _open(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        *,
        headers: dict[str, str] | None = None,
        content: Content = None,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """One request, authenticated (one repeat after a 401), retried while the remote
        is unavailable; the response is open (streamed): the caller closes it."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(method, url, scopes, headers, content, follow_redirects)
            except Unavailable as e:
                if attempt >= self._max_attempts:
                    raise
                delay = self._backoff * 2 ** (attempt - 1)
                if e.retry_after is not None:
                    delay = min(MAX_RETRY_AFTER, max(delay, e.retry_after))
                await anyio.sleep(delay)

    async def _attempt(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None,
        content: Content,
        follow_redirects: bool,
    ) -> httpx.Response:
        await self._prepare(scopes)
        for authenticated in (False, True):
            request_headers = dict(headers or {})
            authorization = self._authorization(scopes)
            if authorization is not None:
                request_headers["Authorization"] = authorization
            body = content() if callable(content) else content
            request = self._http.build_request(method, url, headers=request_headers, content=body)
            try:
                r = await self._http.send(request, stream=True, follow_redirects=follow_redirects)
            except httpx.HTTPError as e:
                raise Unavailable(f"{method} {url}: {e!r}") from None
            if r.status_code != 401:
                break
            challenge = r.headers.get("www-authenticate", "")
            await r.aclose()
            if authenticated or not challenge:
                raise Denied(f"{method} {url}: 401 unauthorized", 401)
            await self._authenticate(challenge, scopes)
        if r.status_code == 429 or r.status_code >= 500:
            retry_after: float | None = None
            with suppress(ValueError):
                retry_after = float(r.headers.get("retry-after", ""))
            message = f"{method} {url}: {r.status_code} {await self._message(r)}"
            raise Unavailable(message, r.status_code, retry_after)
        return r

    async def _message(self, r: httpx.Response) -> str:
        """The answer's OCI error message (or its first bytes); closes the response."""
        data = b""
        try:
            async for chunk in r.aiter_bytes():
                data += chunk
                if len(data) >= ERROR_BODY_LIMIT:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await r.aclose()
        try:
            errors = json.loads(data)["errors"]
            return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (ValueError, KeyError, TypeError, AttributeError):
            return data[:200].decode(errors="replace").strip()

    async def _fail(self, r: httpx.Response, what: str) -> UpstreamError:
        """The error for an unexpected answer (closes it)."""
        message = f"{what}: {r.status_code} {await self._message(r)}"
        if r.status_code == 404:
            return NotFound(message, 404)
        if r.status_code in (401, 403):
            return Denied(message, r.status_code)
        return Rejected(message, r.status_code)

    async def _read(self, r: httpx.Response, limit: int, what: str) -> bytes:
        data = bytearray()
        try:
            async for chunk in r.aiter_bytes():
                data += chunk
                if len(data) > limit:
                    raise Rejected(f"{what}: more than {limit} bytes")
        except httpx.HTTPError as e:
            raise Unavailable(f"{what}: {e!r}") from None
        finally:
            await r.aclose()
        return bytes(data)

    def _v2(self, path: str) -> str:
        return f"{self.url}/v2/{path}"

    async def _listing(self, first: str, key: str, scopes: tuple[str, ...]) -> list[Any]:
        """Every item of a paged listing (``Link: <...>; rel="next"``)."""
        items: list[Any] = []
        url: str | None = first
        while url is not None:
            r = await self._open("GET", url, scopes, headers={"Accept": "application/json"})
            if r.status_code == 404:
                await r.aclose()
                return items
            if r.status_code != 200:
                raise await self._fail(r, f"GET {url}")
            doc = json.loads(await self._read(r, MAX_MANIFEST_BYTES, f"GET {url}") or b"{}")
            items += doc.get(key) or []
            found = _LINK_NEXT.search(r.headers.get("link", ""))
            url = urljoin(url, found.group(1)) if found else None
        return items

    # -- the API

    async def ping(self) -> None:
        """``GET /v2/`` (authenticating if challenged); raises if it is not 200."""
        r = await self._open("GET", self._v2(""), ())
        if r.status_code != 200:
            raise await self._fail(r, f"GET {self.url}/v2/")
        await r.aclose()

    async def head_manifest(self, repository: str, reference: str) -> RemoteDescriptor | None:
        """The manifest a tag or digest names, without its body; None when 404."""
        url = self._v2(f"{_quote(repository)}/manifests/{reference}")
        scopes = (_scope(repository, "pull"),)
        r = await self._open("HEAD", url, scopes, headers={"Accept": MANIFEST_ACCEPT})
        await r.aclose()
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise await self._fail(r, f"HEAD {url}")
        digest = r.headers.get("docker-content-digest")
        media_type = _media_type(r)
        if not digest or media_type not in MANIFEST_TYPES:
            # Not every registry says it on a HEAD: the body does.
            found = await self.get_manifest(repository, reference)
            return RemoteDescriptor(found.digest, found.media_type, len(found.payload))
        return RemoteDescriptor(digest, media_type, int(r.headers.get("content-length", -1)))

    async def get_manifest(self, repository: str, reference: str) -> RemoteManifest:
        """The manifest a tag or digest names (``Corrupt`` if a digest does not match)."""
        url = self._v2(f"{_quote(repository)}/manifests/{reference}")
        scopes = (_scope(repository, "pull"),)
        r = await self._open("GET", url, scopes, headers={"Accept": MANIFEST_ACCEPT})
        if r.status_code != 200:
            raise await self._fail(r, f"GET {url}")
        payload = await self._read(r, MAX_MANIFEST_BYTES, f"GET {url}")
        expected = [reference] if reference.count(":") == 1 and "@" not in reference else []
        if r.headers.get("docker-content-digest"):
            expected.append(r.headers["docker-content-digest"])
        digest = str(digest_of(payload))
        for claimed in expected:
            try:
                want = Digest.parse(claimed)
            except DigestError:
                continue  # a tag with a colon cannot be; a malformed header proves nothing
            got = digest_of(payload, want.algorithm)
            if got != want:
                raise Corrupt(f"GET {url}: the manifest has digest {got}, not {want}")
            digest = str(want)
        return RemoteManifest(digest, _media_type(r, payload), payload)

    async def head_blob(self, repository: str, digest: str) -> int | None:
        """The blob's size, or None when the remote does not have it there."""
        url = self._v2(f"{_quote(repository)}/blobs/{digest}")
        r = await self._open("HEAD", url, (_scope(repository, "pull"),), follow_redirects=True)
        await r.aclose()
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise await self._fail(r, f"HEAD {url}")
        return int(r.headers.get("content-length", -1))

    def open_blob(self, repository: str, digest: str) -> AbstractAsyncContextManager[RemoteBlob]:
        """``async with client.open_blob(repo, digest) as blob``: the download, streamed
        (redirects followed); ``NotFound`` on 404. Retries happen before the first byte
        only: a failure mid-stream raises ``Unavailable`` from ``chunks()``. ``size`` is
        -1 when the remote did not say."""
        return self._blob(repository, digest)

    @asynccontextmanager
    async def _blob(self, repository: str, digest: str) -> AsyncIterator[RemoteBlob]:
        url = self._v2(f"{_quote(repository)}/blobs/{digest}")
        # identity: the bytes as stored (a Content-Encoding would change sizes).
        r = await self._open(
            "GET",
            url,
            (_scope(repository, "pull"),),
            headers={"Accept-Encoding": "identity"},
            follow_redirects=True,
        )
        if r.status_code != 200:
            raise await self._fail(r, f"GET {url}")

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in r.aiter_raw(READ_CHUNK):
                    yield chunk
            except httpx.HTTPError as e:
                raise Unavailable(f"GET {url}: {e!r}") from None

        try:
            yield RemoteBlob(int(r.headers.get("content-length", -1)), chunks())
        finally:
            await r.aclose()

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
        scopes: tuple[str, ...] = (_scope(repository, "pull,push"),)
        if mount_from is not None and mount_from != repository:
            scopes += (_scope(mount_from, "pull"),)
        attempt = 0
        while True:
            attempt += 1
            try:
                location = await self._start_upload(repository, digest, scopes, mount_from)
                if location is None:
                    return  # mounted
                separator = "&" if "?" in location else "?"
                url = f"{location}{separator}digest={quote(digest)}"
                r = await self._open(
                    "PUT",
                    url,
                    scopes,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                    content=chunks,
                )
                if r.status_code not in (201, 204):
                    raise await self._fail(r, f"PUT {url}")
                await r.aclose()
                return
            except Unavailable:
                # The upload session may be gone with the failure: start again.
                if attempt >= self._max_attempts:
                    raise
                await anyio.sleep(self._backoff * 2 ** (attempt - 1))

    async def _start_upload(
        self, repository: str, digest: str, scopes: tuple[str, ...], mount_from: str | None
    ) -> str | None:
        """POST an upload (asking for a mount first); its location, or None if mounted."""
        url = self._v2(f"{_quote(repository)}/blobs/uploads/")
        if mount_from is not None:
            url += f"?mount={quote(digest)}&from={quote(mount_from, safe='/')}"
        r = await self._open("POST", url, scopes, headers={"Content-Length": "0"}, content=b"")
        if r.status_code == 201 and mount_from is not None:
            await r.aclose()
            return None
        if r.status_code != 202 or not r.headers.get("location"):
            raise await self._fail(r, f"POST {url}")
        await r.aclose()
        return urljoin(self._v2(""), r.headers["location"])

    async def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Ask for a cross-repository mount from ``source``; True when the remote mounted
        it (201), False when it did not (the upload it opened is cancelled)."""
        scopes = (_scope(repository, "pull,push"), _scope(source, "pull"))
        location = await self._start_upload(repository, digest, scopes, source)
        if location is None:
            return True
        r = await self._open("DELETE", location, scopes)
        await r.aclose()
        return False

    async def put_manifest(
        self, repository: str, reference: str, payload: bytes, media_type: str
    ) -> str:
        """Store a manifest under a tag or digest; the digest the remote answers."""
        url = self._v2(f"{_quote(repository)}/manifests/{reference}")
        r = await self._open(
            "PUT",
            url,
            (_scope(repository, "pull,push"),),
            headers={"Content-Type": media_type},
            content=payload,
        )
        if r.status_code not in (200, 201, 204):
            raise await self._fail(r, f"PUT {url}")
        await r.aclose()
        return r.headers.get("docker-content-digest") or str(digest_of(payload))

    async def delete_manifest(self, repository: str, reference: str) -> None:
        url = self._v2(f"{_quote(repository)}/manifests/{reference}")
        r = await self._open("DELETE", url, (_scope(repository, "delete"),))
        if r.status_code not in (200, 202, 204):
            raise await self._fail(r, f"DELETE {url}")
        await r.aclose()

    async def tags(self, repository: str) -> list[str]:
        """Every tag of a repository (all pages); [] when the repository is unknown."""
        url = self._v2(f"{_quote(repository)}/tags/list?n={PAGE}")
        return [str(t) for t in await self._listing(url, "tags", (_scope(repository, "pull"),))]

    async def catalog(self) -> list[str]:
        """Every repository the remote lists to these credentials (all pages)."""
        url = self._v2(f"_catalog?n={PAGE}")
        return [str(n) for n in await self._listing(url, "repositories", ("registry:catalog:*",))]

    async def referrers(self, repository: str, digest: str) -> list[dict[str, Any]]:
        """The referrers API's descriptors for ``digest`` ([] when the remote has none or
        does not implement the API)."""
        url = self._v2(f"{_quote(repository)}/referrers/{digest}")
        found = await self._listing(url, "manifests", (_scope(repository, "pull"),))
        return [d for d in found if isinstance(d, dict)]
