"""Loading settings: embedded defaults < TOML file < ``DOCKYARD_*`` environment variables.

An environment variable names a key as ``DOCKYARD_<SECTION>_<KEY>`` in upper case, for
example ``DOCKYARD_SERVER_PORT=5001``. Values are coerced to the model's field types
(from strings only for the environment: the TOML file has types of its own); unknown
sections or keys and values of the wrong type raise ``ConfigError`` naming the key.
Webhook endpoints are ``[[webhooks]]`` tables in the file only (``DOCKYARD_WEBHOOKS_*``
is refused), and so are retention policies (``[[retention.policies]]``). ``load``
validates the result (``validate.validate``) before returning it: no caller ever sees
settings that did not pass.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_type_hints

from dockyard.config.model import (
    AccessSettings,
    ConfigError,
    QuotaSettings,
    ReplicationEndpoint,
    ReplicationRule,
    RetentionPolicy,
    ScanPolicy,
    Settings,
    UpstreamSettings,
    WebhookSettings,
    redact_url,
)
from dockyard.config.validate import validate

T = TypeVar("T")


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
    elif kind == list[str]:
        if from_env and isinstance(value, str):  # comma-separated in the environment
            return [item.strip() for item in value.split(",") if item.strip()]
        return _strings(key, value)
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")


def _apply(settings: Settings, section: str, key: str, value: Any, from_env: bool) -> None:
    section_obj = getattr(settings, section, None)
    if section_obj is None or not dataclasses.is_dataclass(section_obj):
        raise ConfigError(f"unknown section [{section}] (sections: {', '.join(_sections())})")
    _apply_to(section_obj, section, key, value, from_env)


def _apply_to(obj: Any, section: str, key: str, value: Any, from_env: bool) -> None:
    """Set ``key`` of one section, or of a sub-table such as ``[network.pull]``."""
    name = f"{section}.{key}"
    hints = get_type_hints(type(obj))
    if key not in hints and from_env:
        # DOCKYARD_NETWORK_PULL_ALLOW: the sub-table's name is a prefix of the key.
        for sub, kind in hints.items():
            if dataclasses.is_dataclass(kind) and key.startswith(sub + "_"):
                _apply_to(getattr(obj, sub), f"{section}.{sub}", key[len(sub) + 1 :], value, True)
                return
    if key not in hints:
        known = ", ".join(hints)
        raise ConfigError(f"unknown key {name} (keys of [{section}]: {known})")
    kind = hints[key]
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a [{name}] table, got {value!r}")
        for sub_key, sub_value in value.items():
            _apply_to(getattr(obj, key), name, sub_key, sub_value, from_env)
        return
    setattr(obj, key, _coerce(name, kind, value, from_env))


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings)]


def _strings(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    return list(value)


def _tables(
    section: str, cls: type[T], value: Any, parse: Callable[[str, str, Any], Any] | None = None
) -> list[T]:
    """Parse an array of tables (``[[section]]``) into ``cls`` objects: types here, values
    in ``validate``. ``parse`` (key, name, value) handles keys of a type ``_coerce`` does
    not know, returning NotImplemented for the rest."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{section}: expected [[{section}]] tables (an array of tables)")
    hints = get_type_hints(cls)
    out: list[T] = []
    for i, table in enumerate(value):
        obj = cls()
        for key, item in table.items():
            name = f"{section}[{i}].{key}"
            if key not in hints:
                raise ConfigError(f"unknown key {name} (keys of [[{section}]]: {', '.join(hints)})")
            parsed = NotImplemented if parse is None else parse(key, name, item)
            if parsed is NotImplemented:
                parsed = _coerce(name, hints[key], item, from_env=False)
            setattr(obj, key, parsed)
        out.append(obj)
    return out


def _webhook_headers(key: str, name: str, item: Any) -> Any:
    if key != "headers":
        return NotImplemented
    if not isinstance(item, dict) or not all(isinstance(v, str) for v in item.values()):
        raise ConfigError(f"{name}: expected a table of strings, got {item!r}")
    return dict(item)


def _webhooks(value: Any) -> list[WebhookSettings]:
    """Parse the ``[[webhooks]]`` array of tables."""
    return _tables("webhooks", WebhookSettings, value, _webhook_headers)


def _retention_policies(value: Any) -> list[RetentionPolicy]:
    """Parse the ``[[retention.policies]]`` array of tables."""
    return _tables("retention.policies", RetentionPolicy, value)


