"""Validation of ``[retention]`` and its ``[[retention.policies]]`` tables."""

from __future__ import annotations

import re

from dockyard.config.model import ConfigError, RetentionPolicy, RetentionSettings


def _patterns(key: str, patterns: list[str]) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{key}: {pattern!r} is not a regular expression: {e}") from None


def _policy(key: str, p: RetentionPolicy) -> None:
    if not p.repositories:
        raise ConfigError(f"{key}.repositories: name at least one repository glob")
    if any(not glob.strip() for glob in p.repositories):
        raise ConfigError(f"{key}.repositories: a glob is empty")
    # Regular expressions match the whole tag (re.fullmatch).
    _patterns(f"{key}.keep_tags", p.keep_tags)
    _patterns(f"{key}.immutable_tags", p.immutable_tags)
    if p.keep_last < 0:
        raise ConfigError(f"{key}.keep_last: must be 0 (no such rule) or more")
    for name in ("delete_older_than_days", "delete_unpulled_days", "delete_untagged_days"):
        if not getattr(p, name) >= 0:  # also refuses NaN
            raise ConfigError(f"{key}.{name}: must be 0 (no such rule) or more")


def validate_retention(r: RetentionSettings) -> None:
    if not r.interval >= 0:
        raise ConfigError("retention.interval: must be 0 (off) or more seconds")
    for i, policy in enumerate(r.policies):
        _policy(f"retention.policies[{i}]", policy)
