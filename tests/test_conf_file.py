"""conf/dockyard.toml documents every setting with its default value."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from dockyard.config import Settings, as_dict, load

CONF = Path(__file__).parent.parent / "conf" / "dockyard.toml"


def test_shipped_config_equals_the_defaults() -> None:
    assert as_dict(load(CONF, environ={})) == as_dict(Settings())


def test_shipped_config_names_every_key() -> None:
    doc = tomllib.loads(CONF.read_text())
    for section in dataclasses.fields(Settings):
        keys = {f.name for f in dataclasses.fields(getattr(Settings(), section.name))}
        assert section.name in doc, f"[{section.name}] is missing from {CONF.name}"
        assert set(doc[section.name]) == keys, f"[{section.name}] keys differ"
