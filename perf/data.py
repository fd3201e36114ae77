"""Upload data made and hashed before any clock starts.

Every blob is a unique 64-byte prefix (its name) followed by bytes of one random block,
so each is new content to the registry while making it costs a memory copy, not a random
number generator. :func:`streamed_blob` never materializes its bytes (a 4 GiB upload
from one 8 MiB block); its digest is still computed over every byte, up front.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass

from perf.httpclient import Body, RepeatedBody

MiB = 1 << 20
GiB = 1 << 30
BLOCK_SIZE = 8 * MiB

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"


@functools.cache
def random_block(size: int = BLOCK_SIZE, seed: int = 20240401) -> bytes:
    return random.Random(seed).randbytes(size)


def _prefix(name: str) -> bytes:
    raw = name.encode()[:63]
    return raw + b"\n" * (64 - len(raw))


@dataclass(frozen=True, slots=True)
class Blob:
    name: str
    data: Body
    digest: str
    size: int


def blob(name: str, size: int) -> Blob:
    """A materialized blob of ``size`` bytes, unique by ``name``."""
    prefix = _prefix(name)
    if size <= len(prefix):
        data = prefix[:size]
    else:
        block = random_block()
        rest = size - len(prefix)
        repeats, tail = divmod(rest, len(block))
        data = b"".join([prefix, block * repeats, block[:tail]])
    return Blob(name, data, "sha256:" + hashlib.sha256(data).hexdigest(), size)


def streamed_blob(name: str, size: int) -> Blob:
    """A blob sent as a repeated block; ``size`` is rounded to the block plus prefix."""
    block = random_block()
    prefix = _prefix(name)
    count = max(0, (size - len(prefix)) // len(block))
    tail = block[: max(0, size - len(prefix) - count * len(block))]
    body = RepeatedBody(prefix, block, count, tail)
    h = hashlib.sha256()
    for chunk in body.chunks():
        h.update(chunk)
    return Blob(name, body, "sha256:" + h.hexdigest(), len(body))


@dataclass(frozen=True, slots=True)
class Image:
    """An OCI image: config blob, layer blobs and the manifest bytes naming them."""

    name: str
    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes
    digest: str

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)

    @property
    def logical_size(self) -> int:
        return sum(b.size for b in self.blobs) + len(self.manifest)


def image(name: str, layers: list[Blob]) -> Image:
    config_doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"perf.image": name}},
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]},
    }
    config_bytes = json.dumps(config_doc, separators=(",", ":")).encode()
    config = Blob(
        f"{name}/config",
        config_bytes,
        "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
        len(config_bytes),
    )
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b in layers],
    }
    manifest = json.dumps(manifest_doc, separators=(",", ":")).encode()
    return Image(
        name, config, tuple(layers), manifest, "sha256:" + hashlib.sha256(manifest).hexdigest()
    )
