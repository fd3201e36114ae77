"""The keys tokens are verified with: the built-in key and an external issuer's JWKS.

The JWKS (a file, or an https URL) is read when first needed, again every
``refresh`` seconds, and early when a token names a key id it does not hold (the
issuer rotated its keys) — but never twice within ``min_interval`` seconds, so tokens
with made-up key ids cannot make the registry hammer the issuer. A failed read keeps
the keys already known.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx
import jwt

from dockyard.auth.keys import PublicKey

log = logging.getLogger("dockyard.auth")

_MAX_JWKS_BYTES = 1024 * 1024


class JwksSource(Protocol):
    async def fetch(self) -> dict[str, Any]: ...


class JwksFile:
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    async def fetch(self) -> dict[str, Any]:
        text = await anyio.to_thread.run_sync(self.path.read_bytes)
        doc = json.loads(text[:_MAX_JWKS_BYTES])
        if not isinstance(doc, dict):
            raise ValueError("a JWKS is a JSON object")
        return doc


class JwksUrl:
    def __init__(self, url: str, ca_file: str = "", timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        # A private issuer's CA; otherwise httpx's default trust store.
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )

    async def fetch(self) -> dict[str, Any]:
        async with httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, verify=self._verify
        ) as client:
            response = await client.get(self.url, headers={"accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > _MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            doc = response.json()
        if not isinstance(doc, dict):
            raise ValueError("a JWKS is a JSON object")
        return doc


def jwks_source(location: str, ca_file: str = "") -> JwksSource:
    """A JWKS at an https:// URL (its TLS verified with ``ca_file`` if given) or in a file."""
    if location.startswith("https://"):
        return JwksUrl(location, ca_file)
    return JwksFile(location)


def parse_jwks(doc: dict[str, Any]) -> dict[str, PublicKey]:
    """The signing keys of a JWKS by key id; keys without a kid or usable type are skipped."""
    out: dict[str, PublicKey] = {}
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise ValueError("a JWKS has a list of keys")
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ("EC", "RSA", "OKP") or "d" in entry:
            continue  # symmetric keys never; private keys have no business here
        try:
            key = jwt.PyJWK(entry).key
        except jwt.PyJWTError as e:
            log.warning("JWKS key %r skipped: %s", kid[:64], e)
            continue
        out[kid] = key
    return out


class KeyRing:
    def __init__(
        self,
        static: Mapping[str, PublicKey],
        source: JwksSource | None = None,
        *,
        refresh: float = 3600.0,
        min_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = dict(static)
        self._fetched: dict[str, PublicKey] = {}
        self._source = source
        self._refresh = refresh
        self._min_interval = min_interval
        self._clock = clock
        self._last_fetch: float | None = None
        self._lock = anyio.Lock()
        self.fetches = 0  # for statistics and tests

    async def key(self, kid: str) -> PublicKey | None:
        key = self._static.get(kid)
        if key is not None or self._source is None:
            return key
        if self._due(self._refresh):
            await self._fetch(self._refresh)
        key = self._fetched.get(kid)
        if key is None and self._due(self._min_interval):
            await self._fetch(self._min_interval)
            key = self._fetched.get(kid)
        return key

    def _due(self, interval: float) -> bool:
        return self._last_fetch is None or self._clock() - self._last_fetch >= interval

    async def _fetch(self, interval: float) -> None:
        assert self._source is not None
        async with self._lock:
            if not self._due(interval):  # another request fetched while this one waited
                return
            self._last_fetch = self._clock()
            self.fetches += 1
            try:
                self._fetched = parse_jwks(await self._source.fetch())
            except (OSError, ValueError, httpx.HTTPError) as e:
                log.warning(
                    "reading the token issuer's JWKS failed (keeping %d keys): %s",
                    len(self._fetched),
                    e,
                )
