"""A scan's report (and SBOM) stored as referrers of the scanned manifest.

Each is an OCI image manifest in the scanned repository::

    {"mediaType": "application/vnd.oci.image.manifest.v1+json",
     "artifactType": REPORT_ARTIFACT_TYPE (or SBOM_ARTIFACT_TYPE),
     "config": the empty descriptor (application/vnd.oci.empty.v1+json, "{}"),
     "layers": [the scanner's bytes, with the scanner's media type],
     "subject": the scanned manifest,
     "annotations": {"org.opencontainers.image.created": ...,
                     "io.dockyard.scan.scanner": "Trivy 0.76.0",
                     "io.dockyard.scan.critical": "0", ... ".unknown": "2",
                     "io.dockyard.scan.db-updated": RFC 3339 or absent}}

pushed through the core like any client's push (blobs by ``put_blob``, the manifest by
``put_manifest``, actor "scanner"): quotas, events and the referrers API treat it as any
other referrer, and ``oras discover`` finds it. The queue never scans a manifest that has
a subject, so reports are not scanned in turn.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from dockyard.config import SEVERITIES
from dockyard.core.common import RequestInfo
from dockyard.core.registry import Registry
from dockyard.oci.manifest import OCI_EMPTY, OCI_MANIFEST

REPORT_ARTIFACT_TYPE = "application/vnd.dockyard.vulnerability.report.v1+json"
SBOM_ARTIFACT_TYPE = "application/vnd.dockyard.sbom.v1+json"
SCANNER_ACTOR = "scanner"
# The request method of the queue's own changes in the event log (no client can send it
# to a route that changes anything).
SCANNER_METHOD = "SCAN"
ANNOTATION_PREFIX = "io.dockyard.scan."
_EMPTY = b"{}"


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def referrer_manifest(
    artifact_type: str,
    subject: tuple[str, str, int],
    layer: bytes,
    layer_media_type: str,
    annotations: dict[str, str],
) -> bytes:
    """The referrer's manifest bytes; ``subject`` is (media type, digest, size)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": _digest(_EMPTY), "size": len(_EMPTY)},
        "layers": [{"mediaType": layer_media_type, "digest": _digest(layer), "size": len(layer)}],
        "subject": {"mediaType": subject[0], "digest": subject[1], "size": subject[2]},
        "annotations": annotations,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def report_annotations(
    scanner: str, counts: dict[str, int], db_updated: float | None, created: float
) -> dict[str, str]:
    out = {
        "org.opencontainers.image.created": rfc3339(created),
        ANNOTATION_PREFIX + "scanner": scanner,
    }
    for severity in SEVERITIES:
        out[ANNOTATION_PREFIX + severity.lower()] = str(counts.get(severity, 0))
    if db_updated is not None:
        out[ANNOTATION_PREFIX + "db-updated"] = rfc3339(db_updated)
    return out


async def push_referrer(
    registry: Registry,
    repository: str,
    artifact_type: str,
    subject: tuple[str, str, int],
    layer: bytes,
    layer_media_type: str,
    annotations: dict[str, str],
) -> str:
    """Store one referrer of ``subject`` in ``repository``; its manifest digest."""
    ctx = RequestInfo(method=SCANNER_METHOD, actor=SCANNER_ACTOR)
    for blob in (_EMPTY, layer):
        await registry.put_blob(ctx, repository, _digest(blob), _one(blob), len(blob))
    payload = referrer_manifest(artifact_type, subject, layer, layer_media_type, annotations)
    pushed = await registry.put_manifest(
        ctx, repository, _digest(payload), payload, OCI_MANIFEST, []
    )
    return pushed.digest
