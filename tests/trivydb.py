"""A trivy vulnerability database with made-up advisories, and the OCI artifact trivy
downloads it as (``--db-repository HOST:PORT/REPO``), pushed to a registry the test runs.

No real database can be downloaded here, and a real one would change under the tests.
This one is schema version 2, the layout trivy-db writes (pkg/db of aquasecurity/trivy-db):

- ``trivy.db``, a BoltDB file:
  - a bucket per data source and release, e.g. ``alpine 3.22``, holding a bucket per
    (source) package name, holding vulnerability id -> JSON advisory ``{"FixedVersion":
    ...}``;
  - ``vulnerability``: vulnerability id -> JSON details (Title, Description, Severity);
  - ``data-source``: ``alpine 3.22`` -> JSON ``{"ID", "Name", "URL"}``;
- ``metadata.json``: ``{"Version": 2, "NextUpdate", "UpdatedAt", "DownloadedAt"}``.

The BoltDB file is written with PyPI ``boltdb`` (a Python port of Bolt). That port leaves
the meta pages' checksum at zero, which Bolt's Go implementation (bbolt, what trivy links)
rejects ("checksum error"): ``write_trivy_db`` fills it in afterwards (FNV-1a 64 of the
meta fields before the checksum, as bbolt computes it). Everything else the port writes
bbolt reads as is.

The artifact: an OCI manifest (artifactType ``application/vnd.aquasec.trivy.config.v1+json``)
whose one layer, media type ``application/vnd.aquasec.trivy.db.layer.v1.tar+gzip``, is a
tar.gz of ``trivy.db`` and ``metadata.json``; tag ``2`` (the schema version).

The made-up advisories hit the packages of tests/scanimages.py; ``ADVISORIES`` is the
first database version, ``ADVISORIES_V2`` the second (one advisory more), for the rescan
tests.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from boltdb import BoltDB

from tests.imagegen import canonical_json, sha256

DB_LAYER_MEDIA_TYPE = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
DB_ARTIFACT_TYPE = "application/vnd.aquasec.trivy.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
DB_TAG = "2"  # trivy asks for the tag of its schema version

# The release trivy finds in tests/scanimages.py's images (etc/alpine-release 3.22.x).
ALPINE_RELEASE = "3.22"


@dataclass(frozen=True, slots=True)
class Advisory:
    id: str
    package: str  # the apk origin (source package) name
    fixed: str
    severity: str
    title: str


ADVISORIES: tuple[Advisory, ...] = (
    Advisory("CVE-2099-10001", "musl", "1.2.5-r1", "CRITICAL", "musl: made-up overflow"),
    Advisory("CVE-2099-10002", "zlib", "1.3.1-r2", "HIGH", "zlib: made-up inflate bug"),
    Advisory("CVE-2099-10003", "busybox", "1.37.0-r9", "LOW", "busybox: made-up wget bug"),
    # Fixed in exactly the installed version: trivy must not report it.
    Advisory("CVE-2099-10004", "busybox", "1.37.0-r5", "MEDIUM", "busybox: fixed already"),
)
# The second database version: one advisory more (the queue's rescan test).
ADVISORIES_V2: tuple[Advisory, ...] = (
    *ADVISORIES,
    Advisory("CVE-2099-10005", "zlib", "1.3.1-r3", "MEDIUM", "zlib: made-up second bug"),
)

# bbolt's meta page: page header (id u64, flags u16, count u16, overflow u32), then magic,
# version, pageSize, flags (u32 each), root bucket (pgid u64, sequence u64), freelist,
# pgid, txid, checksum (u64 each). The checksum covers the meta fields before it.
_PAGE_HEADER = 16
_META_BEFORE_CHECKSUM = 56


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _fill_meta_checksums(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page_size = struct.unpack_from("<I", data, _PAGE_HEADER + 8)[0]
    for page in (0, 1):
        start = page * page_size + _PAGE_HEADER
        checksum = _fnv1a64(bytes(data[start : start + _META_BEFORE_CHECKSUM]))
        struct.pack_into("<Q", data, start + _META_BEFORE_CHECKSUM, checksum)
    path.write_bytes(bytes(data))


def write_trivy_db(
    directory: Path, advisories: tuple[Advisory, ...], updated: datetime | None = None
) -> Path:
    """``trivy.db`` and ``metadata.json`` in ``directory`` (returned)."""
    directory.mkdir(parents=True, exist_ok=True)
    db_path = directory / "trivy.db"
    db_path.unlink(missing_ok=True)
    source = f"alpine {ALPINE_RELEASE}".encode()
    db = BoltDB(str(db_path))
    try:
        with db.update() as tx:
            data_sources = tx.create_bucket(b"data-source")
            data_sources.put(
                source,
                json.dumps(
                    {
                        "ID": "alpine",
                        "Name": "Made-up Alpine advisories",
                        "URL": "https://a.invalid",
                    }
                ).encode(),
            )
            details = tx.create_bucket(b"vulnerability")
            release = tx.create_bucket(source)
            for package in sorted({a.package for a in advisories}):
                bucket = release.create_bucket(package.encode())
                for a in advisories:
                    if a.package == package:
                        bucket.put(a.id.encode(), json.dumps({"FixedVersion": a.fixed}).encode())
            for a in advisories:
                details.put(
                    a.id.encode(),
                    json.dumps(
                        {"Title": a.title, "Description": a.title, "Severity": a.severity}
                    ).encode(),
                )
    finally:
        db.close()
        # The port's __del__ closes the file descriptor again, which by then may be
        # another file's (a socket's): make that second close do nothing.
        db.close = lambda: None
    _fill_meta_checksums(db_path)
    updated = updated or datetime.now(UTC)
    stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
    metadata = {
        "Version": 2,
        # Far ahead: a trivy that finds this database never tries to replace it itself.
        "NextUpdate": (updated + timedelta(days=3650)).strftime(stamp),
        "UpdatedAt": updated.strftime(stamp),
        "DownloadedAt": updated.strftime(stamp),
    }
    (directory / "metadata.json").write_text(json.dumps(metadata))
    return directory


def db_layer(advisories: tuple[Advisory, ...], updated: datetime | None = None) -> bytes:
    """The tar.gz layer trivy downloads: ``trivy.db`` and ``metadata.json``."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_trivy_db(Path(tmp), advisories, updated)
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for name in ("trivy.db", "metadata.json"):
                tar.add(directory / name, arcname=name)
        return gzip.compress(raw.getvalue(), mtime=0)


