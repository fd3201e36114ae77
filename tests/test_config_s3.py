"""The [storage.s3] settings: loading from file and environment, checks, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.config import ConfigError, as_dict, load
from dockyard.services import build_storage
from dockyard.storage.s3 import S3Store

S3_ENV = {
    "DOCKYARD_STORAGE_DRIVER": "s3",
    "DOCKYARD_STORAGE_S3_BUCKET": "registry",
    "DOCKYARD_STORAGE_S3_ENDPOINT": "http://127.0.0.1:8333",
}


def test_file_and_environment(tmp_path: Path) -> None:
    conf = tmp_path / "dockyard.toml"
    conf.write_text(
        '[storage]\ndriver = "s3"\n[storage.s3]\nbucket = "from-file"\nregion = "eu-west-1"\n'
        'access_key = "AKFILE"\nsecret_key = "file-secret"\npath_style = true\n'
    )
    settings = load(
        conf, {"DOCKYARD_STORAGE_S3_BUCKET": "from-env", "DOCKYARD_STORAGE_S3_REDIRECT": "1"}
    )
    s3 = settings.storage.s3
    assert (s3.bucket, s3.region, s3.access_key, s3.path_style, s3.redirect) == (
        "from-env",
        "eu-west-1",
        "AKFILE",
        True,
        True,
    )
    assert "file-secret" not in repr(settings)
    shown = as_dict(settings, redact=True)["storage"]["s3"]
    assert shown["secret_key"] == "<redacted>" and shown["access_key"] == "AKFILE"
    store = build_storage(settings)
    assert isinstance(store, S3Store) and store.bucket == "from-env"
    assert "file-secret" not in repr(store)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"DOCKYARD_STORAGE_S3_BUCKET": ""}, "storage.s3.bucket"),
        ({"DOCKYARD_STORAGE_S3_ENDPOINT": "ftp://x"}, "storage.s3.endpoint"),
        ({"DOCKYARD_STORAGE_S3_ACCESS_KEY": "AKONLY"}, "storage.s3.access_key"),
        ({"DOCKYARD_STORAGE_S3_SSE": "DES"}, "storage.s3.sse"),
        ({"DOCKYARD_STORAGE_S3_SSE_KMS_KEY_ID": "k"}, "storage.s3.sse_kms_key_id"),
        ({"DOCKYARD_STORAGE_S3_PART_SIZE": "1024"}, "storage.s3.part_size"),
        ({"DOCKYARD_STORAGE_S3_MAX_ATTEMPTS": "0"}, "storage.s3.max_attempts"),
        ({"DOCKYARD_STORAGE_S3_CA_BUNDLE": "/nonexistent/ca.pem"}, "storage.s3.ca_bundle"),
        ({"DOCKYARD_STORAGE_S3_BUKET": "typo"}, "s3.buket"),
    ],
)
def test_bad_settings_name_the_key(extra: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(None, {**S3_ENV, **extra})


def test_s3_table_is_not_checked_for_other_drivers() -> None:
    settings = load(None, {"DOCKYARD_STORAGE_S3_SSE": "DES"})
    assert settings.storage.driver == "filesystem"
