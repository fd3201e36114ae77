"""Validation of the ``[[replication]]`` rules and their targets and source."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from dockyard.config.model import (
    REPLICATION_MODES,
    ConfigError,
    ReplicationEndpoint,
    ReplicationRule,
)

# Rule names become consumer names ("replication:<rule>:<target url>") and job names.
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A remote repository prefix: repository name components ("team/mirror").
_PREFIX = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)


def _endpoint(key: str, e: ReplicationEndpoint) -> None:
    try:
        url = urlsplit(e.url)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{key}.url: {e.url!r} is not an http:// or https:// URL")
    if url.path.rstrip("/") not in ("", "/v2") or url.query or url.fragment:
        raise ConfigError(f"{key}.url: {e.url!r}: give the registry's base URL, without a path")
    if e.prefix and not _PREFIX.fullmatch(e.prefix):
        raise ConfigError(f"{key}.prefix: {e.prefix!r} is not a repository name prefix")
    if e.timeout <= 0:
        raise ConfigError(f"{key}.timeout: must be positive")
    if e.password and not e.username:
        raise ConfigError(f"{key}.username: a password is set without a username")


def _glob(key: str, glob: str) -> None:
    # globs.py patterns are fnmatch patterns; an unclosed "[" would match only itself.
    if not glob:
        raise ConfigError(f"{key}: an empty glob matches nothing")
    if glob.count("[") != glob.count("]"):
        raise ConfigError(f"{key}: {glob!r} has an unbalanced '[' or ']'")
    if any(c.isspace() for c in glob):
        raise ConfigError(f"{key}: {glob!r} has white space, which no repository name has")


def validate_replication(rules: list[ReplicationRule]) -> None:
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        key = f"replication[{i}]"
        if not rule.name:
            raise ConfigError(f"{key}.name: every [[replication]] rule needs a name")
        if not _RULE_NAME.fullmatch(rule.name):
            raise ConfigError(
                f"{key}.name: {rule.name!r} is not a valid name (letters, digits, '.', '_',"
                " '-'; at most 64)"
            )
        if rule.name in seen:
            raise ConfigError(f"{key}.name: duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        key = f"{key} ({rule.name})"
        if rule.mode not in REPLICATION_MODES:
            raise ConfigError(
                f"{key}.mode: choose one of {', '.join(REPLICATION_MODES)}, not {rule.mode!r}"
            )
        for glob in rule.repositories:
            _glob(f"{key}.repositories", glob)
        for pattern in rule.tags:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"{key}.tags: {pattern!r} is not a regular expression: {e}"
                ) from None
        if rule.mode == "push":
            if not rule.targets:
                raise ConfigError(
                    f"{key}.targets: a push rule needs at least one [[replication.targets]]"
                )
            urls: set[str] = set()
            for j, target in enumerate(rule.targets):
                _endpoint(f"{key}.targets[{j}]", target)
                ident = (target.url.rstrip("/"), target.prefix)
                if str(ident) in urls:
                    raise ConfigError(f"{key}.targets[{j}]: the same url and prefix twice")
                urls.add(str(ident))
            if rule.source.url:
                raise ConfigError(f"{key}.source: a push rule copies from here; remove source")
        else:
            if not rule.source.url:
                raise ConfigError(f"{key}.source.url: a pull rule needs a [replication.source] url")
            _endpoint(f"{key}.source", rule.source)
            if rule.targets:
                raise ConfigError(f"{key}.targets: a pull rule copies to here; remove targets")
            if rule.interval <= 0:
                raise ConfigError(f"{key}.interval: must be positive")
        if rule.max_attempts < 1:
            raise ConfigError(f"{key}.max_attempts: must be at least 1")
        if rule.backoff_initial <= 0 or rule.backoff_max < rule.backoff_initial:
            raise ConfigError(
                f"{key}.backoff_initial, backoff_max: need 0 < backoff_initial <= backoff_max"
            )