async def push_blob(client: httpx.AsyncClient, base: str, repository: str, data: bytes) -> str:
    """Upload ``data`` (POST then PUT with the digest); its digest."""
    digest = sha256(data)
    started = await client.post(f"{base}/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["location"]
    if location.startswith("/"):
        location = base + location
    done = await client.put(
        location,
        params={"digest": digest},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return digest


async def push_trivy_db(
    client: httpx.AsyncClient,
    base: str,
    repository: str,
    advisories: tuple[Advisory, ...] = ADVISORIES,
    updated: datetime | None = None,
) -> str:
    """Push the database artifact to ``base`` (``http://host:port``) as
    ``repository:2``; the manifest's digest."""
    layer = db_layer(advisories, updated)
    config = b"{}"
    await push_blob(client, base, repository, config)
    await push_blob(client, base, repository, layer)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": DB_ARTIFACT_TYPE,
            "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": sha256(config), "size": 2},
            "layers": [
                {
                    "mediaType": DB_LAYER_MEDIA_TYPE,
                    "digest": sha256(layer),
                    "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": "db.tar.gz"},
                }
            ],
        }
    )
    put = await client.put(
        f"{base}/v2/{repository}/manifests/{DB_TAG}",
        content=manifest,
        headers={"content-type": OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    return sha256(manifest)
