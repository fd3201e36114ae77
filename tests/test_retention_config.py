"""[retention] and [[retention.policies]]: loading, validation, which policy applies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dockyard.config import ConfigError, Settings, load
from dockyard.core.retention import Policies, policy_for


def load_text(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "dockyard.toml"
    path.write_text(text)
    return load(path, environ={})


def test_policies_load_in_order(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        """
[retention]
interval = 3600

[[retention.policies]]
repositories = ["ci/*"]
keep_last = 5
delete_older_than_days = 30

[[retention.policies]]
repositories = ["*"]
immutable_tags = ['v\\d+']
""",
    )
    policies = settings.retention.policies
    assert settings.retention.interval == 3600.0
    assert [p.repositories for p in policies] == [["ci/*"], ["*"]]
    assert (policies[0].keep_last, policies[0].delete_older_than_days) == (5, 30.0)
    assert policies[1].immutable_tags == [r"v\d+"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('repositories = ["a"]\nkeep_lats = 3', "retention.policies[0].keep_lats"),
        ("keep_last = 3", "retention.policies[0].repositories"),
        ('repositories = [""]', "a glob is empty"),
        ('repositories = ["a"]\nkeep_tags = ["v(1"]', "retention.policies[0].keep_tags"),
        ('repositories = ["a"]\nimmutable_tags = ["["]', "retention.policies[0].immutable_tags"),
        ('repositories = ["a"]\nkeep_last = -1', "retention.policies[0].keep_last"),
        ('repositories = ["a"]\ndelete_older_than_days = -2', "delete_older_than_days"),
        ('repositories = ["a"]\ndelete_unpulled_days = nan', "delete_unpulled_days"),
        ('repositories = ["a"]\ndelete_untagged_days = -1', "delete_untagged_days"),
        ('repositories = "a"', "retention.policies[0].repositories"),
        ('repositories = ["a"]\nkeep_last = "3"', "retention.policies[0].keep_last"),
    ],
)
def test_bad_policies_are_refused_naming_the_key(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_text(tmp_path, f"[[retention.policies]]\n{table}\n")


def test_policies_only_in_the_file() -> None:
    with pytest.raises(ConfigError, match="only in the config file"):
        load(None, environ={"DOCKYARD_RETENTION_POLICIES": "x"})


def test_negative_interval_refused() -> None:
    with pytest.raises(ConfigError, match=r"retention\.interval"):
        load(None, environ={"DOCKYARD_RETENTION_INTERVAL": "-1"})


def test_first_matching_policy_applies(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        """
[[retention.policies]]
repositories = ["team/special"]
keep_last = 1

[[retention.policies]]
repositories = ["team/*", "other"]
keep_last = 2
delete_untagged_days = 3
""",
    )
    policies = settings.retention.policies
    assert policy_for(policies, "team/special") is policies[0]
    assert policy_for(policies, "team/a/b") is policies[1]
    assert policy_for(policies, "other") is policies[1]
    assert policy_for(policies, "elsewhere") is None
    found = policy_for(policies, "team/x")
    assert found is not None and found.delete_untagged_days == 3.0
    compiled = Policies(policies).for_repository("team/special")
    assert compiled is not None and compiled.keep_last == 1


def test_immutable_patterns_match_the_whole_tag(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path, "[[retention.policies]]\nrepositories = ['*']\nimmutable_tags = ['v1\\.\\d']\n"
    )
    immutable = Policies(settings.retention.policies).immutable("any")
    assert immutable is not None
    assert immutable("v1.2")
    assert not immutable("v1.2-rc") and not immutable("xv1.2")
