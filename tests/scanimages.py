"""Small images with packages tests/trivydb.py's made-up advisories hit, and the exact
findings trivy must report for them.

The images are built FROM scratch here (no base image can be downloaded): one layer with
``etc/alpine-release`` and ``etc/os-release`` (trivy detects Alpine 3.22 from them) and
an apk package database ``lib/apk/db/installed`` (what trivy's apk analyzer reads: P name,
V version, o origin, the source package advisories name). A second image has every package
at its fixed version (no findings), and ``NOT_AN_IMAGE`` is an artifact trivy cannot scan.
"""

from __future__ import annotations

import httpx

from tests.imagegen import OCI_MANIFEST, Image, build_image, canonical_json, make_layer, sha256
from tests.trivydb import ADVISORIES, ADVISORIES_V2, ALPINE_RELEASE, Advisory, push_blob

# name -> installed version
PACKAGES: dict[str, str] = {
    "musl": "1.2.5-r0",
    "zlib": "1.3.1-r1",
    "busybox": "1.37.0-r5",
    "ca-certificates-bundle": "20241121-r2",  # no advisory at all
}
PATCHED: dict[str, str] = {
    "musl": "1.2.5-r1",
    "zlib": "1.3.1-r3",
    "busybox": "1.37.0-r9",
    "ca-certificates-bundle": "20241121-r2",
}


def apk_installed(packages: dict[str, str]) -> bytes:
    stanzas = [
        f"P:{name}\nV:{version}\nA:x86_64\nL:MIT\no:{name}\nT:{name} (made up)\n"
        for name, version in sorted(packages.items())
    ]
    return ("\n".join(stanzas) + "\n").encode()


def alpine_image(packages: dict[str, str], seed: int = 1) -> Image:
    os_release = (
        f'NAME="Alpine Linux"\nID=alpine\nVERSION_ID={ALPINE_RELEASE}.0\n'
        f'PRETTY_NAME="Alpine Linux v{ALPINE_RELEASE}"\n'
    )
    layer = make_layer(
        seed,
        files=1,
        file_size=64,
        directory="opt/app",
        extra={
            "etc/alpine-release": f"{ALPINE_RELEASE}.0\n".encode(),
            "etc/os-release": os_release.encode(),
            "lib/apk/db/installed": apk_installed(packages),
        },
    )
    return build_image([layer])


VULNERABLE = alpine_image(PACKAGES)
PATCHED_IMAGE = alpine_image(PATCHED, seed=2)


def _version_key(version: str) -> tuple[tuple[int, ...], int]:
    # Enough of apk's ordering for the versions above: dotted numbers, then -rN.
    base, _, release = version.partition("-r")
    return tuple(int(part) for part in base.split(".")), int(release or 0)


def expected_findings(
    advisories: tuple[Advisory, ...] = ADVISORIES, packages: dict[str, str] = PACKAGES
) -> set[tuple[str, str, str, str, str]]:
    """(id, severity, package, installed, fixed) trivy must report: the advisories whose
    fixed version is above the installed one."""
    return {
        (a.id, a.severity, a.package, packages[a.package], a.fixed)
        for a in advisories
        if a.package in packages and _version_key(packages[a.package]) < _version_key(a.fixed)
    }


EXPECTED = expected_findings()
EXPECTED_V2 = expected_findings(ADVISORIES_V2)
# Spelled out too, so a mistake in expected_findings cannot hide one in the fixtures.
assert {f[0] for f in EXPECTED} == {"CVE-2099-10001", "CVE-2099-10002", "CVE-2099-10003"}
assert {f[0] for f in EXPECTED_V2} == {f[0] for f in EXPECTED} | {"CVE-2099-10005"}


async def push_image(
    client: httpx.AsyncClient, base: str, repository: str, image: Image, tag: str = "latest"
) -> str:
    """Push ``image`` (blobs, then the manifest under ``tag``); its digest."""
    await push_blob(client, base, repository, image.config.data)
    for layer in image.layers:
        await push_blob(client, base, repository, layer.blob.data)
    put = await client.put(
        f"{base}/v2/{repository}/manifests/{tag}",
        content=image.manifest.data,
        headers={"content-type": image.manifest.media_type},
    )
    assert put.status_code == 201, put.text
    return image.digest


async def push_not_an_image(client: httpx.AsyncClient, base: str, repository: str) -> str:
    """An OCI artifact (a made-up artifactType, one JSON layer) trivy cannot scan."""
    config = b"{}"
    layer = b'{"hello": "not an image"}'
    await push_blob(client, base, repository, config)
    await push_blob(client, base, repository, layer)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.notes.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256(config),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.example.notes.v1+json",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    )
    put = await client.put(
        f"{base}/v2/{repository}/manifests/notes",
        content=manifest,
        headers={"content-type": OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    return sha256(manifest)
