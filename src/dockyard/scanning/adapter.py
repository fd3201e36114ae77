"""Harbor's Pluggable Scanner API v1.2 served over any ``Scanner`` (``dockyard
scanner-adapter`` serves it over the built-in Trivy runner), so Harbor, or dockyard's
own ``HarborScanner`` in another instance, can scan through it.

Routes (under ``/api/v1``)::

    GET  /metadata             scanner {name, vendor, version}; a "vulnerability"
                               capability: consumes OCI and Docker image manifests,
                               produces REPORT_TYPE (and its 1.0 name) and the scanner's
                               raw report; an "sbom" one (CycloneDX); properties: the
                               database date once known
    POST /scan                 ScanRequest -> 202 {id}; 400 not a ScanRequest (bad
                               JSON, wrong types); 422 a field it cannot use (an artifact
                               that is not an image manifest, a malformed digest or
                               registry URL, a Bearer registry authorization); 503 with
                               Retry-After when ``max_pending`` scans are not finished
    GET  /scan/<id>/report     302 Refresh-After while it runs; 200 the report in the
                               type Accept names (default REPORT_TYPE); 404 unknown or
                               expired id; 500 the scan failed ("<reason>: <message>",
                               the ScanFailed reason first); 501 a report type it does
                               not produce
         ?sbom_media_type=...  with Accept SBOM_REPORT_TYPE: the CycloneDX SBOM of a scan
                               whose request enabled the "sbom" capability (else 400)

Every answer but 2xx/302 has an ErrorResponse body ``{"error": {"message": ...}}``.
With ``[scanning.adapter] authorization`` set, a request whose Authorization header is not
exactly that is answered 401.

Scans run in the adapter's own nursery (``serve``), at most ``concurrency`` at once, each
within ``timeout``; every ``database_interval`` seconds the scanner is asked for a newer
vulnerability database (``Scanner.database_version``, what the queue does in dockyard). A
report is kept in memory ``report_ttl`` seconds after its scan ends (a restarted adapter
knows no scan: the client gets 404 and scans again). The registry the request names is
where the scanner pulls from: ``registry.url``'s host and port, plain HTTP when its
scheme is ``http``, and the ``Basic`` credentials of ``registry.authorization``.

A small raw ASGI application rather than a framework app: three routes, and scan tasks
that must live in a nursery the adapter owns, not in a request's.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import trio
from anyio.abc import TaskGroup

from dockyard import __version__
from dockyard.config import SEVERITIES, ScannerAdapterSettings
from dockyard.oci.digest import Digest, DigestError
from dockyard.oci.names import is_valid_name
from dockyard.scanning.harbor import (
    API,
    CYCLONEDX,
    DB_UPDATED_PROPERTY,
    ERROR_TYPE,
    IMAGE_MANIFEST_TYPES,
    METADATA_TYPE,
    RAW_REPORT_TYPE,
    REPORT_TYPE,
    REPORT_TYPE_1_0,
    SBOM_REPORT_TYPE,
    SCAN_RESPONSE_TYPE,
    harbor_severity,
)
from dockyard.scanning.scanner import ScanFailed, Scanner, ScanRequest, ScanResult

log = logging.getLogger("dockyard.scanning.adapter")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_REQUEST_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ScannerIdentity:
    """What metadata says the scanner is, until a scan's result names it exactly."""

    name: str
    vendor: str
    version: str


@dataclass(slots=True)
class Job:
    artifact: dict[str, str]
    request: ScanRequest
    finished: float | None = None  # anyio.current_time() when it ended
    result: ScanResult | None = None
    error: ScanFailed | None = None


class AdapterError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def harbor_report(
    result: ScanResult, artifact: dict[str, str], identity: ScannerIdentity
) -> dict[str, Any]:
    """A ScanResult as a HarborVulnerabilityReport."""
    worst = max(
        (SEVERITIES.index(f.severity) for f in result.findings if f.severity in SEVERITIES),
        default=0,
    )
    return {
        "generated_at": _utc(datetime.now(UTC).timestamp()),
        "artifact": artifact,
        "scanner": {
            "name": identity.name,
            "vendor": identity.vendor,
            "version": identity.version,
        },
        "severity": harbor_severity(SEVERITIES[worst]),
        "vulnerabilities": [
            {
                "id": f.id,
                "package": f.package,
                "version": f.installed,
                "fix_version": f.fixed,
                "severity": harbor_severity(f.severity),
                "description": f.title,
                "links": [],
            }
            for f in result.findings
        ],
    }


