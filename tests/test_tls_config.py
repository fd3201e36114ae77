"""TLS settings, the start-up checks of ``dockyard serve`` with TLS, and the subject
mapping of client certificates (the e2e tests in tests/e2e/test_tls.py serve for real)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from dockyard.cli import main
from dockyard.config import ConfigError
from dockyard.http.request import certificate_user
from dockyard.http.worker import run_module
from dockyard.tls import check_tls_hook
from tests.conftest import make_settings
from tests.pki import server_files


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    files = server_files(tmp_path / "certs")
    cert, key, ca = str(files.cert), str(files.key), str(files.ca_pem)
    with pytest.raises(ConfigError, match="give both"):
        make_settings(tmp_path, DOCKYARD_TLS_CERT=cert)
    with pytest.raises(ConfigError, match=r"tls\.key: .* is not a readable file"):
        make_settings(tmp_path, DOCKYARD_TLS_CERT=cert, DOCKYARD_TLS_KEY=str(tmp_path / "no"))
    with pytest.raises(ConfigError, match=r"tls\.min_version"):
        make_settings(tmp_path, DOCKYARD_TLS_MIN_VERSION="1.1")
    with pytest.raises(ConfigError, match=r"tls\.client_auth: client certificates need"):
        make_settings(tmp_path, DOCKYARD_TLS_CLIENT_AUTH="required", DOCKYARD_TLS_CLIENT_CA=ca)
    with pytest.raises(ConfigError, match=r"tls\.client_ca"):
        make_settings(
            tmp_path,
            DOCKYARD_TLS_CERT=cert,
            DOCKYARD_TLS_KEY=key,
            DOCKYARD_TLS_CLIENT_AUTH="optional",
        )
    settings = make_settings(
        tmp_path,
        DOCKYARD_TLS_CERT=cert,
        DOCKYARD_TLS_KEY=key,
        DOCKYARD_TLS_CLIENT_AUTH="required",
        DOCKYARD_TLS_CLIENT_CA=ca,
    )
    assert settings.base_url.startswith("https://")


def test_a_key_that_does_not_match_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = server_files(tmp_path / "a"), server_files(tmp_path / "b")
    monkeypatch.setenv("DOCKYARD_TLS_CERT", str(first.cert))
    monkeypatch.setenv("DOCKYARD_TLS_KEY", str(second.key))
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("DOCKYARD_SERVER_PORT", "0")
    assert main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "0"]) == 2
    assert "TLS:" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_installed_hypercorn_has_the_connection_hook(backend: str) -> None:
    check_tls_hook(backend)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_hypercorn_without_it_stops_start_up(
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delattr(run_module(backend), "TCPServer")
    with pytest.raises(RuntimeError, match=f"hypercorn {version('hypercorn')} has no .*TCPServer"):
        check_tls_hook(backend)
    files = server_files(tmp_path / "certs")
    for name, value in {
        "DOCKYARD_SERVER_BACKEND": backend,
        "DOCKYARD_TLS_CERT": str(files.cert),
        "DOCKYARD_TLS_KEY": str(files.key),
        "DOCKYARD_TLS_CLIENT_AUTH": "required",
        "DOCKYARD_TLS_CLIENT_CA": str(files.ca_pem),
        "DOCKYARD_STORAGE_ROOT": str(tmp_path / "data"),
        "DOCKYARD_SERVER_PORT": "0",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--data-dir", str(tmp_path / "data"), "--port", "0"]) == 2
    assert "TCPServer" in capsys.readouterr().err
    assert not (tmp_path / "data" / "dockyard.sqlite3").exists()


def test_certificate_user_by_short_or_long_attribute_name() -> None:
    subject = [["organizationName", "Example"], ["commonName", "alice"], ["userId", "a1"]]
    scope = {"extensions": {"tls": {"dockyard.client_subject": subject}}}
    assert certificate_user(scope, "CN") == "alice"
    assert certificate_user(scope, "commonName") == "alice"
    assert certificate_user(scope, "UID") == "a1"
    assert certificate_user(scope, "emailAddress") is None
    assert certificate_user({"extensions": {}}, "CN") is None
    assert certificate_user({}, "CN") is None
