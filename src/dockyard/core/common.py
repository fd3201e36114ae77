"""What the parts of the registry share: the request and result types, and event rows.

Plain data and pure helpers, no I/O. ``dockyard.core.registry`` re-exports the public
names (``RequestInfo``, ``UploadStatus``, ``PushedManifest``, ``Page``, ``Body``), which
is where the HTTP layer imports them from.

Invariant: every event a change appends is built by ``EventMaker``, so each names its
request, actor and source instance the same way (``docs/events.md``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from dockyard.core.errors import DigestInvalid
from dockyard.meta.records import Event
from dockyard.oci.digest import Digest, DigestError

Body = AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Who caused a change, for the event log."""

    id: str = ""
    addr: str = ""
    user_agent: str = ""
    method: str = ""
    actor: str | None = None

    def with_actor(self, actor: str) -> RequestInfo:
        # Called for every authenticated request: dataclasses.replace costs several times
        # this one constructor call. tests/test_auth_cache.py keeps the fields in step.
        return RequestInfo(self.id, self.addr, self.user_agent, self.method, actor)


@dataclass(frozen=True, slots=True)
class UploadStatus:
    id: str
    repository: str
    offset: int


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    tags: tuple[str, ...]
    subject: str | None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    next_last: str | None  # pass as `last` to get the next page; None when this is the end


class EventMaker:
    """Builds the event rows of one registry instance."""

    def __init__(self, instance: str, clock: Callable[[], float] = time.time) -> None:
        self.instance = instance
        self.clock = clock

    def __call__(
        self,
        ctx: RequestInfo,
        action: str,
        repository: str,
        digest: str | None = None,
        media_type: str | None = None,
        size: int | None = None,
        tag: str | None = None,
        **target: Any,
    ) -> Event:
        body: dict[str, Any] = {
            "target": {k: v for k, v in target.items() if v is not None},
            "request": {
                "id": ctx.id,
                "addr": ctx.addr,
                "useragent": ctx.user_agent,
                "method": ctx.method,
            },
            "actor": {"name": ctx.actor} if ctx.actor else {},
            "source": {"instance": self.instance},
        }
        return Event(action, repository, digest, media_type, size, tag, body, self.clock())


def parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except DigestError as e:
        raise DigestInvalid(str(e)) from None


def page(items: list[str], n: int) -> Page:
    """A page of ``n`` from ``items``, which holds up to ``n + 1`` (one more: there is a
    next page)."""
    if len(items) > n:
        return Page(items[:n], items[n - 1] if n else None)
    return Page(items, None)
