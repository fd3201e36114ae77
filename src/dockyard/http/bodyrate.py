"""A minimum rate for request bodies: a client that sends its body too slowly is cut off.

hypercorn's read_timeout would do it per read, but it applies to websockets too (feed
clients legitimately send nothing for long stretches), so it is off by default and this
bounds HTTP request bodies only, where the app reads them (``PacedReceive`` wraps the
ASGI receive of each request in ``http/asgi.py``; HTTP/1 and HTTP/2 alike).

Two limits, each 0 to turn it off:

- ``idle``: seconds one wait for the next chunk may last (a stalled body).
- ``min_rate`` over ``window``: every ``min_rate * window`` bytes must arrive within
  ``window`` seconds of the last such block, i.e. the body averages at least
  ``min_rate`` bytes/s over any ``window``-second stretch (a trickle that keeps the
  idle timer happy with a byte now and then).

Only the time the app spends waiting for the client counts: while dockyard itself is
busy (writing to storage, a database call), the body is not late.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

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
        self._block = pace.min_rate * pace.window  # bytes due per window
        self._waited = 0.0  # seconds spent waiting since the last full block
        self._bytes = 0  # bytes since the last full block
        self.tripped = False

    def _timeout(self) -> float:
        timeout = self._pace.idle if self._pace.idle > 0 else math.inf
        if self._pace.min_rate > 0:
            timeout = min(timeout, max(self._pace.window - self._waited, 0.0))
        return timeout

    async def __call__(self) -> Message:
        if self.tripped or not self._pace.enabled:
            return await self._receive()
        timeout = self._timeout()
        started = trio.current_time()
        with trio.move_on_after(timeout):
            message = await self._receive()
            self._count(message, trio.current_time() - started)
            return message
        self.tripped = True
        if self._pace.idle > 0 and timeout >= self._pace.idle:
            raise BodyTooSlow(f"no body bytes for {self._pace.idle:g} s")
        raise BodyTooSlow(
            f"{self._bytes} body bytes in {self._pace.window:g} s, "
            f"under the minimum of {self._pace.min_rate} bytes/s"
        )

    def _count(self, message: Message, waited: float) -> None:
        self._waited += waited
        self._bytes += len(message.get("body", b""))
        if self._bytes >= self._block:
            self._waited = 0.0
            self._bytes = 0


__all__ = ["BodyPace", "BodyTooSlow", "PacedReceive"]
