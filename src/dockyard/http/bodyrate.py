"""A minimum rate for request bodies: a client that sends its body too slowly is cut off.

hypercorn's read_timeout would do it per read, but it applies to websockets too (feed
clients legitimately send nothing for long stretches), so it is off by default and this
bounds HTTP request bodies only, where the app reads them (``PacedReceive`` wraps the
ASGI receive of each request in ``http/asgi.py``; HTTP/1 and HTTP/2 alike).

Two limits, each 0 to turn it off:

- ``idle``: seconds one wait for the next chunk may last (a stalled body).
- ``min_rate`` over ``window``: the body may fall at most ``min_rate * window`` bytes
  behind a steady ``min_rate`` (a leaky bucket of that size, drained at ``min_rate``
  while the app waits and filled by the bytes that arrive; bytes sent ahead count up
  to a window's worth). A body that stops is cut after one window; one trickling at a
  tenth of the rate a little later; one at the rate or faster, in pieces of any size
  at most a window apart, never.

Only the time the app spends waiting for the client counts: while dockyard itself is
busy (writing to storage, a database call), the body is not late.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import anyio

from dockyard.http.request import Message, Receive


class BodyTooSlow(Exception):
    """The request body arrived more slowly than the server's limits allow."""


@dataclass(frozen=True)
class BodyPace:
    min_rate: int = 0  # bytes/s; 0: no rate limit
    window: float = 30.0  # seconds the rate is averaged over
    idle: float = 0.0  # seconds; 0: no limit on one wait

    @property
    def enabled(self) -> bool:
        return self.min_rate > 0 or self.idle > 0


class PacedReceive:
    """An ASGI receive that raises ``BodyTooSlow`` when the body falls behind ``pace``.

    After it raised once, it passes messages through unchecked (what is left of the body
    is drained while the 408 goes out).
    """

    def __init__(self, receive: Receive, pace: BodyPace) -> None:
        self._receive = receive
        self._pace = pace
        self._capacity = float(pace.min_rate * pace.window)
        self._credit = self._capacity  # bytes the body may still fall behind
        self._bytes = 0
        self.tripped = False

    def _timeout(self) -> float:
        timeout = self._pace.idle if self._pace.idle > 0 else math.inf
        if self._pace.min_rate > 0:
            timeout = min(timeout, self._credit / self._pace.min_rate)
        return timeout

    async def __call__(self) -> Message:
        if self.tripped or not self._pace.enabled:
            return await self._receive()
        timeout = self._timeout()
        started = anyio.current_time()
        with anyio.move_on_after(timeout):
            message = await self._receive()
            self._count(message, anyio.current_time() - started)
            return message
        self.tripped = True
        if self._pace.idle > 0 and timeout >= self._pace.idle:
            raise BodyTooSlow(f"no body bytes for {self._pace.idle:g} s")
        raise BodyTooSlow(
            f"{self._bytes} body bytes came too slowly, under the minimum of "
            f"{self._pace.min_rate} bytes/s over {self._pace.window:g} s"
        )

    def _count(self, message: Message, waited: float) -> None:
        size = len(message.get("body", b""))
        self._bytes += size
        drained = self._credit - self._pace.min_rate * waited
        self._credit = min(max(drained, 0.0) + size, self._capacity)


__all__ = ["BodyPace", "BodyTooSlow", "PacedReceive"]
