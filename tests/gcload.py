"""The workload of the GC concurrency test: pushes, pulls, retags and deletes over HTTP and
with skopeo, while ``dockyard gc --json`` runs over and over against the same data.

Every task owns its repositories, so the ``Ledger`` knows exactly which manifest each tag
must give back; blobs are shared across tasks and repositories (a base pool, linked in a
seed repository and mounted from it, and a pool each task recycles: its blobs lose their
last reference when a manifest is deleted and are pushed again later, often after a
``HEAD`` that found them still there, the race a collector must survive). A push may
fail only with ``MANIFEST_BLOB_UNKNOWN`` (counted); anything else is a failure, and so is
a pull that does not give back what was pushed.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from tests.imagegen import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Image, OCILayout

BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"
SEED_REPOSITORY = "gcc/base"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Pushed:
    """A manifest as pushed, with every blob it references."""

    manifest: bytes
    blobs: Mapping[str, bytes]

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


@dataclass
class Ledger:
    """What every tag must give back, what happened, and what went wrong."""

    tags: dict[tuple[str, str], Pushed] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    gc_reports: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)

    def forget_manifest(self, repository: str, digest: str) -> None:
        for key in [k for k, p in self.tags.items() if k[0] == repository and p.digest == digest]:
            del self.tags[key]

    def summary(self) -> str:
        deleted = Counter[str]()
        for report in self.gc_reports:
            for key in ("deleted_blobs", "deleted_manifests", "deleted_links", "freed_bytes"):
                deleted[key] += int(report.get(key, 0))
        return (
            ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
            + f"; gc deleted {dict(deleted)}; {len(self.tags)} tags live"
        )


def error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["errors"][0]["code"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"HTTP {response.status_code}"


def manifest_for(config: bytes, layers: list[bytes], serial: str) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(d), "size": len(d)} for d in layers],
        "annotations": {"serial": serial},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def blob_pool(seed: int, count: int, low: int = 2048, high: int = 12_288) -> list[bytes]:
    rng = random.Random(seed)
    return [f"{seed}/{i}/".encode() + rng.randbytes(rng.randint(low, high)) for i in range(count)]


class Api:
    """One task's HTTP client: blob uploads of every kind, manifests, pulls."""

    def __init__(self, client: httpx.AsyncClient, rng: random.Random, ledger: Ledger) -> None:
        self.c, self.rng, self.ledger = client, rng, ledger

    async def upload(self, repo: str, data: bytes, mount_from: str | None = None) -> None:
        digest = sha256(data)
        location: str | None = None
        if mount_from is not None:
            r = await self.c.post(
                f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": mount_from}
            )
            if r.status_code == 201:
                self.ledger.counts["mounts"] += 1
                return
            if r.status_code != 202:
                raise AssertionError(f"mount {digest}: {r.status_code} {r.text}")
            location = r.headers["location"]  # not mountable: upload into this session
        if location is None and self.rng.random() < 0.5:
            r = await self.c.post(
                f"/v2/{repo}/blobs/uploads/",
                params={"digest": digest},
                content=data,
                headers={"content-type": "application/octet-stream"},
            )
            self.ledger.counts["monolithic uploads"] += 1
        else:
            if location is None:
                r = await self.c.post(f"/v2/{repo}/blobs/uploads/")
                assert r.status_code == 202, r.text
                location = r.headers["location"]
            cut = self.rng.randrange(1, len(data))
            r = await self.c.patch(
                location,
                content=data[:cut],
                headers={
                    "content-range": f"0-{cut - 1}",
                    "content-type": "application/octet-stream",
                },
            )
            assert r.status_code == 202, r.text
            r = await self.c.put(
                r.headers["location"],
                params={"digest": digest},
                content=data[cut:],
                headers={"content-range": f"{cut}-{len(data) - 1}"},
            )
            self.ledger.counts["chunked uploads"] += 1
        if r.status_code != 201:
            raise AssertionError(f"upload {digest} to {repo}: {r.status_code} {r.text}")

    async def ensure(self, repo: str, data: bytes, mount_from: str | None = None) -> None:
        """Like a client: HEAD first, and upload (or mount) only what is missing."""
        r = await self.c.head(f"/v2/{repo}/blobs/{sha256(data)}")
        if r.status_code == 200:
            self.ledger.counts["blobs already there"] += 1
            return
        await self.upload(repo, data, mount_from)

    async def put_manifest(self, repo: str, tag: str, pushed: Pushed) -> bool:
        """PUT by tag; True if stored, False on MANIFEST_BLOB_UNKNOWN (the allowed loss)."""
        r = await self.c.put(
            f"/v2/{repo}/manifests/{tag}",
            content=pushed.manifest,
            headers={"content-type": OCI_MANIFEST},
        )
        if r.status_code == 201:
            self.ledger.tags[(repo, tag)] = pushed
            self.ledger.counts["manifest pushes"] += 1
            return True
        if r.status_code == 400 and error_code(r) == BLOB_UNKNOWN:
            self.ledger.counts[BLOB_UNKNOWN] += 1
            return False
        self.ledger.fail(f"PUT {repo}:{tag}: {r.status_code} {r.text[:300]}")
        return False

    async def verify(self, repo: str, tag: str, pushed: Pushed) -> None:
        """The tag gives back the manifest and every blob byte for byte."""
        r = await self.c.get(f"/v2/{repo}/manifests/{tag}", headers={"accept": OCI_MANIFEST})
        if r.status_code != 200 or r.content != pushed.manifest:
            self.ledger.fail(f"GET {repo}:{tag}: {r.status_code} {r.text[:200]}")
            return
        for digest, data in pushed.blobs.items():
            r = await self.c.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
            if r.status_code != 200 or r.content != data:
                self.ledger.fail(f"GET {repo} blob {digest} of {tag}: {r.status_code}")
        self.ledger.counts["verified pulls"] += 1


