"""dockyard.oci: digests and resumable hashers, names and references, manifest parsing."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import blake3
import pytest

from dockyard.oci.digest import (
    ALGORITHMS,
    Digest,
    DigestError,
    digest_of,
    is_supported,
    new_hasher,
)
from dockyard.oci.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    ManifestError,
    UnsupportedManifest,
    parse_manifest,
    referrer_artifact_type,
)
from dockyard.oci.names import (
    MAX_NAME_LENGTH,
    ReferenceError_,
    is_valid_name,
    is_valid_tag,
    parse_reference,
)


def data_of(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def reference_hex(algorithm: str, data: bytes) -> str:
    if algorithm == "blake3":
        return str(blake3.blake3(data).hexdigest())
    return hashlib.new(algorithm, data).hexdigest()


# -- digests ------------------------------------------------------------------------------

# Lengths around the 64-byte (sha256) and 128-byte (sha512) block and padding edges.
SIZES = [0, 1, 55, 56, 63, 64, 65, 111, 112, 127, 128, 129, 1000, 65_537, 1_000_003]


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
@pytest.mark.parametrize("size", SIZES)
def test_one_shot_digest_matches_reference(algorithm: str, size: int) -> None:
    data = data_of(size, seed=size)
    expected = Digest(algorithm, reference_hex(algorithm, data))
    assert digest_of(data, algorithm) == expected
    assert str(digest_of(data, algorithm)) == f"{algorithm}:{expected.encoded}"


def test_default_algorithm_is_sha256() -> None:
    assert digest_of(b"abc") == Digest("sha256", hashlib.sha256(b"abc").hexdigest())


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
def test_streaming_in_odd_chunks_matches_reference(algorithm: str) -> None:
    data = data_of(300_001, seed=1)
    hasher = new_hasher(algorithm)
    assert hasher.algorithm == algorithm
    position = 0
    for chunk in (1, 63, 65, 127, 129, 4095, 70_001):
        hasher.update(data[position : position + chunk])
        position += chunk
    hasher.update(data[position:])
    assert hasher.digest().encoded == reference_hex(algorithm, data)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
def test_digest_leaves_the_hasher_usable(algorithm: str) -> None:
    hasher = new_hasher(algorithm)
    hasher.update(b"first part, ")
    assert hasher.digest().encoded == reference_hex(algorithm, b"first part, ")
    assert hasher.digest().encoded == reference_hex(algorithm, b"first part, ")
    hasher.update(b"second part")
    assert hasher.digest().encoded == reference_hex(algorithm, b"first part, second part")


@pytest.mark.parametrize(("algorithm", "state_size"), [("sha256", 112), ("sha512", 216)])
@pytest.mark.parametrize("chunk", [1, 7, 63, 65, 100, 127, 129, 1000, 65_537])
def test_resume_from_saved_state_after_every_chunk(
    algorithm: str, state_size: int, chunk: int
) -> None:
    data = data_of(200_000 if chunk > 100 else 5_000, seed=chunk)
    state = new_hasher(algorithm).state()
    assert state is not None
    for start in range(0, len(data), chunk):
        # A new hasher per chunk, as a PATCH landing on another worker would build.
        hasher = new_hasher(algorithm, state)
        hasher.update(data[start : start + chunk])
        state = hasher.state()
        assert isinstance(state, bytes) and len(state) == state_size
    assert new_hasher(algorithm, state).digest().encoded == reference_hex(algorithm, data)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_resume_empty_input(algorithm: str) -> None:
    state = new_hasher(algorithm).state()
    assert state is not None
    resumed = new_hasher(algorithm, state)
    assert resumed.digest().encoded == reference_hex(algorithm, b"")
    # An empty update changes nothing either.
    resumed.update(b"")
    assert resumed.state() == state
    assert resumed.digest().encoded == reference_hex(algorithm, b"")


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize("split", [0, 1, 55, 64, 100, 128, 9999])
def test_hash_part_save_resume_equals_one_shot(algorithm: str, split: int) -> None:
    data = data_of(10_000, seed=split)
    first = new_hasher(algorithm)
    first.update(data[:split])
    saved = first.state()
    assert saved is not None
    second = new_hasher(algorithm, saved)
    second.update(data[split:])
    assert second.digest() == digest_of(data, algorithm)
    # The saved bytes are a snapshot: continuing the first hasher does not change them.
    first.update(b"more")
    assert new_hasher(algorithm, saved).digest() == digest_of(data[:split], algorithm)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize("bad", [b"", b"\x00" * 10, b"\x00" * 1000])
def test_resume_rejects_a_state_of_the_wrong_size(algorithm: str, bad: bytes) -> None:
    with pytest.raises(ValueError):
        new_hasher(algorithm, bad)


def test_sha256_and_sha512_states_are_not_interchangeable() -> None:
    sha256_state = new_hasher("sha256").state()
    assert sha256_state is not None
    with pytest.raises(ValueError):
        new_hasher("sha512", sha256_state)


def test_blake3_cannot_export_or_resume_state() -> None:
    hasher = new_hasher("blake3")
    hasher.update(b"abc")
    assert hasher.state() is None
    with pytest.raises(ValueError):
        new_hasher("blake3", b"..")


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha384", "SHA256", ""])
def test_unsupported_hasher(algorithm: str) -> None:
    assert not is_supported(algorithm)
    with pytest.raises(DigestError):
        new_hasher(algorithm)


def test_supported_algorithms() -> None:
    assert set(ALGORITHMS) == {"sha256", "sha512", "blake3"}
    assert all(is_supported(a) for a in ALGORITHMS)


HEX64 = hashlib.sha256(b"x").hexdigest()
HEX128 = hashlib.sha512(b"x").hexdigest()


@pytest.mark.parametrize(
    "text",
    [f"sha256:{HEX64}", f"sha512:{HEX128}", f"blake3:{HEX64}", "sha256:" + "0" * 64],
)
def test_digest_parse_valid(text: str) -> None:
    parsed = Digest.parse(text)
    algorithm, _, encoded = text.partition(":")
    assert (parsed.algorithm, parsed.encoded) == (algorithm, encoded)
    assert str(parsed) == text
    assert Digest.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        ":" + HEX64,
        "sha256:" + HEX64.upper(),  # uppercase hex
        "SHA256:" + HEX64,  # uppercase algorithm
        "sha256:" + HEX64[:-1],  # too short
        "sha256:" + HEX64 + "0",  # too long
        "sha512:" + HEX64,  # sha512 wants 128
        "blake3:" + HEX128,  # blake3 wants 64
        "sha256:" + HEX64[:-1] + "g",  # not hex
        "md5:" + hashlib.md5(b"x").hexdigest(),  # unsupported
        "sha384:" + hashlib.sha384(b"x").hexdigest(),  # unsupported
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",  # unsupported
        " sha256:" + HEX64,
        "sha256:" + HEX64 + "\n",
        "sha256::" + HEX64,
        "sha256:../" + HEX64[3:],
        "sha256:" + "a" * 300,
    ],
)
def test_digest_parse_rejects(text: str) -> None:
    with pytest.raises(DigestError):
        Digest.parse(text)


def test_digest_error_is_a_value_error() -> None:
    # Callers that catch ValueError for bad input also catch a bad digest.
    assert issubclass(DigestError, ValueError)


# -- names and references -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "team/app",
        "a.b_c__d-e--f/g",
        "library/ubuntu",
        "a0/b1/c2/d3",
        "x---y",
        "a" * MAX_NAME_LENGTH,
        "/".join(["ab"] * 85),  # 254 characters across many components
    ],
)
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "Team/app",
        "-a",
        "a-",
        ".a",
        "_a",
        "a/",
        "/a",
        "a//b",
        "a__-b",
        "a___b",
        "a..b",
        "a._b",
        "a b",
        "a:b",
        "a@b",
        "a/../b",
        "a" * (MAX_NAME_LENGTH + 1),
        "ab/" * 85 + "ab",  # 257 characters
    ],
)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)


@pytest.mark.parametrize(
    "tag", ["latest", "v1.2.3", "_private", "1", "A-b_C.d", "a" * 128, "x" + "-" * 127]
)
def test_valid_tags(tag: str) -> None:
    assert is_valid_tag(tag)


@pytest.mark.parametrize("tag", ["", "-dash", ".dot", "a" * 129, "a/b", "a:b", "a b", "tag\n", "é"])
def test_invalid_tags(tag: str) -> None:
    assert not is_valid_tag(tag)


def test_parse_reference() -> None:
    assert parse_reference("latest") == "latest"
    assert parse_reference("a" * 128) == "a" * 128
    parsed = parse_reference(f"sha256:{HEX64}")
    assert parsed == Digest("sha256", HEX64)
    assert isinstance(parsed, Digest)


@pytest.mark.parametrize("ref", ["", "-x", "a" * 129, "a/b", "bad tag"])
def test_parse_reference_rejects_bad_tags(ref: str) -> None:
    with pytest.raises(ReferenceError_):
        parse_reference(ref)


@pytest.mark.parametrize(
    "ref", ["sha256:abc", f"md5:{HEX64}", f"sha256:{HEX64.upper()}", "v1:2", ":"]
)
def test_parse_reference_rejects_bad_digests(ref: str) -> None:
    with pytest.raises(DigestError):
        parse_reference(ref)


# -- manifests ----------------------------------------------------------------------------


def blob_digest(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def desc(media_type: str, content: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": blob_digest(content), "size": len(content), **extra}


CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
LAYER1 = b"layer one bytes"
LAYER2 = b"layer two bytes"
OCI_CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_TYPE = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
UNKNOWN_CONFIG = "application/vnd.unknown.config.v1+json"


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def oci_image(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG_TYPE, CONFIG),
        "layers": [desc(OCI_LAYER_TYPE, LAYER1), desc(OCI_LAYER_TYPE, LAYER2)],
        **extra,
    }


def oci_index(**extra: Any) -> dict[str, Any]:
    child = encode(oci_image())
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            desc(OCI_MANIFEST, child, platform={"architecture": "amd64", "os": "linux"}),
        ],
        **extra,
    }


def test_oci_image_manifest() -> None:
    doc = oci_image(annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"})
    m = parse_manifest(encode(doc), OCI_MANIFEST)
    assert m.media_type == OCI_MANIFEST
    assert not m.is_index
    assert [str(b.digest) for b in m.blobs] == [
        blob_digest(CONFIG),
        blob_digest(LAYER1),
        blob_digest(LAYER2),
    ]
    assert [b.size for b in m.blobs] == [len(CONFIG), len(LAYER1), len(LAYER2)]
    assert [b.media_type for b in m.blobs] == [OCI_CONFIG_TYPE, OCI_LAYER_TYPE, OCI_LAYER_TYPE]
    assert m.children == ()
    assert m.subject is None
    assert m.artifact_type is None
    assert m.annotations == {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    assert not any(b.non_distributable for b in m.blobs)
    assert referrer_artifact_type(m) == OCI_CONFIG_TYPE


def test_oci_image_without_layers_key() -> None:
    doc = oci_image()
    del doc["layers"]
    m = parse_manifest(encode(doc), OCI_MANIFEST)
    assert [str(b.digest) for b in m.blobs] == [blob_digest(CONFIG)]


def test_oci_index_with_nested_index() -> None:
    inner = encode(oci_index())
    image = encode(oci_image())
    doc = oci_index()
    doc["manifests"].append(desc(OCI_INDEX, inner))
    doc["manifests"].append(desc(DOCKER_MANIFEST, image))
    m = parse_manifest(encode(doc), OCI_INDEX)
    assert m.is_index
    assert m.media_type == OCI_INDEX
    assert m.blobs == ()
    assert [c.media_type for c in m.children] == [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST]
    assert [str(c.digest) for c in m.children] == [
        blob_digest(image),
        blob_digest(inner),
        blob_digest(image),
    ]
    assert [c.size for c in m.children] == [len(image), len(inner), len(image)]
    # An index without artifactType reports none to the referrers API.
    assert referrer_artifact_type(m) is None


def test_oci_index_with_artifact_type_and_subject() -> None:
    subject = encode(oci_image())
    doc = oci_index(
        artifactType="application/vnd.example.sbom.v1",
        subject=desc(OCI_MANIFEST, subject),
    )
    m = parse_manifest(encode(doc), OCI_INDEX)
    assert m.artifact_type == "application/vnd.example.sbom.v1"
    assert m.subject is not None and str(m.subject.digest) == blob_digest(subject)
    assert referrer_artifact_type(m) == "application/vnd.example.sbom.v1"


def test_empty_oci_index() -> None:
    m = parse_manifest(encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}), None)
    assert m.is_index and m.children == ()


def test_docker_schema2_manifest() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG_TYPE, CONFIG),
        "layers": [desc(DOCKER_LAYER_TYPE, LAYER1)],
    }
    m = parse_manifest(encode(doc), DOCKER_MANIFEST)
    assert m.media_type == DOCKER_MANIFEST
    assert not m.is_index
    assert [b.media_type for b in m.blobs] == [DOCKER_CONFIG_TYPE, DOCKER_LAYER_TYPE]
    assert [str(b.digest) for b in m.blobs] == [blob_digest(CONFIG), blob_digest(LAYER1)]
    # Only OCI image manifests fall back to the config media type.
    assert referrer_artifact_type(m) is None


def test_docker_schema2_requires_layers() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG_TYPE, CONFIG),
    }
    with pytest.raises(ManifestError, match="layers"):
        parse_manifest(encode(doc), DOCKER_MANIFEST)


def test_docker_manifest_list() -> None:
    amd64 = encode({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "n": 1})
    arm64 = encode({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "n": 2})
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            desc(DOCKER_MANIFEST, amd64, platform={"architecture": "amd64", "os": "linux"}),
            desc(DOCKER_MANIFEST, arm64, platform={"architecture": "arm64", "os": "linux"}),
        ],
    }
    m = parse_manifest(encode(doc), DOCKER_LIST)
    assert m.media_type == DOCKER_LIST
    assert m.is_index
    assert [str(c.digest) for c in m.children] == [blob_digest(amd64), blob_digest(arm64)]
    assert m.blobs == ()


@pytest.mark.parametrize(
    "extra",
    [
        {"subject": desc(OCI_MANIFEST, b"subject")},
        {"artifactType": "application/vnd.example"},
    ],
)
def test_docker_kinds_have_no_subject_or_artifact_type(extra: dict[str, Any]) -> None:
    docker_image = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG_TYPE, CONFIG),
        "layers": [],
        **extra,
    }
    docker_list = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [], **extra}
    with pytest.raises(ManifestError):
        parse_manifest(encode(docker_image), DOCKER_MANIFEST)
    with pytest.raises(ManifestError):
        parse_manifest(encode(docker_list), DOCKER_LIST)


def test_artifact_manifest() -> None:
    sbom = b'{"spdxVersion": "SPDX-2.3"}'
    subject_payload = encode(oci_image())
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": desc(OCI_EMPTY, b"{}", data=base64.b64encode(b"{}").decode()),
        "layers": [desc("application/spdx+json", sbom)],
        "subject": desc(OCI_MANIFEST, subject_payload),
        "annotations": {"org.opencontainers.image.created": "2024-05-01T00:00:00Z"},
    }
    m = parse_manifest(encode(doc), OCI_MANIFEST)
    assert m.artifact_type == "application/spdx+json"
    assert referrer_artifact_type(m) == "application/spdx+json"
    assert m.subject == Descriptor(
        OCI_MANIFEST, Digest.parse(blob_digest(subject_payload)), len(subject_payload)
    )
    assert m.blobs[0].media_type == OCI_EMPTY
    assert m.blobs[0].data == b"{}"
    assert [str(b.digest) for b in m.blobs] == [blob_digest(b"{}"), blob_digest(sbom)]


def test_artifact_with_unknown_config_media_type() -> None:
    # The image-spec's guidance for artifacts before artifactType existed: the config
    # media type names the artifact, and the referrers API reports it.
    payload = b"signature bytes"
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(UNKNOWN_CONFIG, b"{}"),
        "layers": [desc("application/octet-stream", payload)],
        "subject": desc(OCI_MANIFEST, b"target manifest"),
    }
    m = parse_manifest(encode(doc), OCI_MANIFEST)
    assert m.artifact_type is None
    assert m.blobs[0].media_type == UNKNOWN_CONFIG
    assert referrer_artifact_type(m) == UNKNOWN_CONFIG
    assert m.subject is not None
    assert str(m.subject.digest) == blob_digest(b"target manifest")


def test_referrer_artifact_type_prefers_artifact_type() -> None:
    m = parse_manifest(encode(oci_image(artifactType="application/vnd.example.a")), None)
    assert referrer_artifact_type(m) == "application/vnd.example.a"
    built = Manifest(OCI_MANIFEST)
    assert referrer_artifact_type(built) is None


def test_descriptor_data_field() -> None:
    content = b'{"hello": "world"}'
    config = desc(OCI_CONFIG_TYPE, content, data=base64.b64encode(content).decode())
    m = parse_manifest(encode(oci_image(config=config)), OCI_MANIFEST)
    assert m.blobs[0].data == content


@pytest.mark.parametrize(
    "data",
    [
        base64.b64encode(b"other bytes").decode(),  # wrong content, wrong size
        base64.b64encode(b'{"hello": "WORLD"}').decode(),  # right size, wrong digest
        "not base64!!",
        "",  # empty data for a non-empty blob
    ],
)
def test_descriptor_data_mismatch(data: str) -> None:
    content = b'{"hello": "world"}'
    config = desc(OCI_CONFIG_TYPE, content, data=data)
    with pytest.raises(ManifestError, match="data"):
        parse_manifest(encode(oci_image(config=config)), OCI_MANIFEST)


def test_descriptor_data_with_sha512_digest() -> None:
    content = b"sha512 content"
    config = {
        "mediaType": OCI_CONFIG_TYPE,
        "digest": "sha512:" + hashlib.sha512(content).hexdigest(),
        "size": len(content),
        "data": base64.b64encode(content).decode(),
    }
    m = parse_manifest(encode(oci_image(config=config)), OCI_MANIFEST)
    assert m.blobs[0].data == content
    bad = {**config, "digest": "sha512:" + hashlib.sha512(b"other").hexdigest()}
    with pytest.raises(ManifestError):
        parse_manifest(encode(oci_image(config=bad)), OCI_MANIFEST)


def test_nondistributable_and_foreign_layers() -> None:
    doc = oci_image(
        layers=[
            desc(OCI_LAYER_TYPE, LAYER1),
            desc("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", LAYER2),
            desc(OCI_LAYER_TYPE, b"with urls", urls=["https://example.com/layer"]),
        ]
    )
    m = parse_manifest(encode(doc), OCI_MANIFEST)
    assert [b.non_distributable for b in m.blobs] == [False, False, True, True]
    assert m.blobs[3].urls == ("https://example.com/layer",)

    docker = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG_TYPE, CONFIG),
        "layers": [
            desc(DOCKER_FOREIGN_TYPE, b"windows base", urls=["https://mcr.example/base"]),
            desc(DOCKER_FOREIGN_TYPE, b"foreign without urls"),
            desc(DOCKER_LAYER_TYPE, LAYER1),
        ],
    }
    m = parse_manifest(encode(docker), DOCKER_MANIFEST)
    assert [b.non_distributable for b in m.blobs] == [False, True, True, False]


def test_descriptor_to_json_round_trip() -> None:
    raw = desc(
        OCI_MANIFEST,
        b"x",
        artifactType="application/vnd.example",
        annotations={"k": "v"},
    )
    m = parse_manifest(encode(oci_index(manifests=[raw])), OCI_INDEX)
    assert m.children[0].to_json() == raw


@pytest.mark.parametrize("schema1_type", DOCKER_SCHEMA1)
def test_schema1_rejected(schema1_type: str) -> None:
    doc = {
        "schemaVersion": 1,
        "name": "library/app",
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": blob_digest(LAYER1)}],
        "history": [{"v1Compatibility": "{}"}],
    }
    with pytest.raises(UnsupportedManifest):
        parse_manifest(encode(doc), schema1_type)
    with pytest.raises(UnsupportedManifest):
        parse_manifest(encode(doc), None)
    # Declared in the payload while the Content-Type says something else.
    with pytest.raises(UnsupportedManifest):
        parse_manifest(encode({**doc, "mediaType": schema1_type}), None)
    assert issubclass(UnsupportedManifest, ManifestError)


def test_media_type_must_match_content_type() -> None:
    with pytest.raises(ManifestError, match="Content-Type"):
        parse_manifest(encode(oci_image()), DOCKER_MANIFEST)
    with pytest.raises(ManifestError, match="Content-Type"):
        parse_manifest(encode(oci_index()), OCI_MANIFEST)


def test_missing_media_type_is_taken_from_content_type() -> None:
    doc = oci_image()
    del doc["mediaType"]
    assert parse_manifest(encode(doc), OCI_MANIFEST).media_type == OCI_MANIFEST
    docker = {"schemaVersion": 2, "config": desc(DOCKER_CONFIG_TYPE, CONFIG), "layers": []}
    assert parse_manifest(encode(docker), DOCKER_MANIFEST).media_type == DOCKER_MANIFEST
    index = oci_index()
    del index["mediaType"]
    assert parse_manifest(encode(index), DOCKER_LIST).media_type == DOCKER_LIST


def test_missing_media_type_inferred_from_shape() -> None:
    image = oci_image()
    del image["mediaType"]
    m = parse_manifest(encode(image), None)
    assert m.media_type == OCI_MANIFEST and len(m.blobs) == 3
    index = oci_index()
    del index["mediaType"]
    m = parse_manifest(encode(index), None)
    assert m.media_type == OCI_INDEX and m.is_index and len(m.children) == 1


def test_media_type_declared_without_content_type() -> None:
    assert parse_manifest(encode(oci_index()), None).media_type == OCI_INDEX


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/vnd.oci.image.layer.v1.tar", "text/plain"]
)
def test_unsupported_media_type(content_type: str) -> None:
    doc = oci_image()
    del doc["mediaType"]
    with pytest.raises(ManifestError, match="media type"):
        parse_manifest(encode(doc), content_type)
    with pytest.raises(ManifestError):
        parse_manifest(encode({**doc, "mediaType": content_type}), None)


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"not json", b"\xff\xfe{}", b'{"a": 1} trailing', b"[]", b'"a string"', b"42"],
)
def test_invalid_json(payload: bytes) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(payload, OCI_MANIFEST)
    assert not isinstance(info.value, UnsupportedManifest)


def _with(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with the item at ``path`` replaced (or removed if ...)."""
    copy: dict[str, Any] = json.loads(json.dumps(doc))
    target: Any = copy
    for key in path[:-1]:
        target = target[key]
    if value is Ellipsis:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return copy


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("mediaType",), 5),
        (("schemaVersion",), "2"),
        (("schemaVersion",), 3),
        (("schemaVersion",), ...),
        (("config",), ...),
        (("config",), "sha256:abc"),
        (("config",), None),
        (("layers",), {"not": "a list"}),
        (("layers", 0), "a string"),
        (("layers", 0, "mediaType"), ...),
        (("layers", 0, "mediaType"), ""),
        (("layers", 0, "mediaType"), 7),
        (("layers", 0, "digest"), ...),
        (("layers", 0, "digest"), 12),
        (("layers", 0, "size"), ...),
        (("layers", 0, "size"), "15"),
        (("layers", 0, "size"), 1.5),
        (("layers", 0, "size"), True),
        (("layers", 0, "size"), None),
        (("layers", 0, "urls"), "https://example.com"),
        (("layers", 0, "urls"), [1]),
        (("layers", 0, "annotations"), {"k": 1}),
        (("layers", 0, "annotations"), ["k"]),
        (("layers", 0, "artifactType"), 1),
        (("layers", 0, "data"), 1),
        (("artifactType",), 1),
        (("annotations",), "k=v"),
        (("annotations",), {"k": None}),
        (("subject",), "sha256:abc"),
        (("subject",), {"mediaType": OCI_MANIFEST}),
    ],
)
def test_wrong_types_in_image(path: tuple[str | int, ...], value: Any) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(encode(_with(oci_image(), path, value)), None)
    assert not isinstance(info.value, UnsupportedManifest)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("manifests",), ...),
        (("manifests",), None),
        (("manifests",), {"a": 1}),
        (("manifests", 0), []),
        (("manifests", 0, "size"), -1),
        (("manifests", 0, "digest"), "sha256:short"),
    ],
)
def test_wrong_types_in_index(path: tuple[str | int, ...], value: Any) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(encode(_with(oci_index(), path, value)), OCI_INDEX)