def _accepts(header: str) -> list[str]:
    """The media types an Accept header names, parameters normalised ("a; version=1.1")."""
    types = []
    for item in header.split(","):
        parts = [p.strip() for p in item.split(";") if p.strip()]
        # q-values do not matter here: the first type this adapter produces wins.
        parts = [p for p in parts if not p.startswith("q=")]
        if parts:
            types.append("; ".join(parts))
    return types


def _registry_of(value: Any) -> tuple[str, bool, str | None, str | None]:
    """ScanRequest.registry -> (host:port, insecure, username, password)."""
    if not isinstance(value, dict):
        raise AdapterError(400, "registry: expected an object")
    url, authorization = value.get("url"), value.get("authorization", "")
    if not isinstance(url, str) or not isinstance(authorization, str):
        raise AdapterError(400, "registry.url and registry.authorization must be strings")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise AdapterError(422, f"registry.url: not a registry base URL: {url[:200]!r}")
    if parts.username or parts.query or parts.fragment:
        raise AdapterError(422, "registry.url: credentials, query or fragment in the URL")
    if not authorization:
        return parts.netloc, parts.scheme == "http", None, None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise AdapterError(422, "registry.authorization: only Basic credentials are supported")
    try:
        username, colon, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AdapterError(422, "registry.authorization: malformed Basic credentials") from None
    if not colon or not username:
        raise AdapterError(422, "registry.authorization: Basic credentials without user:password")
    return parts.netloc, parts.scheme == "http", username, password


