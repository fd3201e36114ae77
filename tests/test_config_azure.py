"""``[storage.azure]``: the file table, DOCKYARD_STORAGE_AZURE_* variables, the checks made
when the driver is chosen, and credentials kept out of reprs and ``config check``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dockyard.config import ConfigError, as_dict, load
from dockyard.services import build_storage
from dockyard.storage.azure import AzureStore


def key() -> str:
    return base64.b64encode(os.urandom(64)).decode()


def azure_env(**fields: str) -> dict[str, str]:
    env = {"DOCKYARD_STORAGE_DRIVER": "azure"}
    env.update({f"DOCKYARD_STORAGE_AZURE_{name.upper()}": value for name, value in fields.items()})
    return env


def test_file_table(tmp_path: Path) -> None:
    secret = key()
    path = tmp_path / "dockyard.toml"
    path.write_text(
        f"""
        [storage]
        driver = "azure"

        [storage.azure]
        account_name = "registryacct"
        account_key = "{secret}"
        container = "images"
        prefix = "dockyard/"
        endpoint = "http://127.0.0.1:10000/registryacct"
        """
    )
    s = load(path, environ={})
    a = s.storage.azure
    assert (a.account_name, a.account_key, a.container) == ("registryacct", secret, "images")
    assert (a.prefix, a.endpoint) == ("dockyard/", "http://127.0.0.1:10000/registryacct")
    assert secret not in repr(s)


def test_environment_variables() -> None:
    secret = key()
    s = load(None, environ=azure_env(account_name="acct123", account_key=secret, container="c-1"))
    assert s.storage.driver == "azure"
    assert s.storage.azure.account_name == "acct123"
    assert s.storage.azure.account_key == secret
    assert s.storage.azure.container == "c-1"


def test_not_checked_unless_chosen() -> None:
    s = load(None, environ={"DOCKYARD_STORAGE_AZURE_CONTAINER": "NOT valid"})
    assert s.storage.driver == "filesystem"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"account_name": "acct123", "account_key": "k"}, r"storage\.azure\.container"),
        ({"container": "Bad_Name", "account_key": "k"}, r"storage\.azure\.container"),
        ({"container": "ab", "account_key": "k"}, r"storage\.azure\.container"),
        ({"container": "a--b", "account_key": "k"}, r"storage\.azure\.container"),
        ({"container": "ct1", "account_name": "acct123"}, "exactly one of account_key"),
        (
            {"container": "ct1", "account_name": "acct123", "account_key": "KEY", "sas_token": "x"},
            "exactly one of account_key",
        ),
        ({"container": "ct1", "account_name": "acct123", "account_key": "not base64!"}, "base64"),
        ({"container": "ct1", "account_name": "Acct", "account_key": "KEY"}, "account_name"),
        ({"container": "ct1", "account_key": "KEY"}, "account_name"),
        ({"container": "ct1", "account_name": "acct123", "sas_token": "sv=1"}, "sas_token"),
        ({"container": "ct1", "connection_string": "garbage"}, "Name=value"),
        ({"container": "ct1", "connection_string": "Foo=bar"}, "AccountName"),
        (
            {"container": "ct1", "account_name": "acct1", "connection_string": "AccountName=a"},
            "leave account_name",
        ),
        (
            {"container": "ct1", "account_name": "acct123", "account_key": "KEY", "endpoint": "x"},
            r"storage\.azure\.endpoint",
        ),
        (
            {
                "container": "ct1",
                "account_name": "acct123",
                "account_key": "KEY",
                "endpoint": "http://127.0.0.1:1/a?sig=x",
            },
            r"storage\.azure\.endpoint",
        ),
        (
            {"container": "ct1", "account_name": "acct123", "account_key": "KEY", "prefix": "a//b"},
            r"storage\.azure\.prefix",
        ),
        (
            {"container": "ct1", "account_name": "acct123", "account_key": "KEY", "prefix": "../x"},
            r"storage\.azure\.prefix",
        ),
    ],
)
def test_invalid(fields: dict[str, str], message: str) -> None:
    real = key()
    fields = {name: real if value == "KEY" else value for name, value in fields.items()}
    with pytest.raises(ConfigError, match=message) as caught:
        load(None, environ=azure_env(**fields))
    assert real not in str(caught.value)


def test_valid_credentials() -> None:
    sas = "sv=2024-08-04&sr=c&sp=racwdl&sig=abc%3D"
    connection = f"AccountName=acct123;AccountKey={key()};BlobEndpoint=http://127.0.0.1:1/a"
    for fields in (
        {"account_name": "acct123", "account_key": key()},
        {"account_name": "acct123", "sas_token": "?" + sas},
        {"connection_string": connection},
    ):
        assert load(None, environ=azure_env(container="ct1", **fields)).storage.driver == "azure"


def test_build_storage_picks_the_driver() -> None:
    secret = key()
    env = azure_env(account_name="acct123", account_key=secret, container="ct1", prefix="p")
    store = build_storage(load(None, environ=env))
    assert isinstance(store, AzureStore)
    assert (store.container, store.prefix) == ("ct1", "p/")
    assert secret not in repr(store)


def test_sdk_not_imported_by_other_drivers() -> None:
    code = (
        "import sys; from dockyard.config import load; from dockyard.services import "
        "build_storage; build_storage(load(None, environ={'DOCKYARD_STORAGE_DRIVER': 'memory'}));"
        "print(any(m.startswith('azure') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert done.stdout.strip() == b"False"


def test_redacted_in_as_dict_and_config_check(tmp_path: Path) -> None:
    secret = key()
    env = azure_env(account_name="acct123", account_key=secret, container="ct1")
    redacted = as_dict(load(None, environ=env), redact=True)["storage"]["azure"]
    assert redacted["account_key"] == "<redacted>"
    assert redacted["account_name"] == "acct123"
    done = subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "config", "check"],
        env={**os.environ, **env},
        capture_output=True,
        check=True,
    )
    assert secret.encode() not in done.stdout + done.stderr
    assert json.loads(done.stdout)["storage"]["azure"]["account_key"] == "<redacted>"