async def api_pusher(
    client: httpx.AsyncClient,
    task: int,
    ledger: Ledger,
    deadline: float,
    bases: list[bytes],
    grace_period: float,
) -> None:
    """Push images into this task's repositories in a loop; retag, delete tags and
    manifests, abandon uploads, pull back what is tagged."""
    rng = random.Random(1000 + task)
    api = Api(client, rng, ledger)
    repos = [f"gcc/api-{task}-{r}" for r in range(3)]
    recycled = blob_pool(task, 12)
    serial = 0
    while anyio.current_time() < deadline:
        repo = rng.choice(repos)
        mine = [(k, p) for k, p in ledger.tags.items() if k[0] == repo]
        action = rng.random()
        if action < 0.55 or not mine:
            serial += 1
            config = f'{{"task":{task},"serial":{serial}}}'.encode()
            layers = [rng.choice(bases), *rng.sample(recycled, rng.randint(1, 3))]
            if rng.random() < 0.3:
                layers.append(rng.randbytes(rng.randint(512, 4096)))  # used once
            await api.ensure(repo, config)
            for data in layers:
                source = SEED_REPOSITORY if data in bases else rng.choice(repos)
                mount = source if source != repo and rng.random() < 0.5 else None
                await api.ensure(repo, data, mount)
            if rng.random() < 0.3:  # a slow CI job: layers up, the manifest much later
                await anyio.sleep(rng.uniform(0, 1.5 * grace_period))
            pushed = Pushed(
                manifest_for(config, layers, f"{task}/{serial}"),
                {sha256(d): d for d in [config, *layers]},
            )
            tag = f"t{rng.randrange(4)}"
            if await api.put_manifest(repo, tag, pushed) and rng.random() < 0.3:
                await api.verify(repo, tag, pushed)
        elif action < 0.65:  # retag
            (_, _), pushed = rng.choice(mine)
            await api.put_manifest(repo, f"t{rng.randrange(4, 6)}", pushed)
        elif action < 0.75:  # untag
            (_, tag), _ = rng.choice(mine)
            r = await client.delete(f"/v2/{repo}/manifests/{tag}")
            if r.status_code != 202:
                ledger.fail(f"DELETE {repo}:{tag}: {r.status_code} {r.text[:200]}")
            ledger.tags.pop((repo, tag), None)
            ledger.counts["tag deletes"] += 1
        elif action < 0.85:  # delete the manifest: its recycled blobs lose a reference
            (_, _), pushed = rng.choice(mine)
            r = await client.delete(f"/v2/{repo}/manifests/{pushed.digest}")
            if r.status_code != 202:
                ledger.fail(f"DELETE {repo}@{pushed.digest}: {r.status_code} {r.text[:200]}")
            ledger.forget_manifest(repo, pushed.digest)
            ledger.counts["manifest deletes"] += 1
        elif action < 0.92:  # abandoned: blobs up, no manifest ever, or half an upload
            if rng.random() < 0.5:
                await api.upload(repo, rng.randbytes(rng.randint(512, 4096)))
            else:
                r = await client.post(f"/v2/{repo}/blobs/uploads/")
                await client.patch(
                    r.headers["location"],
                    content=b"x" * 1000,
                    headers={"content-range": "0-999", "content-type": "application/octet-stream"},
                )
            ledger.counts["abandoned uploads"] += 1
        else:
            (_, tag), pushed = rng.choice(mine)
            await api.verify(repo, tag, pushed)