@pytest.mark.parametrize("where", [("config",), ("layers", 1), ("subject",)])
def test_negative_size(where: tuple[str | int, ...]) -> None:
    doc = oci_image(subject=desc(OCI_MANIFEST, b"s"))
    with pytest.raises(ManifestError, match="size"):
        parse_manifest(encode(_with(doc, (*where, "size"), -1)), OCI_MANIFEST)


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:abc",
        "sha256:" + "A" * 64,
        "md5:" + hashlib.md5(b"x").hexdigest(),
        "sha512:" + "0" * 64,
        "",
        "not a digest",
        "sha256:../../etc/passwd",
    ],
)
def test_bad_digest_in_descriptor(digest: str) -> None:
    with pytest.raises(ManifestError, match="digest"):
        parse_manifest(encode(_with(oci_image(), ("layers", 0, "digest"), digest)), None)
    with pytest.raises(ManifestError):
        parse_manifest(encode(_with(oci_index(), ("manifests", 0, "digest"), digest)), None)
    with pytest.raises(ManifestError):
        parse_manifest(encode(_with(oci_image(), ("config", "digest"), digest)), None)


def test_error_messages_name_the_place() -> None:
    with pytest.raises(ManifestError, match=r"layers\[1\]"):
        parse_manifest(encode(_with(oci_image(), ("layers", 1, "size"), -5)), None)
    with pytest.raises(ManifestError, match="config"):
        parse_manifest(encode(_with(oci_image(), ("config", "mediaType"), 3)), None)
    with pytest.raises(ManifestError, match=r"manifests\[0\]"):
        parse_manifest(encode(_with(oci_index(), ("manifests", 0, "digest"), "x")), None)
