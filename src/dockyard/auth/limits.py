"""Rate limits: token buckets per key, per action class, and the failed-login limiter.

Buckets live in the memory of one worker process: nothing is shared between workers or
instances, so with N workers a client may get up to N times the configured rate (each
connection lands on one worker). Sharing would put a database or network round trip on
every request for a limit that only has to make abuse slow. Memory is bounded: a bucket
that has refilled completely holds no information and is dropped, and beyond
``max_buckets`` the least recently used go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class Buckets:
    """Token buckets by key, all with the same ``rate`` (tokens per second) and ``burst``."""

    def __init__(
        self, rate: float, burst: int, clock: Clock = time.monotonic, max_buckets: int = 100000
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
        else:
            elapsed = max(now - bucket.stamp, 0.0)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.stamp = now
            self._buckets.move_to_end(key)
        return bucket

    def _expire(self, now: float) -> None:
        """Drop buckets that are full again (oldest first), and any beyond max_buckets."""
        while self._buckets:
            key, oldest = next(iter(self._buckets.items()))
            full = oldest.tokens + (now - oldest.stamp) * self.rate >= self.burst
            if not full and len(self._buckets) <= self.max_buckets:
                return
            del self._buckets[key]

    def wait(self, key: str) -> float | None:
        """Seconds until ``key`` has a token (None: it has one now); takes nothing."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        tokens = min(self.burst, bucket.tokens + max(now - bucket.stamp, 0.0) * self.rate)
        return None if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, key: str) -> float | None:
        """Take a token for ``key``: None when there was one, else seconds to wait."""
        now = self.clock()
        self._expire(now)
        bucket = self._refilled(key, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / self.rate


class RateLimiter:
    """Request limits per action class; a class without buckets is unlimited."""

    def __init__(self, buckets: Mapping[str, Buckets]) -> None:
        self._buckets = dict(buckets)

    def take(self, action_class: str, key: str) -> float | None:
        buckets = self._buckets.get(action_class)
        return None if buckets is None else buckets.take(key)

    def limits(self, action_class: str) -> bool:
        """Whether ``action_class`` is limited (else ``take`` always returns None)."""
        return action_class in self._buckets


class LoginLimiter:
    """Failed logins, limited per (client address, user) and, more loosely, per user.

    The access and token code calls ``check`` before looking at a password and answers
    429 when it returns a wait; it calls ``failed`` after a wrong one. Only failures take
    tokens, so a user who types the right password is never slowed by their own logins.
    """

    def __init__(
        self,
        rate: float = 0.1,
        burst: int = 5,
        user_rate: float = 1.0,
        user_burst: int = 50,
        clock: Clock = time.monotonic,
        max_buckets: int = 100000,
    ) -> None:
        self._per_address = Buckets(rate, burst, clock, max_buckets)
        self._per_user = Buckets(user_rate, user_burst, clock, max_buckets)

    @staticmethod
    def _key(address: str, user: str) -> str:
        return f"{address}\0{user}"

    def check(self, address: str, user: str) -> float | None:
        """Seconds to wait before ``user`` may try a password from ``address`` (None: now)."""
        if not self._per_address and not self._per_user:
            return None  # no failed login remembered (the usual case): nobody waits
        waits = [
            w
            for w in (self._per_address.wait(self._key(address, user)), self._per_user.wait(user))
            if w is not None
        ]
        return max(waits) if waits else None

    def failed(self, address: str, user: str) -> None:
        self._per_address.take(self._key(address, user))
        self._per_user.take(user)
