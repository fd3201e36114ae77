"""Typed settings: embedded defaults < TOML file < ``DOCKYARD_*`` environment variables.

Every key is documented in ``conf/dockyard.toml``. An environment variable names a key as
``DOCKYARD_<SECTION>_<KEY>`` in upper case, for example ``DOCKYARD_SERVER_PORT=5001`` or
``DOCKYARD_STORAGE_DRIVER=memory``. Unknown sections or keys, values of the wrong type and
unknown driver names stop start-up with a ``ConfigError`` that names the key.

Webhook endpoints are ``[[webhooks]]`` tables (an array of tables) in the file only: they
have no environment variables, and ``DOCKYARD_WEBHOOKS_*`` is refused. See
``docs/webhooks.md``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and how to fix it."""


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    # Name of this instance in events and upload leases; empty means the host name.
    instance: str = ""
    # Seconds to let in-flight requests finish on shutdown.
    graceful_timeout: float = 10.0
    # URL clients use to reach this registry (target URLs in webhook bodies); empty means
    # http://<host>:<port>.
    public_url: str = ""
    # Bytes read from a connection at a time: the largest request-body chunk handled at
    # once. Memory per upload is at most 4 such chunks (hypercorn's app queue).
    read_size: int = 256 * 1024


@dataclass
class StorageSettings:
    driver: str = "filesystem"
    # Data directory: blobs (filesystem driver) and the embedded database live here.
    root: str = "./data"


@dataclass
class DatabaseSettings:
    # SQLite file; empty means <storage.root>/dockyard.sqlite3.
    path: str = ""
    # Worker threads that run database calls (DESIGN.md 3.5).
    threads: int = 4
    # Seconds a writer waits for another process's write lock.
    busy_timeout: float = 10.0


@dataclass
class LimitsSettings:
    # Largest manifest accepted (the spec asks registries to accept at least 4 MiB).
    max_manifest_bytes: int = 4 * 1024 * 1024
    # Page size of tag lists, catalog and referrers when the client gives no n.
    default_page_size: int = 1000
    max_page_size: int = 10000


@dataclass
class UploadsSettings:
    # An upload untouched for this many seconds is purged with its bytes.
    max_idle: float = 24 * 3600.0
    # How often the janitor looks for stale uploads.
    purge_interval: float = 600.0
    # A PATCH holds its upload for at most this long without progress.
    lease_seconds: float = 60.0


@dataclass
class EventsSettings:
    # Record pull events (batched off the request path).
    record_pulls: bool = True
    # Pull events waiting to be written; beyond this they are dropped and counted.
    pull_buffer: int = 10000
    # Longest a pull event waits before its batch is written, in seconds.
    pull_flush_interval: float = 0.5
    # How often each worker looks for events written by other workers, in seconds.
    poll_interval: float = 0.025
    # Events a websocket subscriber may fall behind before it is disconnected.
    feed_buffer: int = 1000
    # Idle seconds before the feed sends a heartbeat message (clients take a silence of
    # about two heartbeats for a dead connection).
    heartbeat: float = 15.0
    # One process delivers to each webhook endpoint at a time; it holds a lease in the
    # database for this many seconds, renewed while it delivers.
    webhook_lease_seconds: float = 30.0


@dataclass
class LogSettings:
    level: str = "info"
    # Log each request (method, path, status, duration) as a JSON line.
    access: bool = False


WEBHOOK_FORMATS = ("distribution", "cloudevents", "dockyard")


@dataclass
class WebhookSettings:
    """One ``[[webhooks]]`` endpoint; ``name`` and ``url`` are required."""

    name: str = ""
    url: str = ""
    # Extra request headers (for example Authorization).
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds one delivery attempt may take, connection included.
    timeout: float = 5.0
    # "distribution" (CNCF Distribution envelope), "cloudevents" or "dockyard" (native).
    format: str = "distribution"
    # When set, X-Dockyard-Signature: sha256=<HMAC-SHA256 of the body with this key>.
    secret: str = ""
    # Filters (empty: everything): repository globs, actions, media types (or "type/*").
    repositories: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    media_types: list[str] = field(default_factory=list)
    # Attempts per event before it is recorded as failed and the endpoint moves on.
    max_attempts: int = 10
    # Seconds before the first retry; each retry doubles it, up to backoff_max.
    backoff_initial: float = 1.0
    backoff_max: float = 60.0


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    uploads: UploadsSettings = field(default_factory=UploadsSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    webhooks: list[WebhookSettings] = field(default_factory=list)

    @property
    def database_path(self) -> Path:
        if self.database.path:
            return Path(self.database.path)
        return Path(self.storage.root) / "dockyard.sqlite3"

    @property
    def base_url(self) -> str:
        """The registry's URL as clients see it: server.public_url, else from host:port."""
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        host = self.server.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.server.port}"