def _access(value: Any) -> list[AccessSettings]:
    """Parse the ``[[access]]`` array of tables (every value is a list of strings)."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError("access: expected [[access]] tables (an array of tables)")
    keys = [f.name for f in dataclasses.fields(AccessSettings)]
    out: list[AccessSettings] = []
    for i, table in enumerate(value):
        rule = AccessSettings()
        for key, item in table.items():
            name = f"access[{i}].{key}"
            if key not in keys:
                raise ConfigError(f"unknown key {name} (keys of [[access]]: {', '.join(keys)})")
            setattr(rule, key, _strings(name, item))
        out.append(rule)
    return out


def _upstreams(value: Any) -> list[UpstreamSettings]:
    """Parse the ``[[upstreams]]`` array of tables."""
    return _tables("upstreams", UpstreamSettings, value)


def _replication_endpoints(key: str, name: str, item: Any) -> Any:
    if key == "targets":
        return _tables(name, ReplicationEndpoint, item)
    if key == "source":
        if not isinstance(item, dict):
            raise ConfigError(f"{name}: expected a [replication.source] table")
        return _tables(name, ReplicationEndpoint, [item])[0]
    return NotImplemented


def _replication(value: Any) -> list[ReplicationRule]:
    """Parse the ``[[replication]]`` array of tables, with their ``[[replication.targets]]``
    and ``[replication.source]``."""
    return _tables("replication", ReplicationRule, value, _replication_endpoints)


def _quotas(value: Any) -> list[QuotaSettings]:
    """Parse the ``[[quotas]]`` array of tables."""
    return _tables("quotas", QuotaSettings, value)


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
            if section == "access":
                settings.access = _access(values)
                continue
            if section == "quotas":
                settings.quotas = _quotas(values)
                continue
            if section == "upstreams":
                settings.upstreams = _upstreams(values)
                continue
            if section == "replication":
                settings.replication = _replication(values)
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: expected a [{section}] table")
            for key, value in values.items():
                if (section, key) == ("retention", "policies"):
                    settings.retention.policies = _retention_policies(value)
                    continue
                if (section, key) == ("scanning", "policies"):
                    settings.scanning.policies = _tables("scanning.policies", ScanPolicy, value)
                    continue
                _apply(settings, section, key, value, from_env=False)
    env = os.environ if environ is None else environ
    sections = sorted(_sections(), key=len, reverse=True)
    for var, value in env.items():
        if not var.startswith("DOCKYARD_") or var in ("DOCKYARD_CONFIG",):
            continue
        if var.startswith("DOCKYARD_TEST_"):
            # The test suite's own choices (tests/conftest.py, tests/serverproc.py: which
            # event loops tests and test servers run on), not settings.
            continue
        rest = var[len("DOCKYARD_") :].lower()
        if rest.startswith(("webhooks_", "access_", "quotas_", "upstreams_", "replication_")):
            table = rest.partition("_")[0]
            raise ConfigError(
                f"{var}: {table} are configured only in the config file ([[{table}]] tables)"
            )
        if rest.startswith("scanning_policies"):
            raise ConfigError(
                f"{var}: scan policies are configured only in the config file"
                " ([[scanning.policies]] tables)"
            )
        if rest.startswith("retention_policies"):
            raise ConfigError(
                f"{var}: retention policies are configured only in the config file"
                " ([[retention.policies]] tables)"
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
    validate(settings)
    return settings


def as_dict(settings: Settings, redact: bool = False) -> dict[str, Any]:
    """The settings as plain data; ``redact`` hides webhook secrets and header values,
    storage credentials and the database password."""
    d = dataclasses.asdict(settings)
    if redact:
        d["database"]["url"] = redact_url(settings.database.url)
        azure = d["storage"]["azure"]
        for key in ("account_key", "sas_token", "connection_string"):
            if azure[key]:
                azure[key] = "<redacted>"
        if d["storage"]["s3"]["secret_key"]:
            d["storage"]["s3"]["secret_key"] = "<redacted>"
        for hook in d["webhooks"]:
            if hook["secret"]:
                hook["secret"] = "<redacted>"
            hook["headers"] = dict.fromkeys(hook["headers"], "<redacted>")
        remotes = list(d["upstreams"])
        for rule in d["replication"]:
            remotes += [*rule["targets"], rule["source"]]
        if d["scanning"]["harbor"]["authorization"]:
            d["scanning"]["harbor"]["authorization"] = "<redacted>"
        if d["scanning"]["adapter"]["authorization"]:
            d["scanning"]["adapter"]["authorization"] = "<redacted>"
        for remote in remotes:
            if remote["password"]:
                remote["password"] = "<redacted>"
    return d
