"""Typed settings: embedded defaults < TOML file < ``DOCKYARD_*`` environment variables.

Every key is documented in ``conf/dockyard.toml``. An environment variable names a key as
``DOCKYARD_<SECTION>_<KEY>`` in upper case, for example ``DOCKYARD_SERVER_PORT=5001`` or
``DOCKYARD_STORAGE_DRIVER=memory``. Unknown sections or keys, values of the wrong type and
unknown driver names stop start-up with a ``ConfigError`` that names the key.

Webhook endpoints are ``[[webhooks]]`` tables (an array of tables) in the file only: they
have no environment variables, and ``DOCKYARD_WEBHOOKS_*`` is refused. See
``docs/webhooks.md``.

The package: ``model`` (the dataclasses and their defaults), ``loader`` (the layers,
``load`` and ``as_dict``), ``validate`` (value checks). This module only re-exports the
public names; it depends on nothing outside ``config`` but the leaf ``dockyard.actions``.
"""

from dockyard.config.loader import as_dict, load
from dockyard.config.model import (
    AUTH_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    SCANNERS,
    SEVERITIES,
    STORAGE_DRIVERS,
    WEBHOOK_FORMATS,
    AccessSettings,
    AuthSettings,
    ConfigError,
    DatabaseSettings,
    EventsSettings,
    HarborScannerSettings,
    LimitsSettings,
    LogSettings,
    ManifestsSettings,
    RemoteRegistry,
    ReplicationEndpoint,
    ReplicationRule,
    ScannerAdapterSettings,
    ScanningSettings,
    ScanPolicy,
    ServerSettings,
    Settings,
    StorageSettings,
    UploadsSettings,
    UpstreamSettings,
    WebhookSettings,
)

__all__ = [
    "AUTH_MODES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "SCANNERS",
    "SEVERITIES",
    "STORAGE_DRIVERS",
    "WEBHOOK_FORMATS",
    "AccessSettings",
    "AuthSettings",
    "ConfigError",
    "DatabaseSettings",
    "EventsSettings",
    "HarborScannerSettings",
    "LimitsSettings",
    "LogSettings",
    "ManifestsSettings",
    "RemoteRegistry",
    "ReplicationEndpoint",
    "ReplicationRule",
    "ScanPolicy",
    "ScannerAdapterSettings",
    "ScanningSettings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "UploadsSettings",
    "UpstreamSettings",
    "WebhookSettings",
    "as_dict",
    "load",
]
