"""The Azure side of the ``azure`` driver: the SDK client, worker threads, error mapping.

azure-storage-blob's sync client runs in worker threads (its aio client is asyncio-only),
at most ``connections`` calls at once per store (a ``anyio.CapacityLimiter``), over one
requests session whose pool holds that many connections. Retries of throttling (503),
5xx answers and dropped connections are the SDK's retry policy, with short backoffs.

Every SDK failure becomes a ``StorageError`` (``ServiceError`` when the service answered)
whose text names the operation, the HTTP status and Azure's error code: never the
SDK's own message, which may quote a URL with its SAS signature, and never chained
(``from None``), so a logged traceback cannot show it either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import requests
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry
from requests.adapters import HTTPAdapter

from dockyard.storage.base import READ_CHUNK, StorageError

T = TypeVar("T")

# azure-core logs every request and response at INFO: far too much for a registry's log.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)


@dataclass
class AzureAccount:
    """Where the container is and how to get in; ``repr`` shows no credential."""

    container: str
    account_name: str = ""
    account_key: str = field(default="", repr=False)
    sas_token: str = field(default="", repr=False)
    connection_string: str = field(default="", repr=False)
    endpoint: str = ""

    @property
    def account_url(self) -> str:
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return f"https://{self.account_name}.blob.core.windows.net"


class ServiceError(StorageError):
    """The blob service answered with an error status."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _error_code(e: HttpResponseError) -> str:
    code = getattr(e, "error_code", None)
    return str(getattr(code, "value", code or ""))


def storage_error(what: str, e: Exception, where: str) -> StorageError:
    """A StorageError for the SDK failure ``e`` that quotes nothing the SDK said."""
    if isinstance(e, HttpResponseError) and e.status_code is not None:
        code = _error_code(e)
        if isinstance(e, ClientAuthenticationError) or e.status_code in (401, 403):
            return ServiceError(
                f"azure {what}: the storage account refused the credentials"
                f" (HTTP {e.status_code} {code})",
                e.status_code,
                code,
            )
        return ServiceError(f"azure {what}: HTTP {e.status_code} {code}", e.status_code, code)
    if isinstance(e, ServiceRequestError | ServiceResponseError):
        return StorageError(f"azure {what}: cannot reach {where} ({type(e).__name__})")
    return StorageError(f"azure {what}: {type(e).__name__}")


# 0.5, 2.5, 4.5 and 8.5 seconds (+-0.25) between tries: a throttled or restarting service
# gets about 16 s before the request fails, where the SDK's default waits over a minute.
# (Its annotations say int; floats work, as the backoff is computed in floats.)
RETRY: dict[str, Any] = {
    "initial_backoff": 0.5,
    "increment_base": 2,
    "retry_total": 4,
    "random_jitter_range": 0.25,
}


def build_container_client(account: AzureAccount, connections: int) -> ContainerClient:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=connections)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    options: dict[str, Any] = {
        "session": session,
        "retry_policy": ExponentialRetry(**RETRY),
        # Downloads come in READ_CHUNK pieces, one GET each (base.py: bounded reads).
        "max_single_get_size": READ_CHUNK,
        "max_chunk_get_size": READ_CHUNK,
        "connection_timeout": 10,
        "read_timeout": 60,
    }
    if account.connection_string:
        service = BlobServiceClient.from_connection_string(account.connection_string, **options)
    else:
        credential: Any = account.sas_token.lstrip("?")
        if account.account_key:
            credential = {"account_name": account.account_name, "account_key": account.account_key}
        service = BlobServiceClient(account.account_url, credential=credential, **options)
    return service.get_container_client(account.container)


class AzureCalls:
    """Runs blocking SDK calls in worker threads, at most ``connections`` at once."""

    def __init__(self, account: AzureAccount, connections: int = 16) -> None:
        try:
            self.container = build_container_client(account, connections)
        except (ValueError, AzureError) as e:
            raise storage_error("client", e, "") from None
        self._limiter = anyio.CapacityLimiter(connections)
        # For "cannot reach" messages: scheme, host and port, no path or query.
        url = urlsplit(self.container.url)
        self.where = f"{url.scheme}://{url.netloc}"

    async def run(self, what: str, fn: Callable[[], T], abandon_on_cancel: bool = False) -> T:
        def call() -> T:
            try:
                return fn()
            except (AzureError, ValueError) as e:
                # Made in the thread: the SDK's exception (and its message) stays there.
                raise storage_error(what, e, self.where) from None

        return await anyio.to_thread.run_sync(
            call, limiter=self._limiter, abandon_on_cancel=abandon_on_cancel
        )

    def close(self) -> None:
        self.container.close()
