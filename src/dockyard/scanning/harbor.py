"""A client of Harbor's Pluggable Scanner API v1.2 (``[scanning.harbor]``): any adapter
(Harbor's Trivy adapter, Clair's, dockyard's own ``dockyard scanner-adapter``) scans an
image that the adapter pulls from dockyard itself.

One scan::

    GET  <url>/api/v1/metadata         once per client (again after a failure): the
                                       scanner's name and version, that it consumes
                                       image manifests and produces REPORT_TYPE (or its
                                       1.0 name, the same schema, for older adapters), the
                                       database date (properties)
    POST <url>/api/v1/scan             ScanRequest {registry {url, authorization},
                                       artifact {repository, digest, mime_type}} -> 202 {id}
    GET  <url>/api/v1/scan/<id>/report Accept: REPORT_TYPE -> 302 Refresh-After: <s> while
                                       it runs (polled within the scan timeout), 200 report
    GET  ...?sbom_media_type=<CycloneDX> Accept: SBOM_REPORT_TYPE: the SBOM, when the
                                       request asks for one and the adapter has an "sbom"
                                       capability (enabled in the ScanRequest)

The registry authorization is ``Basic base64(user:password)`` of the request's short-lived
pull credential (none for anonymous pulls); the adapter itself is sent
``[scanning.harbor] authorization`` (e.g. ``Bearer <token>``).

Failures, as ``ScanFailed`` reasons: the adapter cannot be reached, refuses the
authorization, or answers 502/503/504: "unavailable" (503's Retry-After kept); any other
5xx: "crashed" (or the reason an ErrorResponse message starts with, "database: ...", as
dockyard's adapter writes them); 404 (a scan the adapter forgot: restarted): "unavailable";
400/422/501 or an adapter that does not consume the manifest's media type: "unsupported";
no report within the timeout: "timeout".
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
from datetime import datetime
from typing import Any

import anyio
import httpx

from dockyard import __version__
from dockyard.config import SEVERITIES, HarborScannerSettings
from dockyard.scanning.scanner import REASONS, Finding, ScanFailed, ScanRequest, ScanResult

API = "/api/v1"
REPORT_TYPE = "application/vnd.security.vulnerability.report; version=1.1"
# The older name of the same report schema (Harbor's Trivy adapter still offers both).
REPORT_TYPE_1_0 = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
RAW_REPORT_TYPE = "application/vnd.scanner.adapter.vuln.report.raw"
# The report as the referrer's layer: OCI descriptors allow no media type parameters
# ("; version=1.1"), so the 1.0 name without its parameter (the schema is the same).
REPORT_LAYER_TYPE = "application/vnd.scanner.adapter.vuln.report.harbor+json"
SBOM_REPORT_TYPE = "application/vnd.security.sbom.report+json; version=1.0"
CYCLONEDX = "application/vnd.cyclonedx+json"
METADATA_TYPE = "application/vnd.scanner.adapter.metadata+json; version=1.1"
SCAN_REQUEST_TYPE = "application/vnd.scanner.adapter.scan.request+json; version=1.1"
SCAN_RESPONSE_TYPE = "application/vnd.scanner.adapter.scan.response+json; version=1.0"
ERROR_TYPE = "application/vnd.scanner.adapter.error+json; version=1.0"
DB_UPDATED_PROPERTY = "harbor.scanner-adapter/vulnerability-database-updated-at"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
# Harbor's severity names -> dockyard's (Negligible is below Low: counted as LOW).
SEVERITY_NAMES = {
    "unknown": "UNKNOWN",
    "negligible": "LOW",
    "low": "LOW",
    "medium": "MEDIUM",
    "high": "HIGH",
    "critical": "CRITICAL",
}
# Bounds on what an adapter may send: a report of many thousands of findings fits.
MAX_REPORT_BYTES = 64 * 1024 * 1024
MAX_POLL_WAIT = 60.0


def harbor_severity(severity: str) -> str:
    """dockyard's severity name -> Harbor's ("HIGH" -> "High")."""
    return severity.capitalize() if severity in SEVERITIES else "Unknown"


def parse_time(value: Any) -> float | None:
    """An RFC 3339 time -> seconds since the epoch (None when absent or unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def findings_of(report: Any) -> tuple[Finding, ...]:
    """The findings of a HarborVulnerabilityReport (``vulnerabilities``), sorted."""
    items = report.get("vulnerabilities") if isinstance(report, dict) else None
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ValueError("vulnerabilities is not a list")
    found: set[Finding] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ValueError(f"a vulnerability without an id: {item!r:.200}")
        severity = SEVERITY_NAMES.get(str(item.get("severity", "")).lower(), "UNKNOWN")
        found.add(
            Finding(
                id=item["id"],
                severity=severity,
                package=str(item.get("package") or ""),
                installed=str(item.get("version") or ""),
                fixed=str(item.get("fix_version") or ""),
                title=str(item.get("description") or "")[:1000],
            )
        )
    return tuple(sorted(found, key=lambda f: (f.package, f.id, f.installed)))


def _error_message(r: httpx.Response) -> str:
    """An ErrorResponse's message, else the start of the body."""
    try:
        message = r.json()["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return r.text[:200] or r.reason_phrase


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(0.0, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def failure(r: httpx.Response, what: str) -> ScanFailed:
    """The ScanFailed an error answer means."""
    message = _error_message(r)
    text = f"{what}: {r.status_code} {message}"
    if r.status_code in (400, 415, 422, 501):
        return ScanFailed("unsupported", text)
    if r.status_code == 404:
        # A scan the adapter forgot (restarted, or the report expired) or a wrong URL:
        # worth another try, unlike a request the adapter cannot serve.
        return ScanFailed("unavailable", f"{text} (adapter restarted, or a wrong url?)")
    if r.status_code in (401, 403):
        return ScanFailed("unavailable", f"{what}: the adapter refused the authorization")
    if r.status_code in (502, 503, 504, 429):
        return ScanFailed("unavailable", text, _retry_after(r))
    reason, _, _ = message.partition(":")
    return ScanFailed(reason if reason in REASONS else "crashed", text)


def _basic(request: ScanRequest) -> str:
    """``Basic base64(user:password)`` of the request's pull credential ("" if none)."""
    if request.username is None or request.password is None:
        return ""
    pair = f"{request.username}:{request.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


class HarborScanner:
    """``Scanner`` "harbor": scans through an adapter of Harbor's scanner API."""

    name = "harbor"

    def __init__(
        self,
        settings: HarborScannerSettings,
        *,
        timeout: float = 600.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not settings.url:
            raise ValueError("scanning.harbor.url is empty")
        self.settings = settings
        self.timeout = timeout
        self._base = settings.url.rstrip("/") + API
        headers = {"User-Agent": f"dockyard/{__version__}"}
        if settings.authorization:
            headers["Authorization"] = settings.authorization
        verify: bool | str = settings.ca_bundle or settings.verify_tls
        self._http = http or httpx.AsyncClient(
            headers=headers, verify=verify, timeout=httpx.Timeout(30.0)
        )
        self._metadata: dict[str, Any] | None = None
        self.report_type = REPORT_TYPE  # what the adapter's metadata offers
        self.sbom = False  # whether it makes CycloneDX SBOMs (an "sbom" capability)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str, accept: str) -> httpx.Response:
        try:
            return await self._http.get(self._base + path, headers={"Accept": accept})
        except httpx.HTTPError as e:
            raise ScanFailed("unavailable", f"GET {self._base}{path}: {e!r}") from None

    async def metadata(self, refresh: bool = False) -> dict[str, Any]:
        """The adapter's metadata, checked: it scans image manifests into REPORT_TYPE (or
        REPORT_TYPE_1_0, the same schema: adapters made for Harbor 1.x offer only that)."""
        if self._metadata is not None and not refresh:
            return self._metadata
        r = await self._get("/metadata", f"{METADATA_TYPE}, application/json")
        if r.status_code != 200:
            raise failure(r, "metadata")
        try:
            doc: dict[str, Any] = r.json()
            capabilities = doc["capabilities"]
            scanner = doc["scanner"]
            assert isinstance(capabilities, list) and isinstance(scanner, dict)
        except (ValueError, KeyError, AssertionError):
            raise ScanFailed(
                "crashed", f"metadata: not a ScannerAdapterMetadata: {r.text:.200}"
            ) from None
        vulnerability = [
            c
            for c in capabilities
            if isinstance(c, dict) and c.get("type", "vulnerability") == "vulnerability"
        ]
        produced = {t for c in vulnerability for t in c.get("produces_mime_types", [])}
        for report_type in (REPORT_TYPE, REPORT_TYPE_1_0):
            if report_type in produced:
                self.report_type = report_type
                break
        else:
            raise ScanFailed("unsupported", f"the adapter does not produce {REPORT_TYPE}")
        self.sbom = any(
            isinstance(c, dict)
            and c.get("type") == "sbom"
            and SBOM_REPORT_TYPE in c.get("produces_mime_types", [])
            and CYCLONEDX
            in ((c.get("additional_attributes") or {}).get("sbom_media_types") or [CYCLONEDX])
            for c in capabilities
        )
        self._metadata = doc
        return self._metadata

    def _consumes(self, metadata: dict[str, Any], media_type: str) -> bool:
        return any(
            media_type in c.get("consumes_mime_types", [])
            for c in metadata["capabilities"]
            if isinstance(c, dict) and c.get("type", "vulnerability") == "vulnerability"
        )

    async def database_version(self) -> str | None:
        """The adapter's database date (its metadata property), asked again each time."""
        try:
            metadata = await self.metadata(refresh=True)
        except ScanFailed:
            return None
        value = (metadata.get("properties") or {}).get(DB_UPDATED_PROPERTY)
        return value if isinstance(value, str) and value else None

    async def _media_type(self, request: ScanRequest) -> str:
        """The manifest's media type, from a HEAD to dockyard (the adapter wants it); the
        OCI image manifest's when dockyard does not say (a token challenge, say)."""
        scheme = "http" if request.insecure else "https"
        url = f"{scheme}://{request.registry}/v2/{request.repository}/manifests/{request.digest}"
        # Every manifest type: an index must say it is one (the adapter is not asked).
        headers = {"Accept": ", ".join((*IMAGE_MANIFEST_TYPES, *INDEX_TYPES))}
        authorization = _basic(request)
        if authorization:
            headers["Authorization"] = authorization
        try:
            async with httpx.AsyncClient(timeout=30.0) as client:
                r = await client.head(url, headers=headers)
        except httpx.HTTPError:
            return OCI_MANIFEST
        media_type = r.headers.get("content-type", "").split(";")[0].strip()
        return media_type if r.status_code == 200 and media_type else OCI_MANIFEST

    def _scan_request(self, request: ScanRequest, media_type: str) -> dict[str, Any]:
        scheme = "http" if request.insecure else "https"
        registry: dict[str, str] = {"url": f"{scheme}://{request.registry}"}
        authorization = _basic(request)
        if authorization:
            registry["authorization"] = authorization
        return {
            "registry": registry,
            "artifact": {
                "repository": request.repository,
                "digest": request.digest,
                "mime_type": media_type,
            },
            "enabled_capabilities": [
                {"type": "vulnerability", "produces_mime_types": [self.report_type]},
                *(
                    [
                        {
                            "type": "sbom",
                            "produces_mime_types": [SBOM_REPORT_TYPE],
                            "parameters": {"sbom_media_types": [CYCLONEDX]},
                        }
                    ]
                    if request.sbom and self.sbom
                    else []
                ),
            ],
        }

    async def scan(self, request: ScanRequest) -> ScanResult:
        with anyio.move_on_after(self.timeout) as scope:
            return await self._scan(request)
        assert scope.cancelled_caught
        raise ScanFailed("timeout", f"no report from {self._base} within {self.timeout:g}s")

    async def _scan(self, request: ScanRequest) -> ScanResult:
        try:
            metadata = await self.metadata()
        except ScanFailed:
            self._metadata = None
            raise
        media_type = await self._media_type(request)
        if not self._consumes(metadata, media_type):
            raise ScanFailed("unsupported", f"the adapter does not scan {media_type}")
        try:
            r = await self._http.post(
                self._base + "/scan",
                content=json.dumps(self._scan_request(request, media_type)),
                headers={"Content-Type": SCAN_REQUEST_TYPE, "Accept": SCAN_RESPONSE_TYPE},
            )
        except httpx.HTTPError as e:
            self._metadata = None  # an adapter restarted elsewhere may be another one
            raise ScanFailed("unavailable", f"POST {self._base}/scan: {e!r}") from None
        if r.status_code != 202:
            raise failure(r, "scan")
        try:
            scan_id = r.json()["id"]
            assert isinstance(scan_id, str) and scan_id and "/" not in scan_id
        except (ValueError, KeyError, TypeError, AssertionError):
            raise ScanFailed("crashed", f"scan: not a ScanResponse: {r.text:.200}") from None
        report, body = await self._poll(scan_id, self.report_type)
        sbom = None
        if request.sbom and self.sbom:
            sbom_report, _ = await self._poll(
                scan_id, SBOM_REPORT_TYPE, {"sbom_media_type": CYCLONEDX}
            )
            if not isinstance(sbom_report.get("sbom"), dict):
                raise ScanFailed("crashed", "SBOM report: no sbom document")
            sbom = json.dumps(sbom_report["sbom"]).encode()
        # The database date now (the adapter may have updated it for this scan).
        with contextlib.suppress(ScanFailed):
            metadata = await self.metadata(refresh=True)
        result = self._result(metadata, report, body)
        if sbom is None:
            return result
        return dataclasses.replace(result, sbom=sbom, sbom_media_type=CYCLONEDX)

    async def _poll(
        self, scan_id: str, accept: str, params: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], bytes]:
        """The report of type ``accept`` once ready (302 Refresh-After until then)."""
        path = f"/scan/{scan_id}/report"
        while True:
            try:
                async with self._http.stream(
                    "GET", self._base + path, headers={"Accept": accept}, params=params
                ) as r:
                    if r.status_code == 302:
                        wait = self._refresh_after(r)
                    elif r.status_code == 200:
                        body = b""
                        async for chunk in r.aiter_bytes():
                            body += chunk
                            if len(body) > MAX_REPORT_BYTES:
                                raise ScanFailed(
                                    "crashed", f"report: over {MAX_REPORT_BYTES} bytes"
                                )
                        break
                    else:
                        await r.aread()
                        raise failure(r, "report")
            except httpx.HTTPError as e:
                raise ScanFailed("unavailable", f"GET {self._base}{path}: {e!r}") from None
            await anyio.sleep(wait)
        try:
            report = json.loads(body)
            assert isinstance(report, dict)
        except (ValueError, AssertionError):
            raise ScanFailed("crashed", f"report: not JSON: {body[:200]!r}") from None
        return report, body

    def _refresh_after(self, r: httpx.Response) -> float:
        try:
            wait = float(r.headers["refresh-after"])
        except (KeyError, ValueError):
            return self.settings.poll_interval
        return min(max(wait, 0.05), MAX_POLL_WAIT) if math.isfinite(wait) else MAX_POLL_WAIT

    def _result(self, metadata: dict[str, Any], report: dict[str, Any], body: bytes) -> ScanResult:
        try:
            findings = findings_of(report)
        except ValueError as e:
            raise ScanFailed("crashed", f"report: {e}") from None
        # The report names the scanner that made it; the metadata, the adapter's default.
        scanner = report.get("scanner") if isinstance(report.get("scanner"), dict) else None
        scanner = scanner or metadata["scanner"]
        name = " ".join(
            str(scanner[k]) for k in ("name", "version") if isinstance(scanner.get(k), str)
        )
        db = (metadata.get("properties") or {}).get(DB_UPDATED_PROPERTY)
        return ScanResult(
            scanner=name or "harbor adapter",
            db_version=db if isinstance(db, str) and db else None,
            db_updated=parse_time(db),
            findings=findings,
            report=body,
            report_media_type=REPORT_LAYER_TYPE,
        )
