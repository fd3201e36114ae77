"""The metadata conformance suite against each store; adding one is a line in STORES."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.meta.sqlite import SQLiteMeta
from tests.meta_conformance import MakeStore, MetaConformance


def sqlite_store(tmp_path: Path) -> MakeStore:
    return lambda clock: SQLiteMeta(tmp_path / "meta.sqlite3", clock=clock)


STORES: dict[str, Callable[[Path], MakeStore]] = {
    "sqlite": sqlite_store,
}


class TestMetadataStore(MetaConformance):
    @pytest.fixture(params=sorted(STORES))
    def make_store(self, request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
        return STORES[request.param](tmp_path)
