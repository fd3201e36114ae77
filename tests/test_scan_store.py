"""``tests/meta_conformance_scans.py`` against SQLite and a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.meta.postgres import PostgresMeta
from dockyard.meta.sqlite import SQLiteMeta
from tests.meta_conformance import MakeStore
from tests.meta_conformance_scans import ScanConformance
from tests.pgserver import PostgresServer


class TestSQLiteScanStore(ScanConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> MakeStore:
        return lambda clock: SQLiteMeta(tmp_path / "meta.sqlite3", clock=clock)


class TestPostgresScanStore(ScanConformance):
    @pytest.fixture
    def make_store(self, postgres_server: PostgresServer) -> MakeStore:
        url = postgres_server.new_database()
        return lambda clock: PostgresMeta(url, clock=clock)