async def skopeo_pusher(
    skopeo: str, host: str, layout: OCILayout, images: list[Image], ledger: Ledger, deadline: float
) -> None:
    """skopeo copies the layout's images in and deletes some again (by digest, as skopeo
    does); its pushes skip the layers a HEAD finds, which a collector may be deleting."""
    rng = random.Random(7)
    repos = ["gcc/sk-0", "gcc/sk-1"]
    flags = ["--insecure-policy"]
    while anyio.current_time() < deadline:
        repo, i = rng.choice(repos), rng.randrange(len(images))
        tag = f"v{rng.randrange(3)}"
        if rng.random() < 0.25 and (repo, tag) in ledger.tags:
            cmd = [skopeo, *flags, "delete", "--tls-verify=false", f"docker://{host}/{repo}:{tag}"]
            done = await anyio.run_process(cmd, check=False)
            if done.returncode != 0:
                ledger.fail(f"skopeo delete {repo}:{tag}: {done.stderr.decode()[-500:]}")
            ledger.forget_manifest(repo, ledger.tags[(repo, tag)].digest)
            ledger.counts["skopeo deletes"] += 1
            continue
        cmd = [
            skopeo, *flags, "copy", "--dest-tls-verify=false", "--preserve-digests",
            layout.ref(f"img{i}"), f"docker://{host}/{repo}:{tag}",
        ]  # fmt: skip
        done = await anyio.run_process(cmd, check=False)
        image = images[i]
        if done.returncode == 0:
            blobs = {image.config.digest: image.config.data}
            blobs.update({layer.digest: layer.blob.data for layer in image.layers})
            ledger.tags[(repo, tag)] = Pushed(image.manifest.data, blobs)
            ledger.counts["skopeo pushes"] += 1
        elif b"manifest blob unknown" in done.stderr.lower() or BLOB_UNKNOWN.encode() in (
            done.stderr
        ):
            ledger.counts[f"skopeo {BLOB_UNKNOWN}"] += 1
        else:
            ledger.fail(f"skopeo copy to {repo}:{tag}: {done.stderr.decode()[-800:]}")


def gc_command(config: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "dockyard.cli", "gc", "--config", str(config), *flags]


async def run_gc(config: Path, env: Mapping[str, str], ledger: Ledger) -> dict[str, Any] | None:
    """One ``dockyard gc --json``: its report, or None when another run held the lease."""
    done = await anyio.run_process(
        gc_command(config, "--json"),
        check=False,
        env=dict(env),
    )
    if done.returncode == 3:
        ledger.counts["gc runs refused (lease held)"] += 1
        return None
    if done.returncode != 0:
        ledger.fail(f"dockyard gc exited {done.returncode}: {done.stderr.decode()[-2000:]}")
        return None
    report: dict[str, Any] = json.loads(done.stdout)
    ledger.gc_reports.append(report)
    ledger.counts["gc runs"] += 1
    return report


async def gc_loop(
    config: Path, env: Mapping[str, str], ledger: Ledger, deadline: float, seed: int
) -> None:
    """``dockyard gc --json`` again and again, a random pause between runs."""
    rng = random.Random(seed)
    while anyio.current_time() < deadline:
        await run_gc(config, env, ledger)
        await anyio.sleep(rng.uniform(0, 0.5))
