"""[events] pruning settings and [[quotas]] tables: loaded, checked, and the shipped
examples valid."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dockyard.config import load
from dockyard.config.model import ConfigError, QuotaSettings
from dockyard.config.validate import DASHBOARD_DAYS
from dockyard.core.stats import MAX_BUCKET, MAX_WINDOW

CONF = Path(__file__).parent.parent / "conf" / "dockyard.toml"


def test_pruning_leaves_the_dashboard_its_longest_window() -> None:
    # The window, rounded up to whole buckets, and the stats query's slack (120 s).
    assert DASHBOARD_DAYS * 86400 >= MAX_WINDOW + MAX_BUCKET + 120


def load_text(tmp_path: Path, text: str) -> object:
    path = tmp_path / "d.toml"
    path.write_text(text)
    return load(path, environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[events]\nkeep_pulls_days = 1.0\n", "events.keep_pulls_days"),
        ("[events]\nkeep_days = -1.0\n", "events.keep_days"),
        ("[events]\nprune_interval = -5.0\n", "events.prune_interval"),
        ("[events]\nprune_batch_size = 0\n", "events.prune_batch_size"),
        ("[[quotas]]\nmax_bytes = 5\n", "quotas[0]: give either"),
        ('[[quotas]]\nnamespace = "a"\nrepositories = ["a/*"]\nmax_bytes = 5\n', "either"),
        ('[[quotas]]\nnamespace = "a/"\nmax_bytes = 5\n', "quotas[0].namespace"),
        ('[[quotas]]\nnamespace = "a"\n', "quotas[0].max_bytes"),
        ('[[quotas]]\nnamespace = "a"\nmax_bytes = "lots"\n', "quotas[0].max_bytes: expected"),
        ('[[quotas]]\nnamespace = "a"\nmax_bytes = 1\nsize = 3\n', "unknown key quotas[0].size"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_text(tmp_path, text)


def test_environment_cannot_set_quotas() -> None:
    with pytest.raises(ConfigError, match="config file"):
        load(None, environ={"DOCKYARD_QUOTAS_MAX_BYTES": "5"})


def test_environment_sets_pruning() -> None:
    settings = load(None, environ={"DOCKYARD_EVENTS_KEEP_PULLS_DAYS": "0"})
    assert settings.events.keep_pulls_days == 0


def test_shipped_quota_examples_are_valid(tmp_path: Path) -> None:
    lines = CONF.read_text().splitlines()
    example = list(
        itertools.takewhile(lambda line: line.startswith("#"), lines[lines.index("# [[quotas]]") :])
    )
    example = [line[2:] for line in example]
    settings = load_text(tmp_path, "\n".join(example) + "\n")
    assert settings.quotas == [  # type: ignore[attr-defined]
        QuotaSettings(repositories=["ci/*"], max_bytes=10 * 1024**3),
        QuotaSettings(namespace="team-a", max_bytes=100 * 1024**3),
    ]
