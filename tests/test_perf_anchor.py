"""perf/ chooses the Distribution it compares against: ``DOCKYARD_PERF_DISTRIBUTION``'s
binary (CNCF Distribution 3.1.1 built from source, ``perf/README.md``) or Debian's 2.8.2.

These tests need no 3.1.1 binary: the variable's path is Debian's docker-registry (a real
Distribution binary started from the path given), and the 3.x-specific pieces are pure
functions checked on the version strings the two binaries print.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from perf.httpclient import Connection
from perf.profile_serve import part_of, short_frame, summarize
from perf.run import distribution_note
from perf.servers import (
    DISTRIBUTION_ENV,
    Distribution,
    distribution_binary,
    distribution_config,
    distribution_env,
    distribution_version,
    version_tuple,
)

from tests.distribution import require_distribution

# What `registry --version` of the 3.1.1 build (perf/README.md) prints.
V311 = "registry github.com/distribution/distribution/v3 v3.1.1"


def test_without_the_variable_debians_docker_registry_is_used() -> None:
    debian = require_distribution()
    assert distribution_binary({}, install=False) == debian
    assert distribution_binary({DISTRIBUTION_ENV: ""}, install=False) == debian


def test_the_variable_names_the_binary(tmp_path: Path) -> None:
    binary = tmp_path / "registry"
    shutil.copy(require_distribution(), binary)
    assert distribution_binary({DISTRIBUTION_ENV: str(binary)}, install=False) == str(binary)


def test_a_wrong_path_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=DISTRIBUTION_ENV):
        distribution_binary({DISTRIBUTION_ENV: str(tmp_path / "missing")}, install=False)
    not_executable = tmp_path / "registry"
    not_executable.write_text("")
    not_executable.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with pytest.raises(FileNotFoundError, match="not an executable"):
        distribution_binary({DISTRIBUTION_ENV: str(not_executable)}, install=False)


def test_versions_are_read_from_both_builds() -> None:
    assert version_tuple(V311) == (3, 1, 1)
    debian = distribution_version(require_distribution())
    assert version_tuple(debian) == (2, 8, 2), debian
    assert version_tuple("no version here") == ()


def test_the_version_line_names_no_directory(tmp_path: Path) -> None:
    binary = tmp_path / "registry-copy"
    shutil.copy(require_distribution(), binary)
    line = distribution_version(str(binary))
    assert line.startswith("registry-copy "), line
    assert str(tmp_path) not in line


def test_3x_gets_no_otlp_exporter_and_28_is_left_alone() -> None:
    env = distribution_env((3, 1, 1), {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "OTEL_TRACES_EXPORTER": "none"}
    # An exporter the user chose is kept.
    assert distribution_env((3, 1, 1), {"OTEL_TRACES_EXPORTER": "otlp"}) == {
        "OTEL_TRACES_EXPORTER": "otlp"
    }
    assert distribution_env((2, 8, 2), {"PATH": "/bin"}) == {"PATH": "/bin"}


def test_config_is_loopback_with_the_root_given(tmp_path: Path) -> None:
    config = distribution_config(tmp_path / "data", 5123)
    assert f"rootdirectory: {tmp_path / 'data'}\n" in config
    assert "addr: 127.0.0.1:5123\n" in config
    assert "disabled: true" in config  # access log off, like dockyard's in perf


def test_started_from_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "registry"
    shutil.copy(require_distribution(), binary)
    monkeypatch.setenv(DISTRIBUTION_ENV, str(binary))
    server = Distribution(install=False)
    assert server.binary == str(binary)
    assert server.version == (2, 8, 2)
    assert server.description.startswith("registry ")
    note = distribution_note(server)
    assert note.startswith(f"Distribution compared against: 2.8.2 (the binary `{DISTRIBUTION_ENV}`")
    assert "OTEL" not in note
    with server:
        assert server.proc is not None
        # The process serving is the binary the variable named.
        assert os.readlink(f"/proc/{server.pid}/exe") == str(binary)
        with Connection("127.0.0.1", server.port, timeout=5) as conn:
            assert conn.request("GET", "/v2/").status == 200
    monkeypatch.delenv(DISTRIBUTION_ENV)
    fallback = Distribution(install=False)
    try:
        assert fallback.binary == require_distribution()
        assert "Debian's docker-registry package" in distribution_note(fallback)
    finally:
        fallback.stop()


def test_samples_are_charged_to_the_innermost_known_part() -> None:
    # py-spy's raw format: frames root first, "function (file:line)", then the count.
    root = "<module> (<string>:1);run (trio/_core/_run.py:2);unrolled_run (trio/_core/_run.py:9)"
    lines = [
        f"{root};handle (hypercorn/protocol/h11.py:5);next_event (h11/_connection.py:7) 3",
        f"{root};app (dockyard/http/asgi.py:1);get (dockyard/core/manifests.py:2);"
        "execute (dockyard/meta/sqlite/store.py:3);fetch (sqlite3/dbapi2.py:4) 2",
        f"{root};app (dockyard/http/asgi.py:1);get (dockyard/core/manifests.py:2);"
        "dumps (json/encoder.py:8) 4",
        f"{root};app (dockyard/http/asgi.py:1);log (dockyard/observability/logs.py:3) 1",
        "run (threading.py:1) 1",
    ]
    text = summarize(lines, 3)
    assert text.startswith("11 samples (non-idle; 0 unreadable")
    assert "| h11 | 27.3% |" in text
    assert "| SQLite (dockyard/meta/sqlite, sqlite3) | 18.2% |" in text
    # json called by registry code is the registry's.
    assert "| dockyard registry logic (handlers, core, meta, storage) | 36.4% |" in text
    assert "| dockyard HTTP middleware/auth/logging | 9.1% |" in text
    assert "| other (interpreter, stdlib not called from the above) | 9.1% |" in text
    assert "| `dumps (json/encoder.py)` | 36.4% |" in text  # own, per function
    # Cumulative leaves out the root chain (in 10 of 11 samples) and keeps the app's.
    cumulative = text.split("by cumulative")[1]
    assert "unrolled_run" not in cumulative
    assert "| `app (dockyard/http/asgi.py)` | 63.6% |" in cumulative
    assert part_of(["handle (hypercorn/trio/tcp_server.py:1)", "x (ssl.py:2)"]) == "hypercorn"


def test_full_file_names_are_cut_to_the_package() -> None:
    assert (
        short_frame("validate (/opt/venv/lib/python3.11/site-packages/h11/_util.py:91)")
        == "validate (h11/_util.py:91)"
    )
    assert (
        short_frame("receive (/home/u/dockyard/src/dockyard/core/stream.py:62)")
        == "receive (dockyard/core/stream.py:62)"
    )
    assert short_frame("select (/usr/lib/python3.11/selectors.py:468)") == (
        "select (selectors.py:468)"
    )
    assert short_frame("app (/tmp/x/trivial_1.py:9)") == "app (trivial_1.py:9)"
    assert short_frame("") == ""
