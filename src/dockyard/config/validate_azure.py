"""Checks of ``[storage.azure]`` when ``storage.driver = "azure"`` (called by ``validate``).

Messages name the key, never a credential's value.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from dockyard.config.model import AzureStorageSettings, ConfigError

# Azure's naming rules for storage accounts and containers.
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_CREDENTIALS = ("account_key", "sas_token", "connection_string")


def _is_base64(value: str) -> bool:
    try:
        return bool(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return False


def _connection_string_fields(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        name, sep, item = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(
                "storage.azure.connection_string: expected Name=value pairs separated by ';'"
            )
        fields[name.strip().lower()] = item.strip()
    return fields


def _validate_credentials(a: AzureStorageSettings) -> None:
    chosen = [key for key in _CREDENTIALS if getattr(a, key)]
    if len(chosen) != 1:
        raise ConfigError(
            "storage.azure: set exactly one of account_key, sas_token or connection_string"
            f" (set: {', '.join(chosen) or 'none'})"
        )
    if a.account_key and not _is_base64(a.account_key):
        raise ConfigError("storage.azure.account_key: is not base64 (copy the key as shown)")
    if a.sas_token and "sig=" not in a.sas_token:
        raise ConfigError("storage.azure.sas_token: is not a SAS token (it has no sig=)")
    if a.connection_string:
        if a.account_name or a.endpoint:
            raise ConfigError(
                "storage.azure.connection_string: names the account and endpoint itself;"
                " leave account_name and endpoint empty"
            )
        fields = _connection_string_fields(a.connection_string)
        if "accountname" not in fields and "blobendpoint" not in fields:
            raise ConfigError(
                "storage.azure.connection_string: has neither AccountName nor BlobEndpoint"
            )
        if "accountkey" in fields and not _is_base64(fields["accountkey"]):
            raise ConfigError("storage.azure.connection_string: its AccountKey is not base64")
    elif not _ACCOUNT.fullmatch(a.account_name):
        raise ConfigError(
            f"storage.azure.account_name: {a.account_name!r} is not a storage account name"
            " (3 to 24 lower-case letters and digits)"
        )


def validate_azure(a: AzureStorageSettings) -> None:
    if not _CONTAINER.fullmatch(a.container):
        raise ConfigError(
            f"storage.azure.container: {a.container!r} is not a container name (3 to 63"
            " lower-case letters, digits and single hyphens, starting with a letter or digit)"
        )
    _validate_credentials(a)
    if a.endpoint:
        url = urlsplit(a.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise ConfigError(
                f"storage.azure.endpoint: {a.endpoint!r} is not an http(s) URL without a query"
            )
    segments = a.prefix.strip("/").split("/")
    if len(a.prefix) > 512 or (a.prefix.strip("/") and ({"", ".", ".."} & set(segments))):
        raise ConfigError(
            f"storage.azure.prefix: {a.prefix!r} must be /-separated names, none empty,"
            " '.' or '..' (at most 512 characters)"
        )
