"""``open_meta``: the metadata store the settings name, for every process that needs one.

``[database] url`` set: PostgreSQL, shared by every worker and instance; empty: the
embedded SQLite file. Each driver is imported only when chosen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dockyard.config import Settings
from dockyard.meta.store import MetadataStore


def open_meta(settings: Settings, clock: Callable[[], float] = time.time) -> MetadataStore:
    """A store on the configured database, not yet migrated."""
    db = settings.database
    if db.url:
        from dockyard.meta.postgres import PostgresMeta

        # A pooled connection per worker thread: never more than can be used at once.
        return PostgresMeta(db.url, clock=clock, pool_size=db.threads, busy_timeout=db.busy_timeout)
    from dockyard.meta.sqlite import SQLiteMeta

    return SQLiteMeta(settings.database_path, db.busy_timeout, clock)
