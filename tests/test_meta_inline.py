"""Database.read: point reads on the event loop thread, retried in a worker if busy."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from dockyard.meta.sqlite import SQLiteMeta
from dockyard.meta.store import Database


async def test_inline_read_runs_on_the_calling_thread(tmp_path: Path) -> None:
    meta = SQLiteMeta(tmp_path / "m.sqlite3")
    meta.migrate()
    db = Database(meta, 2)
    seen: list[str] = []

    def where() -> bool:
        seen.append(threading.current_thread().name)
        return meta.repository_exists("nope")

    assert await db.read(where) is False
    assert seen == [threading.current_thread().name]
    meta.close()


async def test_busy_inline_read_is_retried_in_a_worker_thread(tmp_path: Path) -> None:
    meta = SQLiteMeta(tmp_path / "m.sqlite3")
    meta.migrate()
    db = Database(meta, 2)
    caller = threading.current_thread()
    calls: list[bool] = []

    def busy_on_the_loop() -> str:
        on_loop = threading.current_thread() is caller
        calls.append(on_loop)
        if on_loop:
            raise sqlite3.OperationalError("database is locked")
        return "answered"

    assert await db.read(busy_on_the_loop) == "answered"
    assert calls == [True, False]
    meta.close()