def _artifact_of(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise AdapterError(400, "artifact: expected an object")
    artifact = {k: v for k, v in value.items() if k in ("repository", "digest", "tag", "mime_type")}
    if not all(isinstance(v, str) for v in artifact.values()):
        raise AdapterError(400, "artifact: repository, digest, tag and mime_type are strings")
    repository, digest = artifact.get("repository", ""), artifact.get("digest", "")
    if not is_valid_name(repository):
        raise AdapterError(422, f"artifact.repository: not a repository name: {repository!r:.200}")
    try:
        Digest.parse(digest)
    except DigestError as e:
        raise AdapterError(422, f"artifact.digest: {e}") from None
    mime_type = artifact.get("mime_type") or IMAGE_MANIFEST_TYPES[0]
    if mime_type not in IMAGE_MANIFEST_TYPES:
        raise AdapterError(
            422,
            f"artifact.mime_type: {mime_type!r:.200} is not supported"
            f" (scans only {', '.join(IMAGE_MANIFEST_TYPES)})",
        )
    artifact["mime_type"] = mime_type
    return artifact


def _wants_sbom(value: Any) -> bool:
    """Whether ScanRequest.enabled_capabilities asks for an SBOM (absent: only the
    vulnerability report; an SBOM costs a second trivy run)."""
    if value is None:
        return False
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise AdapterError(400, "enabled_capabilities: expected a list of objects")
    for capability in value:
        if capability.get("type") not in ("vulnerability", "sbom"):
            raise AdapterError(
                422, f"enabled_capabilities: unknown type {capability.get('type')!r:.100}"
            )
    sbom = [c for c in value if c.get("type") == "sbom"]
    if not sbom:
        return False
    types = (sbom[0].get("parameters") or {}).get("sbom_media_types") or [CYCLONEDX]
    if CYCLONEDX not in types:
        raise AdapterError(422, f"enabled_capabilities: SBOMs are made only as {CYCLONEDX}")
    return True


class ScannerAdapter:
    """The ASGI application; ``serve`` runs it on hypercorn with its scan tasks."""

    def __init__(
        self,
        scanner: Scanner,
        settings: ScannerAdapterSettings,
        identity: ScannerIdentity,
        *,
        concurrency: int = 2,
        timeout: float = 600.0,
        refresh_after: int = 1,
        db_updated: float | None = None,
        database_interval: float = 0.0,
    ) -> None:
        self.scanner = scanner
        self.settings = settings
        self.identity = identity
        self.timeout = timeout
        self.refresh_after = refresh_after
        self._limiter = anyio.CapacityLimiter(max(1, concurrency))
        self._jobs: dict[str, Job] = {}
        self._db_updated = db_updated  # the database's date, as the last scan said
        # Seconds between asks for a newer database (0: only when a scan needs one).
        self.database_interval = database_interval
        self._nursery: TaskGroup | None = None

    def statistics(self) -> dict[str, int]:
        pending = sum(1 for j in self._jobs.values() if j.finished is None)
        return {"pending": pending, "reports": len(self._jobs) - pending}

    async def serve(
        self,
        bind: list[str],
        *,
        shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on ``bind`` until ``shutdown_trigger`` returns; ``task_status`` gets the
        bound addresses (``http://127.0.0.1:PORT``). Scans in flight are cancelled.

        On trio only: hypercorn's trio worker is the one that reports the bound addresses,
        and the adapter is its own process (``dockyard scanner-adapter``, under
        ``trio.run``), never a registry worker; the rest of the adapter is anyio."""
        from hypercorn.config import Config
        from hypercorn.trio import serve

        config = Config()
        config.bind = bind
        config.accesslog = None
        config.errorlog = log
        async with anyio.create_task_group() as nursery:
            self._nursery = nursery
            if self.database_interval > 0:
                nursery.start_soon(self._refresh_database)
            try:
                await serve(
                    self,  # type: ignore[arg-type]  # hypercorn's Framework union
                    config,
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def _refresh_database(self) -> None:
        """No queue asks this adapter's scanner for a newer database: ask it here, so
        scans use a database updated in the meantime (scanner.database_version())."""
        while True:
            try:
                version = await self.scanner.database_version()
                log.info("vulnerability database: %s", version or "none yet")
            except Exception:  # a broken registry must not stop the adapter
                log.exception("looking for a newer vulnerability database failed")
            await anyio.sleep(self.database_interval)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        try:
            status, headers, body = await self._handle(scope, receive)
        except AdapterError as e:
            status, headers = e.status, {**e.headers, "Content-Type": ERROR_TYPE}
            body = json.dumps({"error": {"message": str(e)}}).encode()
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, str], bytes]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        expected = self.settings.authorization
        if expected and not hmac.compare_digest(
            headers.get("authorization", "").encode(), expected.encode()
        ):
            raise AdapterError(401, "unauthorized: a valid Authorization header is required")
        method, path = scope["method"], scope["path"]
        self._expire()
        if path == API + "/metadata":
            if method != "GET":
                raise AdapterError(405, f"{method} not allowed", {"Allow": "GET"})
            return 200, {"Content-Type": METADATA_TYPE}, json.dumps(self.metadata()).encode()
        if path == API + "/scan":
            if method != "POST":
                raise AdapterError(405, f"{method} not allowed", {"Allow": "POST"})
            scan_id = self._accept(await self._body(receive))
            body = json.dumps({"id": scan_id}).encode()
            return 202, {"Content-Type": SCAN_RESPONSE_TYPE}, body
        prefix, _, rest = path.partition(API + "/scan/")
        scan_id, slash, tail = rest.partition("/")
        if prefix == "" and rest and slash and tail == "report":
            if method != "GET":
                raise AdapterError(405, f"{method} not allowed", {"Allow": "GET"})
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            return self._report(scan_id, headers.get("accept", ""), query)
        raise AdapterError(404, f"no such endpoint: {path[:200]}")

    async def _body(self, receive: Receive) -> bytes:
        body = b""
        while True:
            message = await receive()
            chunk: bytes = message.get("body", b"")
            if message["type"] == "http.disconnect":
                raise AdapterError(400, "the client went away")
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                raise AdapterError(413, f"a ScanRequest is at most {MAX_REQUEST_BYTES} bytes")
            if not message.get("more_body", False):
                return body

    def metadata(self) -> dict[str, Any]:
        properties = {
            "harbor.scanner-adapter/scanner-type": "os-package-vulnerability",
            "org.dockyard.adapter/version": __version__,
        }
        if self._db_updated is not None:
            properties[DB_UPDATED_PROPERTY] = _utc(self._db_updated)
        return {
            "scanner": {
                "name": self.identity.name,
                "vendor": self.identity.vendor,
                "version": self.identity.version,
            },
            "capabilities": [
                {
                    "type": "vulnerability",
                    "consumes_mime_types": list(IMAGE_MANIFEST_TYPES),
                    "produces_mime_types": [REPORT_TYPE, REPORT_TYPE_1_0, RAW_REPORT_TYPE],
                },
                {
                    "type": "sbom",
                    "consumes_mime_types": list(IMAGE_MANIFEST_TYPES),
                    "produces_mime_types": [SBOM_REPORT_TYPE],
                    "additional_attributes": {"sbom_media_types": [CYCLONEDX]},
                },
            ],
            "properties": properties,
        }

    def _accept(self, body: bytes) -> str:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise AdapterError(400, "the body is not JSON") from None
        if not isinstance(doc, dict):
            raise AdapterError(400, "a ScanRequest is a JSON object")
        registry, insecure, username, password = _registry_of(doc.get("registry"))
        artifact = _artifact_of(doc.get("artifact"))
        sbom = _wants_sbom(doc.get("enabled_capabilities"))
        if self.statistics()["pending"] >= self.settings.max_pending:
            raise AdapterError(
                503,
                f"{self.settings.max_pending} scans are pending: try again later",
                {"Retry-After": str(max(1, self.refresh_after * 5))},
            )
        if self._nursery is None:
            raise AdapterError(503, "the adapter is stopping", {"Retry-After": "5"})
        request = ScanRequest(
            registry=registry,
            insecure=insecure,
            repository=artifact["repository"],
            digest=artifact["digest"],
            username=username,
            password=password,
            sbom=sbom,
        )
        scan_id = str(uuid.uuid4())
        job = Job(artifact, request)
        self._jobs[scan_id] = job
        self._nursery.start_soon(self._run, scan_id, job)
        log.info("scan %s accepted: %s@%s", scan_id, request.repository, request.digest)
        return scan_id

    async def _run(self, scan_id: str, job: Job) -> None:
        try:
            async with self._limiter:
                with anyio.fail_after(self.timeout):
                    job.result = await self.scanner.scan(job.request)
        except ScanFailed as e:
            job.error = e
        except TimeoutError:
            job.error = ScanFailed("timeout", f"the scan took over {self.timeout:g}s")
        except Exception as e:  # a bug in a scanner must not stop the adapter
            log.exception("scan %s crashed", scan_id)
            job.error = ScanFailed("crashed", f"{type(e).__name__}: {e}")
        finally:
            job.finished = anyio.current_time()
        if job.result is not None:
            if job.result.db_updated is not None:
                self._db_updated = job.result.db_updated
            name, _, version = job.result.scanner.partition(" ")
            if name and version:
                self.identity = ScannerIdentity(name, self.identity.vendor, version)
            log.info("scan %s done: %d findings", scan_id, len(job.result.findings))
        elif job.error is not None:
            log.warning("scan %s failed: %s: %s", scan_id, job.error.reason, job.error)

    def _sbom_report(self, job: Job) -> bytes:
        """A HarborSbomReport: the scanner's CycloneDX document under ``sbom``."""
        assert job.result is not None
        if job.result.sbom is None:
            raise AdapterError(500, "crashed: the scanner made no SBOM")
        try:
            document = json.loads(job.result.sbom)
        except ValueError:
            raise AdapterError(500, "crashed: the scanner's SBOM is not JSON") from None
        return json.dumps(
            {
                "generated_at": _utc(datetime.now(UTC).timestamp()),
                "artifact": job.artifact,
                "scanner": {
                    "name": self.identity.name,
                    "vendor": self.identity.vendor,
                    "version": self.identity.version,
                },
                "media_type": CYCLONEDX,
                "sbom": document,
            }
        ).encode()

    def _expire(self) -> None:
        cutoff = anyio.current_time() - self.settings.report_ttl
        for scan_id in [
            i for i, j in self._jobs.items() if j.finished is not None and j.finished < cutoff
        ]:
            del self._jobs[scan_id]

    def _report(
        self, scan_id: str, accept: str, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, str], bytes]:
        job = self._jobs.get(scan_id)
        if job is None:
            raise AdapterError(404, f"no scan {scan_id[:100]!r} (unknown, or its report expired)")
        wanted = _accepts(accept) or [REPORT_TYPE]
        known = (REPORT_TYPE, REPORT_TYPE_1_0, RAW_REPORT_TYPE, SBOM_REPORT_TYPE)
        chosen = next((t for t in wanted if t in known), None)
        if chosen is None and any(t in ("*/*", "application/*") for t in wanted):
            chosen = REPORT_TYPE
        if chosen is None:
            raise AdapterError(
                501, f"no report of type {accept[:200]!r} (produces: {', '.join(known)})"
            )
        if chosen == SBOM_REPORT_TYPE:
            if query.get("sbom_media_type") != [CYCLONEDX]:
                raise AdapterError(400, f"an SBOM report needs ?sbom_media_type={CYCLONEDX}")
            if not job.request.sbom:
                raise AdapterError(400, "this scan was not asked for an SBOM")
        if job.finished is None:
            return 302, {"Refresh-After": str(self.refresh_after)}, b""
        if job.error is not None:
            raise AdapterError(500, f"{job.error.reason}: {job.error}")
        assert job.result is not None
        if chosen == RAW_REPORT_TYPE:
            return 200, {"Content-Type": RAW_REPORT_TYPE}, job.result.report
        if chosen == SBOM_REPORT_TYPE:
            return 200, {"Content-Type": SBOM_REPORT_TYPE}, self._sbom_report(job)
        report = harbor_report(job.result, job.artifact, self.identity)
        return 200, {"Content-Type": chosen}, json.dumps(report).encode()
