"""Build container images from scratch, as OCI image layouts or ``dir:`` directories.

No image can be downloaded in the test environment, so the end-to-end tests make their
own: gzip tar layers filled with seeded random bytes (the same seed always gives the same
bytes, hence the same digests), an image config whose ``rootfs.diff_ids`` are the sha256
of the uncompressed tars, image manifests, and multi-architecture indexes.

Two on-disk forms, both read by skopeo and umoci:

- ``OCILayout``: an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/``);
  tags are ``org.opencontainers.image.ref.name`` annotations in ``index.json``, so
  ``oci:<dir>:<tag>`` names an image or an index.
- ``write_dir_image``: containers/image's ``dir:`` transport (``version``,
  ``manifest.json``, blobs named by hex digest), which keeps the manifest bytes exactly as
  written, so a Docker schema2 manifest built here reaches the registry byte for byte.

Every builder returns the digests it wrote, so tests compare what comes back with them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"

# A fixed time for configs and tar entries: the same seed must give the same digests.
EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Blob:
    """Content addressed by digest, with the media type its descriptor carries."""

    media_type: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layer:
    """A gzip tar layer. ``files`` maps rootfs paths to the content the layer writes;
    ``deleted`` lists paths it removes with whiteouts."""

    blob: Blob
    diff_id: str
    files: dict[str, bytes] = field(repr=False)
    deleted: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return self.blob.digest


def _tar_entry(tar: tarfile.TarFile, path: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(path)
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def make_layer(
    seed: int,
    *,
    files: int = 3,
    file_size: int = 4096,
    directory: str | None = None,
    extra: Mapping[str, bytes] | None = None,
    delete: Sequence[str] = (),
    media_type: str = OCI_LAYER,
) -> Layer:
    """A layer of ``files`` random files of ``file_size`` bytes under ``directory``
    (``layer-<seed>`` by default), plus ``extra`` files and whiteouts for ``delete``.

    The same arguments always give the same bytes (fixed mtimes, gzip without a name or
    timestamp), so the digest is a function of the seed.
    """
    rng = random.Random(seed)
    directory = directory or f"layer-{seed}"
    contents: dict[str, bytes] = {
        f"{directory}/file-{i}.bin": rng.randbytes(file_size) for i in range(files)
    }
    contents.update(extra or {})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()
        for path in sorted(contents):
            parts = path.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                parent = "/".join(parts[:depth])
                if parent not in made:
                    made.add(parent)
                    _tar_entry(tar, parent + "/", None, 0o755)
            _tar_entry(tar, path, contents[path], 0o644)
        for path in delete:
            head, _, name = path.rpartition("/")
            whiteout = f"{head}/.wh.{name}" if head else f".wh.{name}"
            _tar_entry(tar, whiteout, b"", 0o644)
    tar_bytes = raw.getvalue()
    compressed = gzip.compress(tar_bytes, compresslevel=6, mtime=0)
    return Layer(Blob(media_type, compressed), sha256(tar_bytes), contents, tuple(delete))


def random_layers(seed: int, count: int, **kwargs: Any) -> list[Layer]:
    """``count`` distinct layers derived from ``seed``."""
    return [make_layer(seed * 1000 + i, **kwargs) for i in range(count)]


@dataclass(frozen=True)
class Image:
    """An image manifest with its config and layers, as written."""

    manifest: Blob
    config: Blob
    layers: tuple[Layer, ...]
    architecture: str
    os: str

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blob_digests(self) -> list[str]:
        """Config and layer digests, the blobs a registry must hold for this image."""
        return [self.config.digest, *(layer.digest for layer in self.layers)]

    @property
    def rootfs(self) -> dict[str, bytes]:
        """The files an unpacked image holds: later layers win, whiteouts delete."""
        files: dict[str, bytes] = {}
        for layer in self.layers:
            for path in layer.deleted:
                files.pop(path, None)
            files.update(layer.files)
        return files

    def platform(self) -> dict[str, str]:
        return {"architecture": self.architecture, "os": self.os}


@dataclass(frozen=True)
class Index:
    """An image index (or Docker manifest list) over ``images``."""

    manifest: Blob
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest


def build_image(
    layers: Sequence[Layer],
    *,
    architecture: str = "amd64",
    os: str = "linux",
    docker: bool = False,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """Config and manifest for ``layers``; ``docker`` makes a Docker schema2 image.

    Layers built with the OCI media type are re-labelled for Docker (the bytes, hence the
    digests, do not change).
    """
    config_doc: dict[str, Any] = {
        "architecture": architecture,
        "os": os,
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": dict(labels or {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": CREATED, "created_by": f"imagegen layer {i}"} for i in range(len(layers))
        ],
    }
    layer_type = DOCKER_LAYER if docker else OCI_LAYER
    layers = tuple(
        layer
        if layer.blob.media_type == layer_type
        else Layer(Blob(layer_type, layer.blob.data), layer.diff_id, layer.files, layer.deleted)
        for layer in layers
    )
    config = Blob(DOCKER_CONFIG if docker else OCI_CONFIG, canonical_json(config_doc))
    manifest_doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    if annotations:
        manifest_doc["annotations"] = dict(annotations)
    manifest = Blob(manifest_doc["mediaType"], canonical_json(manifest_doc))
    return Image(manifest, config, layers, architecture, os)


def build_index(images: Sequence[Image], *, docker: bool = False) -> Index:
    """An OCI index (or, with ``docker``, a Docker manifest list) of ``images``."""
    media_type = DOCKER_LIST if docker else OCI_INDEX
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [image.manifest.descriptor(platform=image.platform()) for image in images],
    }
    return Index(Blob(media_type, canonical_json(doc)), tuple(images))


class OCILayout:
    """An OCI image layout directory that images and indexes are added to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self._entries: list[dict[str, Any]] = []
        self._write_index()

    def ref(self, tag: str) -> str:
        """The skopeo/umoci name of a tag in this layout."""
        return f"oci:{self.root}:{tag}"

    def add_blob(self, blob: Blob) -> str:
        path = self.blobs / blob.digest.removeprefix("sha256:")
        if not path.exists():
            path.write_bytes(blob.data)
        return blob.digest

    def _add_image_blobs(self, image: Image) -> None:
        for layer in image.layers:
            self.add_blob(layer.blob)
        self.add_blob(image.config)
        self.add_blob(image.manifest)

    def tag(self, tag: str, manifest: Blob, platform: dict[str, str] | None = None) -> None:
        """Name ``manifest`` ``tag`` in ``index.json`` (replacing an earlier use of it)."""
        self._entries = [e for e in self._entries if e.get("annotations", {}).get(REF_NAME) != tag]
        entry = manifest.descriptor(annotations={REF_NAME: tag})
        if platform is not None:
            entry["platform"] = platform
        self._entries.append(entry)
        self._write_index()

    def add_image(self, tag: str, image: Image) -> Image:
        self._add_image_blobs(image)
        self.tag(tag, image.manifest, image.platform())
        return image

    def add_index(self, tag: str, index: Index) -> Index:
        for image in index.images:
            self._add_image_blobs(image)
        self.add_blob(index.manifest)
        self.tag(tag, index.manifest)
        return index

    def _write_index(self) -> None:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self._entries}
        (self.root / "index.json").write_text(json.dumps(doc, indent=2))


