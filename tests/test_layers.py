"""Dependencies point down: the lower layers never import the HTTP layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dockyard

PACKAGE = Path(dockyard.__file__).parent


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    "layer", ["events", "core", "oci", "meta", "storage", "auth", "observability"]
)
def test_lower_layers_do_not_import_http(layer: str) -> None:
    offenders = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in (PACKAGE / layer).rglob("*.py")
        for name in _imports(path)
        if name == "dockyard.http" or name.startswith("dockyard.http.")
    }
    assert not offenders
