"""What the cache's manifest and blob paths share: counters, and upstream failures as
the registry's errors.

Upstream failures, when nothing cached can be served instead:

- 404 from the upstream: ``MANIFEST_UNKNOWN`` / ``BLOB_UNKNOWN`` (404), as for any
  repository;
- 429 (after the client's retries): ``TOOMANYREQUESTS`` (429) with the upstream's
  ``Retry-After`` (at least 1 s), so the client backs off as it would from the upstream;
- down, timed out, 5xx, credentials refused, content not matching its digest:
  ``UNAVAILABLE`` (503), the code Distribution's errcode package has for it; the message
  names the upstream and what failed.
"""

from __future__ import annotations

import logging
from typing import Protocol

from dockyard.core.errors import RegistryError, TooManyRequests, UpstreamUnavailable
from dockyard.upstream.client import NotFound, Unavailable, UpstreamError

log = logging.getLogger("dockyard.cache")

# Seconds a client is told to wait when the upstream answered 429 without Retry-After.
DEFAULT_RETRY_AFTER = 1.0


class CacheCounters(Protocol):
    """What the cache counts, per upstream name (``services_cache.py``: Prometheus).
    ``kind`` is "manifest" or "blob"."""

    def hit(self, upstream: str, kind: str) -> None:
        """Served from the cache (a fresh tag, a digest present, a tag revalidated)."""

    def fill(self, upstream: str, kind: str) -> None:
        """Fetched from the upstream and stored."""

    def stale(self, upstream: str, kind: str) -> None:
        """The upstream failed; served what is cached (even past the tag's TTL)."""

    def error(self, upstream: str, reason: str) -> None:
        """An upstream request failed (``reason``: not_found, unavailable, throttled,
        denied, rejected, corrupt)."""

    def fetched(self, upstream: str, nbytes: int) -> None:
        """Bytes of blob content read from the upstream."""


class NoCounters:
    def hit(self, upstream: str, kind: str) -> None:
        pass

    def fill(self, upstream: str, kind: str) -> None:
        pass

    def stale(self, upstream: str, kind: str) -> None:
        pass

    def error(self, upstream: str, reason: str) -> None:
        pass

    def fetched(self, upstream: str, nbytes: int) -> None:
        pass


def reason_of(e: UpstreamError) -> str:
    """A bounded label for ``e`` (the metrics' ``reason``)."""
    if isinstance(e, Unavailable):
        return "throttled" if e.status == 429 else "unavailable"
    return type(e).__name__.lower().replace("notfound", "not_found")


def failure(upstream: str, e: UpstreamError, unknown: RegistryError) -> RegistryError:
    """The registry error for an upstream failure when nothing cached can be served;
    ``unknown`` is the answer to the upstream's 404."""
    if isinstance(e, NotFound):
        return unknown
    if isinstance(e, Unavailable) and e.status == 429:
        return TooManyRequests(
            f"upstream {upstream} is rate-limiting this registry: {e}",
            e.retry_after or DEFAULT_RETRY_AFTER,
        )
    return UpstreamUnavailable(f"upstream {upstream} failed: {e}")
