"""Checks of the ``[gc]`` settings (garbage collection, docs/gc.md)."""

from __future__ import annotations

import math

from dockyard.config.model import ConfigError, GcSettings


def validate_gc(g: GcSettings) -> None:
    if not (math.isfinite(g.grace_period) and g.grace_period >= 0):
        raise ConfigError("gc.grace_period: must be 0 or more seconds")
    if not (math.isfinite(g.interval) and (g.interval == 0 or g.interval >= 1)):
        raise ConfigError("gc.interval: must be 0 (off) or at least 1 second")
    if not 1 <= g.batch_size <= 100_000:
        raise ConfigError("gc.batch_size: must be between 1 and 100000 rows")
    # The collector renews its lease between batches: a batch must fit well inside it.
    if not (math.isfinite(g.lease_seconds) and 5 <= g.lease_seconds <= 86400):
        raise ConfigError("gc.lease_seconds: must be between 5 and 86400 seconds")
