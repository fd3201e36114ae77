"""Media types and manifest parsing.

``parse_manifest`` turns the bytes a client PUTs into a ``Manifest``: the media type it is
stored and served as, the blobs and child manifests it references, its subject and its
artifact type. It checks structure only; whether referenced content exists is the core's
business.

Errors::

    ManifestError            the payload is not a manifest dockyard accepts
    +-- UnsupportedManifest  well-formed, but a kind dockyard does not store (schema1)
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from dockyard.oci import strictjson
from dockyard.oci.digest import Digest, DigestError, digest_of

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = IMAGE_TYPES + INDEX_TYPES


class ManifestError(ValueError):
    """The payload is not a manifest dockyard accepts."""


class UnsupportedManifest(ManifestError):
    """A manifest kind dockyard does not store (Docker schema1)."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()
    data: bytes | None = None

    @property
    def non_distributable(self) -> bool:
        """Content the registry is not expected to hold (foreign layers)."""
        return (
            bool(self.urls)
            or "nondistributable" in self.media_type
            or (self.media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    blobs: tuple[Descriptor, ...] = ()  # config and layers
    children: tuple[Descriptor, ...] = ()  # manifests an index lists
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: descriptor must be an object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestError(f"{where}: mediaType must be a non-empty string")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise ManifestError(f"{where}: digest must be a string")
    try:
        digest = Digest.parse(raw_digest)
    except DigestError as e:
        raise ManifestError(f"{where}: {e}") from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}: size must be a non-negative integer")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestError(f"{where}: artifactType must be a string")
    annotations = _annotations(value.get("annotations"), where)
    urls = value.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{where}: urls must be a list of strings")
    data: bytes | None = None
    if "data" in value:
        if not isinstance(value["data"], str):
            raise ManifestError(f"{where}: data must be base64 text")
        try:
            data = base64.b64decode(value["data"], validate=True)
        except (binascii.Error, ValueError):
            raise ManifestError(f"{where}: data is not valid base64") from None
        if len(data) != size or digest_of(data, digest.algorithm) != digest:
            raise ManifestError(f"{where}: data does not match its size and digest")
    return Descriptor(
        media_type, digest, size, artifact_type, annotations or None, tuple(urls), data
    )


def _annotations(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{where}: annotations must map strings to strings")
    return value


def _descriptor_list(doc: dict[str, Any], key: str, required: bool) -> tuple[Descriptor, ...]:
    if key not in doc:
        if required:
            raise ManifestError(f"{key} is required")
        return ()
    value = doc[key]
    if not isinstance(value, list):
        raise ManifestError(f"{key} must be a list")
    return tuple(_descriptor(v, f"{key}[{i}]") for i, v in enumerate(value))


def parse_manifest(payload: bytes, content_type: str | None) -> Manifest:
    """Parse and structurally validate a manifest payload.

    ``content_type`` is the request's Content-Type (parameters stripped), or None. The
    media type is the payload's ``mediaType`` if present, else the Content-Type; if both
    are given they must agree.
    """
    try:
        doc = strictjson.loads(payload)
    except strictjson.StrictJSONError as e:
        raise ManifestError(f"manifest is {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest must be a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError("mediaType must be a string")
    if (
        content_type in DOCKER_SCHEMA1
        or declared in DOCKER_SCHEMA1
        or doc.get("schemaVersion") == 1
    ):
        raise UnsupportedManifest("Docker schema1 manifests are not supported")
    if declared and content_type and declared != content_type:
        raise ManifestError(f"mediaType {declared!r} does not match Content-Type {content_type!r}")
    media_type = declared or content_type
    if media_type is None:
        # No declaration at all: infer the OCI kind from the shape, as the image-spec allows.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise ManifestError(f"unsupported manifest media type {media_type!r}")
    if doc.get("schemaVersion") != 2:
        raise ManifestError("schemaVersion must be 2")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestError("artifactType must be a string")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    annotations = _annotations(doc.get("annotations"), "annotations")

    blobs: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    if media_type in INDEX_TYPES:
        children = _descriptor_list(doc, "manifests", required=True)
        if media_type == DOCKER_LIST and (subject or artifact_type):
            raise ManifestError("a Docker manifest list has no subject or artifactType")
    else:
        if "config" not in doc:
            raise ManifestError("config is required")
        config = _descriptor(doc["config"], "config")
        layers = _descriptor_list(doc, "layers", required=media_type == DOCKER_MANIFEST)
        blobs = (config, *layers)
        if media_type == DOCKER_MANIFEST and (subject or artifact_type):
            raise ManifestError("a Docker schema2 manifest has no subject or artifactType")
    return Manifest(media_type, blobs, children, subject, artifact_type, annotations)


def referrer_artifact_type(manifest: Manifest) -> str | None:
    """The artifactType the referrers API reports for ``manifest`` (image-spec rules)."""
    if manifest.artifact_type:
        return manifest.artifact_type
    if manifest.media_type == OCI_MANIFEST and manifest.blobs:
        return manifest.blobs[0].media_type
    return None
