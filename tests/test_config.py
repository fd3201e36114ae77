"""dockyard.config.load: defaults < TOML file < DOCKYARD_* environment, validated once."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dockyard.config import ConfigError, Settings, as_dict, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dockyard.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = load(None, environ={})
    assert s == Settings()
    assert s.server.host == "127.0.0.1"
    assert s.server.port == 5000
    assert s.server.workers == 1
    assert s.storage.driver == "filesystem"
    assert s.storage.root == "./data"
    assert s.limits.max_manifest_bytes == 4 * 1024 * 1024
    assert s.events.record_pulls is True
    assert s.log.level == "info"
    assert s.database_path == Path("./data") / "dockyard.sqlite3"


def test_environ_defaults_to_nothing_special() -> None:
    # Variables outside the DOCKYARD_ namespace are ignored, and so is DOCKYARD_CONFIG
    # (the CLI's way to name the file).
    s = load(None, environ={"HOME": "/root", "PORT": "1", "DOCKYARD_CONFIG": "/x.toml"})
    assert s == Settings()


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        host = "0.0.0.0"
        port = 6000
        graceful_timeout = 3  # an integer is a fine float

        [storage]
        driver = "memory"
        root = "/srv/dockyard"

        [events]
        record_pulls = false
        pull_flush_interval = 0.25

        [limits]
        max_manifest_bytes = 8388608
        """,
    )
    s = load(path, environ={})
    assert s.server.host == "0.0.0.0"
    assert s.server.port == 6000
    assert s.server.graceful_timeout == 3.0
    assert isinstance(s.server.graceful_timeout, float)
    assert s.storage.driver == "memory"
    assert s.storage.root == "/srv/dockyard"
    assert s.events.record_pulls is False
    assert s.events.pull_flush_interval == 0.25
    assert s.limits.max_manifest_bytes == 8 * 1024 * 1024
    # Keys the file does not mention keep their defaults.
    assert s.server.workers == 1
    assert s.database == Settings().database
    assert s.database_path == Path("/srv/dockyard/dockyard.sqlite3")


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        port = 6000
        host = "10.0.0.1"

        [database]
        path = "/from/file.sqlite3"
        """,
    )
    s = load(
        path,
        environ={
            "DOCKYARD_SERVER_PORT": "7000",
            "DOCKYARD_DATABASE_PATH": "/from/env.sqlite3",
            "DOCKYARD_LIMITS_MAX_MANIFEST_BYTES": "5000000",
            "DOCKYARD_UPLOADS_LEASE_SECONDS": "30",
        },
    )
    assert s.server.port == 7000
    assert s.server.host == "10.0.0.1"  # from the file, not overridden
    assert s.database.path == "/from/env.sqlite3"
    assert s.database_path == Path("/from/env.sqlite3")
    assert s.limits.max_manifest_bytes == 5_000_000
    assert s.uploads.lease_seconds == 30.0


def test_environment_without_file() -> None:
    s = load(None, environ={"DOCKYARD_STORAGE_DRIVER": "memory", "DOCKYARD_LOG_LEVEL": "debug"})
    assert s.storage.driver == "memory"
    assert s.log.level == "debug"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_bool_from_environment(value: str, expected: bool) -> None:
    s = load(None, environ={"DOCKYARD_LOG_ACCESS": value, "DOCKYARD_EVENTS_RECORD_PULLS": value})
    assert s.log.access is expected
    assert s.events.record_pulls is expected


@pytest.mark.parametrize("value", ["", "2", "maybe", "enabled", "tru"])
def test_bad_bool_from_environment(value: str) -> None:
    with pytest.raises(ConfigError, match=r"log\.access"):
        load(None, environ={"DOCKYARD_LOG_ACCESS": value})


def test_int_and_float_from_environment() -> None:
    s = load(
        None,
        environ={
            "DOCKYARD_SERVER_WORKERS": "4",
            "DOCKYARD_DATABASE_THREADS": " 8 ",
            "DOCKYARD_SERVER_GRACEFUL_TIMEOUT": "2.5",
            "DOCKYARD_UPLOADS_MAX_IDLE": "3600",
            "DOCKYARD_EVENTS_PULL_FLUSH_INTERVAL": "1e-1",
        },
    )
    assert s.server.workers == 4 and isinstance(s.server.workers, int)
    assert s.database.threads == 8
    assert s.server.graceful_timeout == 2.5
    assert s.uploads.max_idle == 3600.0 and isinstance(s.uploads.max_idle, float)
    assert s.events.pull_flush_interval == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("var", "value", "key"),
    [
        ("DOCKYARD_SERVER_PORT", "http", "server.port"),
        ("DOCKYARD_SERVER_PORT", "5000.0", "server.port"),
        ("DOCKYARD_SERVER_PORT", "", "server.port"),
        ("DOCKYARD_SERVER_GRACEFUL_TIMEOUT", "soon", "server.graceful_timeout"),
        ("DOCKYARD_LIMITS_DEFAULT_PAGE_SIZE", "many", "limits.default_page_size"),
    ],
)
def test_bad_numbers_from_environment(var: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(None, environ={var: value})


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[server]\nport = "5000"', "server.port"),
        ("[server]\nport = 5000.0", "server.port"),
        ("[server]\nport = true", "server.port"),
        ("[server]\nhost = 127", "server.host"),
        ('[server]\ngraceful_timeout = "10"', "server.graceful_timeout"),
        ('[log]\naccess = "true"', "log.access"),  # strings become bools only from env
        ("[log]\naccess = 1", "log.access"),
        ("[storage]\nroot = ['a']", "storage.root"),
        ("[storage]\nroot = {a = 1}", "storage.root"),
    ],
)
def test_wrong_type_in_file(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(write(tmp_path, toml), environ={})


def test_unknown_section_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="serverz"):
        load(write(tmp_path, "[serverz]\nport = 1"), environ={})


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server"):
        load(write(tmp_path, "server = 5000"), environ={})


@pytest.mark.parametrize("section", ["database_path", "__class__", "__dict__"])
def test_attributes_are_not_sections(tmp_path: Path, section: str) -> None:
    with pytest.raises(ConfigError, match=section):
        load(write(tmp_path, f"[{section}]\nport = 1"), environ={})


def test_unknown_key_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.prot") as info:
        load(write(tmp_path, "[server]\nprot = 5000"), environ={})
    # The message lists what the section does know.
    assert "port" in str(info.value).replace("server.prot", "")


@pytest.mark.parametrize(
    ("var", "name"),
    [
        ("DOCKYARD_SERVER_PROT", "server.prot"),
        ("DOCKYARD_SERVERZ_PORT", "DOCKYARD_SERVERZ_PORT"),
        ("DOCKYARD_NOPE", "DOCKYARD_NOPE"),
        ("DOCKYARD_SERVER", "DOCKYARD_SERVER"),
    ],
)
def test_unknown_environment_variable(var: str, name: str) -> None:
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        load(None, environ={var: "1"})


@pytest.mark.parametrize("driver", ["s4", "Filesystem", "", "memory "])
def test_unknown_storage_driver(tmp_path: Path, driver: str) -> None:
    with pytest.raises(ConfigError, match=r"storage\.driver") as info:
        load(write(tmp_path, f'[storage]\ndriver = "{driver}"'), environ={})
    # The message says what to choose instead.
    assert "filesystem" in str(info.value) and "memory" in str(info.value)
    with pytest.raises(ConfigError, match=r"storage\.driver"):
        load(None, environ={"DOCKYARD_STORAGE_DRIVER": driver})


def test_environment_can_fix_a_bad_driver_in_the_file(tmp_path: Path) -> None:
    # Validation runs once, on the final layered result.
    path = write(tmp_path, '[storage]\ndriver = "s4"')
    assert load(path, environ={"DOCKYARD_STORAGE_DRIVER": "memory"}).storage.driver == "memory"


@pytest.mark.parametrize("size", [0, 1, 4 * 1024 * 1024 - 1, -1])
def test_max_manifest_bytes_too_small(tmp_path: Path, size: int) -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_manifest_bytes"):
        load(write(tmp_path, f"[limits]\nmax_manifest_bytes = {size}"), environ={})
    with pytest.raises(ConfigError, match=r"limits\.max_manifest_bytes"):
        load(None, environ={"DOCKYARD_LIMITS_MAX_MANIFEST_BYTES": str(size)})


def test_max_manifest_bytes_minimum_is_accepted() -> None:
    s = load(None, environ={"DOCKYARD_LIMITS_MAX_MANIFEST_BYTES": str(4 * 1024 * 1024)})
    assert s.limits.max_manifest_bytes == 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"DOCKYARD_SERVER_PORT": "65536"}, "server.port"),
        ({"DOCKYARD_SERVER_PORT": "-1"}, "server.port"),
        ({"DOCKYARD_SERVER_WORKERS": "0"}, "server.workers"),
        ({"DOCKYARD_DATABASE_THREADS": "0"}, "database.threads"),
        ({"DOCKYARD_LIMITS_DEFAULT_PAGE_SIZE": "0"}, "limits.default_page_size"),
        ({"DOCKYARD_LIMITS_DEFAULT_PAGE_SIZE": "20001"}, "limits.default_page_size"),
        ({"DOCKYARD_EVENTS_PULL_BUFFER": "0"}, "events.pull_buffer"),
        ({"DOCKYARD_LOG_LEVEL": "verbose"}, "log.level"),
        ({"DOCKYARD_SERVER_MAX_HEADERS": "0"}, "server.max_headers"),
        ({"DOCKYARD_SERVER_MIN_BODY_RATE": "-1"}, "server.min_body_rate"),
        ({"DOCKYARD_SERVER_BODY_RATE_WINDOW": "0.5"}, "server.body_rate_window"),
        ({"DOCKYARD_SERVER_BODY_TIMEOUT": "-1"}, "server.body_timeout"),
    ],
)
def test_out_of_range_values(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(None, environ=environ)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "absent.toml", environ={})


@pytest.mark.parametrize(
    "content", [b"[server\nport = 1", b"port = = 1", b'[server]\nhost = "\xff"\n']
)
def test_unreadable_toml(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load(path, environ={})


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load(tmp_path, environ={})


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, ""), environ={}) == Settings()


def test_as_dict_covers_every_section() -> None:
    d = as_dict(load(None, environ={"DOCKYARD_SERVER_PORT": "5001"}))
    assert d["server"]["port"] == 5001
    assert set(d) == {f.name for f in dataclasses.fields(Settings)}


def test_loads_are_independent(tmp_path: Path) -> None:
    # No shared mutable defaults: one load's settings never leak into the next.
    first = load(None, environ={"DOCKYARD_SERVER_PORT": "5001"})
    second = load(None, environ={})
    assert first.server.port == 5001
    assert second.server.port == 5000


@pytest.mark.parametrize(
    ("var", "value", "key"),
    [
        ("DOCKYARD_GC_GRACE_PERIOD", "-1", "gc.grace_period"),
        ("DOCKYARD_GC_GRACE_PERIOD", "nan", "gc.grace_period"),
        ("DOCKYARD_GC_INTERVAL", "0.5", "gc.interval"),
        ("DOCKYARD_GC_INTERVAL", "-60", "gc.interval"),
        ("DOCKYARD_GC_BATCH_SIZE", "0", "gc.batch_size"),
        ("DOCKYARD_GC_LEASE_SECONDS", "1", "gc.lease_seconds"),
    ],
)
def test_gc_settings_are_checked(var: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(None, environ={var: value})


def test_gc_settings_accepted() -> None:
    s = load(None, environ={"DOCKYARD_GC_GRACE_PERIOD": "0", "DOCKYARD_GC_INTERVAL": "600"})
    assert (s.gc.grace_period, s.gc.interval, s.gc.batch_size) == (0.0, 600.0, 500)