STORAGE_DRIVERS = ("filesystem", "memory")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _coerce(key: str, kind: Any, value: Any, from_env: bool) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if from_env and isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")


def _apply(settings: Settings, section: str, key: str, value: Any, from_env: bool) -> None:
    name = f"{section}.{key}"
    section_obj = getattr(settings, section, None)
    if section_obj is None or not dataclasses.is_dataclass(section_obj):
        raise ConfigError(f"unknown section [{section}] (sections: {', '.join(_sections())})")
    hints = get_type_hints(type(section_obj))
    if key not in hints:
        known = ", ".join(hints)
        raise ConfigError(f"unknown key {name} (keys of [{section}]: {known})")
    setattr(section_obj, key, _coerce(name, hints[key], value, from_env))


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings)]


_WEBHOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Headers dockyard sets itself on every delivery.
_RESERVED_HEADERS = ("content-type", "content-length", "host", "transfer-encoding")


def _strings(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    return list(value)


def _webhooks(value: Any) -> list[WebhookSettings]:
    """Parse the ``[[webhooks]]`` array of tables (types here, values in ``_validate``)."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError("webhooks: expected [[webhooks]] tables (an array of tables)")
    hints = get_type_hints(WebhookSettings)
    out: list[WebhookSettings] = []
    for i, table in enumerate(value):
        hook = WebhookSettings()
        for key, item in table.items():
            name = f"webhooks[{i}].{key}"
            if key not in hints:
                raise ConfigError(f"unknown key {name} (keys of [[webhooks]]: {', '.join(hints)})")
            if key == "headers":
                if not isinstance(item, dict) or not all(isinstance(v, str) for v in item.values()):
                    raise ConfigError(f"{name}: expected a table of strings, got {item!r}")
                hook.headers = dict(item)
            elif key in ("repositories", "actions", "media_types"):
                setattr(hook, key, _strings(name, item))
            else:
                setattr(hook, key, _coerce(name, hints[key], item, from_env=False))
        out.append(hook)
    return out


def _validate_webhooks(hooks: list[WebhookSettings]) -> None:
    from dockyard.events.schema import ACTIONS  # the one list of actions

    seen: set[str] = set()
    for i, h in enumerate(hooks):
        key = f"webhooks[{i}]"
        if not h.name:
            raise ConfigError(f"{key}.name: every [[webhooks]] endpoint needs a name")
        if not _WEBHOOK_NAME.fullmatch(h.name):
            raise ConfigError(
                f"{key}.name: {h.name!r} is not a valid name (letters, digits, '.', '_', '-';"
                " at most 64)"
            )
        if h.name in seen:
            raise ConfigError(f"{key}.name: duplicate endpoint name {h.name!r}")
        seen.add(h.name)
        key = f"{key} ({h.name})"
        if not h.url:
            raise ConfigError(f"{key}.url: every [[webhooks]] endpoint needs a url")
        try:
            url = urlsplit(h.url)
            url.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"{key}.url: {h.url!r} is not an http:// or https:// URL")
        for header in h.headers:
            lower = header.lower()
            if lower in _RESERVED_HEADERS or lower.startswith("x-dockyard-"):
                raise ConfigError(f"{key}.headers: {header!r} is set by dockyard itself")
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header):
                raise ConfigError(f"{key}.headers: {header!r} is not a valid header name")
        for header, header_value in h.headers.items():
            if any(c in header_value for c in "\r\n\0"):
                raise ConfigError(f"{key}.headers: the value of {header!r} has a line break")
        if h.format not in WEBHOOK_FORMATS:
            raise ConfigError(
                f"{key}.format: unknown format {h.format!r} "
                f"(choose one of: {', '.join(WEBHOOK_FORMATS)})"
            )
        for action in h.actions:
            if action not in ACTIONS:
                raise ConfigError(
                    f"{key}.actions: unknown action {action!r} (actions: {', '.join(ACTIONS)})"
                )
        for media_type in h.media_types:
            if "*" in media_type and not (media_type.endswith("/*") and media_type.count("*") == 1):
                raise ConfigError(
                    f"{key}.media_types: {media_type!r}: give an exact media type or 'type/*'"
                )
        if h.timeout <= 0:
            raise ConfigError(f"{key}.timeout: must be positive")
        if h.max_attempts < 1:
            raise ConfigError(f"{key}.max_attempts: must be at least 1")
        if h.backoff_initial <= 0 or h.backoff_max < h.backoff_initial:
            raise ConfigError(
                f"{key}.backoff_initial, backoff_max: need 0 < backoff_initial <= backoff_max"
            )


def _validate(s: Settings) -> None:
    if s.storage.driver not in STORAGE_DRIVERS:
        raise ConfigError(
            f"storage.driver: unknown driver {s.storage.driver!r} "
            f"(choose one of: {', '.join(STORAGE_DRIVERS)})"
        )
    if not 0 <= s.server.port <= 65535:
        raise ConfigError(f"server.port: {s.server.port} is not a TCP port")
    if not 16 * 1024 <= s.server.read_size <= 16 * 1024 * 1024:
        raise ConfigError("server.read_size: must be between 16384 and 16777216 bytes")
    if s.server.workers < 1:
        raise ConfigError("server.workers: must be at least 1")
    if s.database.threads < 1:
        raise ConfigError("database.threads: must be at least 1")
    if s.limits.max_manifest_bytes < 4 * 1024 * 1024:
        raise ConfigError("limits.max_manifest_bytes: the spec requires at least 4194304")
    if not 1 <= s.limits.default_page_size <= s.limits.max_page_size:
        raise ConfigError("limits.default_page_size: must be between 1 and limits.max_page_size")
    if s.events.pull_buffer < 1:
        raise ConfigError("events.pull_buffer: must be at least 1")
    if s.events.feed_buffer < 1:
        raise ConfigError("events.feed_buffer: must be at least 1")
    if s.events.poll_interval <= 0 or s.events.heartbeat <= 0:
        raise ConfigError("events.poll_interval and events.heartbeat: must be positive")
    if s.log.level not in LOG_LEVELS:
        raise ConfigError(f"log.level: choose one of {', '.join(LOG_LEVELS)}")
    if s.events.webhook_lease_seconds <= 0:
        raise ConfigError("events.webhook_lease_seconds: must be positive")
    if s.server.public_url:
        url = urlsplit(s.server.public_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(f"server.public_url: {s.server.public_url!r} is not an http(s) URL")
    _validate_webhooks(s.webhooks)


def load(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings from defaults, then the TOML file at ``path``, then ``environ``."""
    settings = Settings()
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {os.fspath(path)!r} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {os.fspath(path)!r}: {e}") from None
        except OSError as e:  # a directory, no permission, ...
            raise ConfigError(f"config file {os.fspath(path)!r}: {e.strerror}") from None
        for section, values in doc.items():
            if section == "webhooks":
                settings.webhooks = _webhooks(values)
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: expected a [{section}] table")
            for key, value in values.items():
                _apply(settings, section, key, value, from_env=False)
    env = os.environ if environ is None else environ
    sections = sorted(_sections(), key=len, reverse=True)
    for var, value in env.items():
        if not var.startswith("DOCKYARD_") or var in ("DOCKYARD_CONFIG",):
            continue
        rest = var[len("DOCKYARD_") :].lower()
        if rest.startswith("webhooks_"):
            raise ConfigError(
                f"{var}: webhooks are configured only in the config file ([[webhooks]] tables)"
            )
        for section in sections:
            if rest.startswith(section + "_"):
                try:
                    _apply(settings, section, rest[len(section) + 1 :], value, from_env=True)
                except ConfigError as e:
                    raise ConfigError(f"{var}: {e}") from None
                break
        else:
            raise ConfigError(f"{var}: unknown setting (form: DOCKYARD_<SECTION>_<KEY>)")
    _validate(settings)
    return settings


def as_dict(settings: Settings, redact: bool = False) -> dict[str, Any]:
    """The settings as plain data; ``redact`` hides webhook secrets and header values."""
    d = dataclasses.asdict(settings)
    if redact:
        for hook in d["webhooks"]:
            if hook["secret"]:
                hook["secret"] = "<redacted>"
            hook["headers"] = dict.fromkeys(hook["headers"], "<redacted>")
    return d