def write_dir_image(root: Path, image: Image) -> Path:
    """``image`` in containers/image's ``dir:`` format (push with ``dir:<root>``)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "version").write_text("Directory Transport Version: 1.1\n")
    (root / "manifest.json").write_bytes(image.manifest.data)
    for blob in [image.config, *(layer.blob for layer in image.layers)]:
        (root / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
    return root


def write_dir_index(root: Path, index: Index) -> Path:
    """``index`` with all its images in ``dir:`` format (push with ``--all``): the list
    is ``manifest.json``, each image manifest ``<hex>.manifest.json``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "version").write_text("Directory Transport Version: 1.1\n")
    (root / "manifest.json").write_bytes(index.manifest.data)
    for image in index.images:
        hex_ = image.digest.removeprefix("sha256:")
        (root / f"{hex_}.manifest.json").write_bytes(image.manifest.data)
        for blob in [image.config, *(layer.blob for layer in image.layers)]:
            (root / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
    return root


def read_layout_index(root: Path) -> dict[str, Any]:
    """``index.json`` of an OCI layout, as JSON."""
    doc: dict[str, Any] = json.loads((root / "index.json").read_text())
    return doc


def layout_tags(root: Path) -> dict[str, str]:
    """Tag -> manifest digest from an OCI layout's ``index.json``."""
    return {
        entry["annotations"][REF_NAME]: entry["digest"]
        for entry in read_layout_index(root)["manifests"]
        if REF_NAME in entry.get("annotations", {})
    }


def layout_blob(root: Path, digest: str) -> bytes:
    algorithm, _, hex_ = digest.partition(":")
    return (root / "blobs" / algorithm / hex_).read_bytes()
