"""Checks of the ``[storage.s3]`` table, run when ``storage.driver = "s3"``."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from dockyard.config.model import ConfigError, S3Settings

S3_SSE_MODES = ("", "AES256", "aws:kms")
MIN_PART = 5 * 1024 * 1024  # S3's smallest part (but the last)
MAX_PART = 5 * 1024 * 1024 * 1024  # and its largest


def validate_s3(s3: S3Settings) -> None:
    if not s3.bucket:
        raise ConfigError("storage.s3.bucket: required with storage.driver = 's3'")
    if s3.endpoint:
        parts = urlsplit(s3.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"storage.s3.endpoint: {s3.endpoint!r} is not an http:// or https:// URL"
            )
    if not s3.region:
        raise ConfigError("storage.s3.region: required (us-east-1 if the store has none)")
    if bool(s3.access_key) != bool(s3.secret_key):
        raise ConfigError(
            "storage.s3.access_key and storage.s3.secret_key: give both, or neither (then"
            " the environment and the standard AWS credential chain are used)"
        )
    if s3.prefix.startswith("/"):
        raise ConfigError("storage.s3.prefix: must not start with '/'")
    if s3.ca_bundle and not os.path.isfile(s3.ca_bundle):
        raise ConfigError(f"storage.s3.ca_bundle: {s3.ca_bundle!r} is not a readable file")
    if s3.sse not in S3_SSE_MODES:
        raise ConfigError(f"storage.s3.sse: {s3.sse!r} is not one of '', 'AES256', 'aws:kms'")
    if s3.sse_kms_key_id and s3.sse != "aws:kms":
        raise ConfigError("storage.s3.sse_kms_key_id: only with sse = 'aws:kms'")
    if not 1 <= s3.redirect_expiry <= 7 * 24 * 3600:
        raise ConfigError("storage.s3.redirect_expiry: must be between 1 and 604800 seconds")
    if not 1 <= s3.max_connections <= 1024:
        raise ConfigError("storage.s3.max_connections: must be between 1 and 1024")
    if not MIN_PART <= s3.part_size <= MAX_PART:
        raise ConfigError(f"storage.s3.part_size: must be between {MIN_PART} and {MAX_PART}")
    if not 1 <= s3.max_attempts <= 20:
        raise ConfigError("storage.s3.max_attempts: must be between 1 and 20")
