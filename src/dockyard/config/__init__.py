"""Typed settings: embedded defaults < TOML file < ``DOCKYARD_*`` environment variables.

Every key is documented in ``conf/dockyard.toml``. An environment variable names a key as
``DOCKYARD_<SECTION>_<KEY>`` in upper case, for example ``DOCKYARD_SERVER_PORT=5001`` or
``DOCKYARD_STORAGE_DRIVER=memory``. Unknown sections or keys, values of the wrong type and
unknown driver names stop start-up with a ``ConfigError`` that names the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints


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
    poll_interval: float = 0.05
    # Events a websocket subscriber may fall behind before it is disconnected.
    feed_buffer: int = 1000
    # Idle seconds before the feed sends a heartbeat message (and a websocket ping).
    heartbeat: float = 15.0


@dataclass
class LogSettings:
    level: str = "info"
    # Log each request (method, path, status, duration) as a JSON line.
    access: bool = False


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    uploads: UploadsSettings = field(default_factory=UploadsSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @property
    def database_path(self) -> Path:
        if self.database.path:
            return Path(self.database.path)
        return Path(self.storage.root) / "dockyard.sqlite3"


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


def _validate(s: Settings) -> None:
    if s.storage.driver not in STORAGE_DRIVERS:
        raise ConfigError(
            f"storage.driver: unknown driver {s.storage.driver!r} "
            f"(choose one of: {', '.join(STORAGE_DRIVERS)})"
        )
    if not 0 <= s.server.port <= 65535:
        raise ConfigError(f"server.port: {s.server.port} is not a TCP port")
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


def as_dict(settings: Settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
