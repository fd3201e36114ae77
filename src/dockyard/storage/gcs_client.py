"""A small async client for the Google Cloud Storage JSON API: only what ``gcs`` needs.

httpx (on trio or asyncio, through anyio), OAuth2 access tokens from google-auth (a
service account file or Application Default Credentials; refreshed in a worker thread, as
google-auth is synchronous). Against a plain-HTTP endpoint (an emulator) without a credentials file,
requests go unauthenticated. Errors become ``StorageError`` with the operation, object and status:
never a header, so never a token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from dockyard.storage.base import READ_CHUNK, StorageError

GOOGLE_ENDPOINT = "https://storage.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
# Requests GCS asks clients to retry (docs: "Retry strategy"), with exponential backoff.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ATTEMPTS = 4


class PreconditionFailed(StorageError):
    """An ifGenerationMatch condition did not hold (the object exists already)."""


class GcsClient:
    def __init__(
        self,
        bucket: str,
        endpoint: str = "",
        credentials_file: str = "",
        project: str = "",
        max_connections: int = 32,
    ) -> None:
        self.bucket = bucket
        self.endpoint = (endpoint or GOOGLE_ENDPOINT).rstrip("/")
        self._credentials_file = credentials_file
        # A plain-HTTP endpoint is an emulator: no credentials, unless a key file is named
        # (a token is never fetched just to travel in clear). https endpoints, Google's
        # own or a private one, use the file or Application Default Credentials.
        self._anonymous = endpoint.startswith("http://") and not credentials_file
        self._credentials: Any = None
        self._token_lock = anyio.Lock()
        self._params = {"userProject": project} if project else {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections),
        )

    def __repr__(self) -> str:
        return f"GcsClient(bucket={self.bucket!r}, endpoint={self.endpoint!r})"

    # -- authentication ---------------------------------------------------------------------

    def _load_credentials(self) -> Any:
        import google.auth
        from google.oauth2 import service_account

        if self._credentials_file:
            load = service_account.Credentials.from_service_account_file
            return load(self._credentials_file, scopes=[SCOPE])  # type: ignore[no-untyped-call]
        credentials, _ = google.auth.default(scopes=[SCOPE])
        return credentials

    def _refresh(self) -> None:
        import google.auth.transport.requests

        if self._credentials is None:
            self._credentials = self._load_credentials()
        if not self._credentials.valid:
            self._credentials.refresh(google.auth.transport.requests.Request())

    async def _auth_headers(self) -> dict[str, str]:
        if self._anonymous:
            return {}
        async with self._token_lock:
            if self._credentials is None or not self._credentials.valid:
                try:
                    await anyio.to_thread.run_sync(self._refresh)
                except Exception as e:
                    # google-auth's messages name the file and the failure, not the key.
                    raise StorageError(
                        f"gcs: cannot get an access token: {type(e).__name__}"
                    ) from None
            return {"Authorization": f"Bearer {self._credentials.token}"}

    # -- requests ---------------------------------------------------------------------------

    def _object_url(self, name: str, upload: bool = False) -> str:
        base = f"{self.endpoint}/upload" if upload else self.endpoint
        bucket = quote(self.bucket, safe="")
        if upload:
            return f"{base}/storage/v1/b/{bucket}/o"
        return f"{base}/storage/v1/b/{bucket}/o/{quote(name, safe='')}"

    async def _request(
        self,
        what: str,
        method: str,
        url: str,
        *,
        ok: tuple[int, ...] = (200,),
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        """One API call; 404 and 412 come back to the caller, other failures raise."""
        # A session URI carries its own query, which httpx's params= would replace.
        query = None if "?" in url else {**self._params, **(params or {})}
        delay = 0.2
        for attempt in range(ATTEMPTS):
            all_headers = {**(headers or {}), **await self._auth_headers()}
            try:
                response = await self._http.request(
                    method,
                    url,
                    params=query,
                    headers=all_headers,
                    content=content,
                )
            except httpx.HTTPError as e:
                if retry and attempt + 1 < ATTEMPTS:
                    await anyio.sleep(delay)
                    delay *= 2
                    continue
                raise StorageError(f"gcs: {what}: {type(e).__name__}") from None
            if response.status_code in ok or response.status_code in (404, 412):
                return response
            if retry and response.status_code in RETRY_STATUSES and attempt + 1 < ATTEMPTS:
                await anyio.sleep(delay)
                delay *= 2
                continue
            raise StorageError(
                f"gcs: {what}: HTTP {response.status_code} {_error_message(response)}"
            )
        raise AssertionError("unreachable")

    async def get_metadata(self, name: str) -> dict[str, Any] | None:
        response = await self._request(f"stat {name}", "GET", self._object_url(name))
        return None if response.status_code == 404 else _json(response)

    async def upload(
        self, name: str, data: bytes, if_generation_match: int | None = None
    ) -> dict[str, Any]:
        """A simple (single request) media upload."""
        params = {"uploadType": "media", "name": name}
        if if_generation_match is not None:
            params["ifGenerationMatch"] = str(if_generation_match)
        response = await self._request(
            f"upload {name}",
            "POST",
            self._object_url(name, upload=True),
            params=params,
            headers={"Content-Type": "application/octet-stream"},
            content=data,
        )
        if response.status_code == 412:
            raise PreconditionFailed(name)
        return _json(response)

    async def start_resumable(self, name: str) -> str:
        """Open a resumable upload session; its URI (which is itself a credential)."""
        response = await self._request(
            f"start upload {name}",
            "POST",
            self._object_url(name, upload=True),
            params={"uploadType": "resumable", "name": name},
            headers={"Content-Type": "application/json"},
            content=json.dumps({"contentType": "application/octet-stream"}).encode(),
        )
        location = response.headers.get("Location")
        if response.status_code != 200 or not location:
            raise StorageError(
                f"gcs: start upload {name}: no session (HTTP {response.status_code})"
            )
        return str(location)

    async def put_chunk(self, session: str, data: bytes, start: int, total: int | None) -> None:
        """Send bytes ``start..`` of a session; ``total`` set: they are the last ones."""
        end = start + len(data) - 1
        size = "*" if total is None else str(total)
        span = f"bytes {start}-{end}/{size}" if data else f"bytes */{size}"
        # A lost chunk cannot simply be sent again (the session may hold part of it): the
        # caller's request fails and the client retries the PATCH, which starts afresh.
        response = await self._request(
            f"upload chunk at {start}",
            "PUT",
            session,
            ok=(200, 201, 308),
            headers={"Content-Range": span},
            content=data,
            retry=False,
        )
        if response.status_code == 404:
            raise StorageError("gcs: upload session expired")
        final = response.status_code in (200, 201)
        if final != (total is not None):
            raise StorageError(f"gcs: upload chunk at {start}: HTTP {response.status_code}")

    async def cancel_resumable(self, session: str) -> None:
        await self._request("cancel upload", "DELETE", session, ok=(200, 204, 499), retry=False)

    async def download(
        self, name: str, start: int, end: int, generation: str | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes ``start..end`` (inclusive) of an object, in chunks of at most READ_CHUNK."""
        params = {**self._params, "alt": "media"}
        if generation:
            params["generation"] = generation
        headers = {"Range": f"bytes={start}-{end}", **await self._auth_headers()}
        try:
            async with self._http.stream(
                "GET", self._object_url(name), params=params, headers=headers
            ) as response:
                if response.status_code == 404:
                    raise StorageError(f"gcs: read {name}: gone")
                if response.status_code not in (200, 206):
                    await response.aread()
                    raise StorageError(
                        f"gcs: read {name}: HTTP {response.status_code} {_error_message(response)}"
                    )
                received = 0
                async for chunk in response.aiter_bytes(READ_CHUNK):
                    received += len(chunk)
                    yield chunk
                if received != end - start + 1:
                    raise StorageError(f"gcs: read {name}: short read")
        except httpx.HTTPError as e:
            raise StorageError(f"gcs: read {name}: {type(e).__name__}") from None

    async def compose(
        self, destination: str, sources: list[str], if_generation_match: int | None = None
    ) -> dict[str, Any]:
        params = {}
        if if_generation_match is not None:
            params["ifGenerationMatch"] = str(if_generation_match)
        body = {
            "sourceObjects": [{"name": source} for source in sources],
            "destination": {"contentType": "application/octet-stream"},
        }
        response = await self._request(
            f"compose {destination}",
            "POST",
            self._object_url(destination) + "/compose",
            params=params,
            headers={"Content-Type": "application/json"},
            content=json.dumps(body).encode(),
        )
        if response.status_code == 412:
            raise PreconditionFailed(destination)
        if response.status_code == 404:
            raise StorageError(f"gcs: compose {destination}: a source object is missing")
        return _json(response)

    async def delete(self, name: str) -> bool:
        response = await self._request(
            f"delete {name}", "DELETE", self._object_url(name), ok=(200, 204)
        )
        return response.status_code != 404

    async def list_page(
        self, prefix: str, max_results: int = 1000, page_token: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of the objects whose name starts with ``prefix``; the next page's token."""
        bucket = quote(self.bucket, safe="")
        params = {"prefix": prefix, "maxResults": str(max_results)}
        if page_token:
            params["pageToken"] = page_token
        url = f"{self.endpoint}/storage/v1/b/{bucket}/o"
        response = await self._request(f"list {prefix}", "GET", url, params=params)
        if response.status_code == 404:
            raise StorageError(f"gcs: bucket {self.bucket} not found")
        page = _json(response)
        items = page.get("items", [])
        return (items if isinstance(items, list) else []), str(page.get("nextPageToken", ""))

    async def list(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """Every object whose name starts with ``prefix``."""
        token = ""
        while True:
            items, token = await self.list_page(prefix, page_token=token)
            for item in items:
                yield item
            if not token:
                return

    async def aclose(self) -> None:
        await self._http.aclose()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise StorageError(f"gcs: unreadable answer (HTTP {response.status_code})") from None
    if not isinstance(body, dict):
        raise StorageError(f"gcs: unexpected answer (HTTP {response.status_code})")
    return body


def _error_message(response: httpx.Response) -> str:
    """The API's own short error text, if it sent one (it names no credential)."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return str(message)[:200]
