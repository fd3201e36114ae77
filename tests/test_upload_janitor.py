"""Stale upload sessions and orphan upload bytes are purged; live ones are kept."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from dockyard.core.registry import Registry
from dockyard.core.uploads import Purged
from tests.conftest import chunks, make_settings, open_services


async def test_purge_removes_stale_sessions_and_orphans_only(tmp_path: Path) -> None:
    now = [time.time()]
    async with open_services(make_settings(tmp_path / "data"), clock=lambda: now[0]) as svc:
        registry, storage = svc.registry, svc.storage
        old = await registry.start_upload("team/app")
        await storage.create_upload("orphan-bytes")  # bytes with no session row
        now[0] += 100
        fresh = await registry.start_upload("team/app")

        assert await registry.purge_stale_uploads(max_idle=50) == Purged(1, 1)

        assert await svc.db.run(svc.meta.get_upload, old.id) is None
        assert await svc.db.run(svc.meta.get_upload, fresh.id) is not None
        left = {upload_id async for upload_id, _ in storage.list_uploads()}
        assert left == {fresh.id}


async def test_every_instance_purging_purges_each_session_once(tmp_path: Path) -> None:
    """Two instances (two registries on one store) purge at the same time."""
    now = [time.time()]
    first_settings = make_settings(tmp_path / "data", DOCKYARD_SERVER_INSTANCE="one")
    second_settings = make_settings(tmp_path / "data", DOCKYARD_SERVER_INSTANCE="two")
    async with (
        open_services(first_settings, clock=lambda: now[0]) as first,
        open_services(second_settings, clock=lambda: now[0]) as second,
    ):
        stale = [await first.registry.start_upload(f"team/app{i}") for i in range(20)]
        now[0] += 100
        live = await second.registry.start_upload("team/app")
        results: list[Purged] = []

        async def purge(registry: Registry) -> None:
            results.append(await registry.purge_stale_uploads(max_idle=50))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(purge, first.registry)
            tasks.start_soon(purge, second.registry)
        assert sum(r.sessions for r in results) == len(stale)
        assert sum(r.orphans for r in results) == 0
        left = {upload_id async for upload_id, _ in first.storage.list_uploads()}
        assert left == {live.id}


async def test_a_session_written_after_it_was_listed_is_kept(tmp_path: Path) -> None:
    """The race of a janitor and a PATCH: the session is listed as stale, then a chunk
    arrives, then the janitor acts on its list. The listing is replayed to the janitor
    (the store's own records, taken before the write) to put the steps in that order."""
    now = [time.time()]
    async with open_services(make_settings(tmp_path / "data"), clock=lambda: now[0]) as svc:
        upload = await svc.registry.start_upload("team/app")
        now[0] += 100
        listed = await svc.db.run(svc.meta.stale_uploads, now[0] - 50)
        assert [r.id for r in listed] == [upload.id]
        written = await svc.registry.write_chunk("team/app", upload.id, chunks(b"alive"))
        assert written.offset == 5
        svc.meta.stale_uploads = lambda touched_before: listed  # type: ignore[method-assign]

        assert await svc.registry.purge_stale_uploads(max_idle=50) == Purged(0, 0)

        kept = await svc.db.run(svc.meta.get_upload, upload.id)
        assert kept is not None and kept.received == 5
