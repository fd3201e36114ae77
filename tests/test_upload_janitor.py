"""Stale upload sessions and orphan upload bytes are purged; live ones are kept."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import make_settings, open_services


async def test_purge_removes_stale_sessions_and_orphans_only(tmp_path: Path) -> None:
    now = [time.time()]
    async with open_services(make_settings(tmp_path / "data"), clock=lambda: now[0]) as svc:
        registry, storage = svc.registry, svc.storage
        old = await registry.start_upload("team/app")
        await storage.create_upload("orphan-bytes")  # bytes with no session row
        now[0] += 100
        fresh = await registry.start_upload("team/app")

        assert await registry.purge_stale_uploads(max_idle=50) == 2

        assert await svc.db.run(svc.meta.get_upload, old.id) is None
        assert await svc.db.run(svc.meta.get_upload, fresh.id) is not None
        left = {upload_id async for upload_id, _ in storage.list_uploads()}
        assert left == {fresh.id}
