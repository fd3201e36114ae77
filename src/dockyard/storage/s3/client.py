"""The botocore client the S3 driver uses, run in worker threads, and its errors.

botocore is synchronous: each call runs in a worker thread, at most ``max_connections``
at a time (one ``anyio.CapacityLimiter`` per store, the same size as the connection pool).
Retries with backoff on throttling (503 SlowDown, 429) and 5xx are botocore's "standard"
retry mode, bounded by ``max_attempts``. Error texts name the operation, the key and the
S3 error code and message, never a credential.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dockyard.config.model import S3Settings
from dockyard.storage.base import StorageError

T = TypeVar("T")
NOT_FOUND = ("404", "NoSuchKey", "NotFound", "NoSuchUpload")
PRECONDITION_FAILED = ("412", "PreconditionFailed", "ConditionalRequestConflict")

# botocore logs signed request headers (the access key id) at DEBUG: never that low.
logging.getLogger("botocore").setLevel(logging.INFO)
logging.getLogger("urllib3").setLevel(logging.INFO)


def error_code(error: ClientError) -> str:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code or status


def is_not_found(error: BaseException) -> bool:
    if not isinstance(error, ClientError):
        return False
    status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return error_code(error) in NOT_FOUND or status == "404"


def is_precondition_failed(error: BaseException) -> bool:
    if not isinstance(error, ClientError):
        return False
    status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return error_code(error) in PRECONDITION_FAILED or status == "412"


def describe(operation: str, key: str, error: BaseException) -> str:
    """An error text safe to log and to show: operation, key, S3 code and message."""
    if isinstance(error, ClientError):
        message = str(error.response.get("Error", {}).get("Message", ""))[:200]
        return f"s3 {operation} {key!r}: {error_code(error)}: {message}".rstrip(": ")
    # BotoCoreError texts name the endpoint or the missing piece, not secrets.
    return f"s3 {operation} {key!r}: {type(error).__name__}: {error}"


def make_client(s3: S3Settings) -> Any:
    config = Config(
        region_name=s3.region,
        signature_version="s3v4",
        s3={"addressing_style": "path" if s3.path_style else "auto"},
        retries={"mode": "standard", "total_max_attempts": s3.max_attempts},
        max_pool_connections=s3.max_connections,
        connect_timeout=10,
        read_timeout=60,
        # Checksums only where S3 requires them: many S3-compatible servers do not know
        # the newer default (CRC32 trailers on every upload).
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    if not s3.verify_tls:
        verify: bool | str | None = False
    elif s3.ca_bundle:
        verify = s3.ca_bundle
    else:
        verify = None  # botocore's default: AWS_CA_BUNDLE or certifi
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        region_name=s3.region,
        endpoint_url=s3.endpoint or None,
        # Empty: botocore's chain (environment, shared files, container and instance roles).
        aws_access_key_id=s3.access_key or None,
        aws_secret_access_key=s3.secret_key or None,
        verify=verify,
        config=config,
    )


class ThreadedClient:
    """Calls of one botocore client in bounded worker threads, errors as StorageError."""

    def __init__(self, client: Any, max_threads: int) -> None:
        self.raw = client
        self._limiter = anyio.CapacityLimiter(max_threads)

    async def run(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    async def call(self, operation: str, key: str, **params: Any) -> Any:
        """``client.<operation>(**params)``; ``ClientError`` is left to the caller when
        it is an answer (not found, precondition), any other failure is a StorageError."""
        method = getattr(self.raw, operation)
        try:
            return await self.run(functools.partial(method, **params))
        except ClientError as e:
            if is_not_found(e) or is_precondition_failed(e):
                raise
            raise StorageError(describe(operation, key, e)) from None
        except BotoCoreError as e:
            raise StorageError(describe(operation, key, e)) from None

    def __repr__(self) -> str:
        return f"ThreadedClient(endpoint={self.raw.meta.endpoint_url!r})"
