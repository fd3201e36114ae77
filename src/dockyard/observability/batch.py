"""Increments gathered in plain Python and applied to the Prometheus values once a second.

In multiprocess mode every ``inc`` and ``observe`` of prometheus_client takes a lock and
writes a memory-mapped file (a histogram observation does it twice), about 1.5 us each:
with five or six per request and one per database call, that was several percent of a
manifest HEAD. Here a request adds to a dict entry instead, and ``flush`` (the sampler,
every second, and each scrape first) hands the sums over: one write per series per
second, however many requests. Everything runs on the worker's event loop thread, so
nothing needs a lock; a scrape sees this worker's latest figures and the other workers'
at most a second old.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any


class Batch:
    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}  # counter child -> amount to add
        # histogram child -> [sum, count per bucket (not cumulative, as prometheus_client
        # keeps them)]
        self._observations: dict[Any, list[float]] = {}

    def count(self, child: Any, amount: float = 1.0) -> None:
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + amount

    def observe(self, child: Any, value: float) -> None:
        pending = self._observations.get(child)
        if pending is None:
            pending = self._observations[child] = [0.0] * (len(child._upper_bounds) + 1)
        pending[0] += value
        # The first bucket whose upper bound is >= value ("le"); the last one is +Inf.
        pending[1 + bisect_left(child._upper_bounds, value)] += 1

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for child, amount in counts.items():
            child.inc(amount)
        observations, self._observations = self._observations, {}
        for child, pending in observations.items():
            # prometheus_client's own Histogram.observe does the same, one value at a time
            # (the version is pinned in constraints.txt; tests check every bucket count).
            child._sum.inc(pending[0])
            for bucket, n in zip(child._buckets, pending[1:], strict=True):
                if n:
                    bucket.inc(n)
