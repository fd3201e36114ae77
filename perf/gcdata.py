"""A data directory for garbage collection, made fast, with what a collection must keep.

``generate`` writes ``Shape.blobs`` blobs (small, content-addressed files in the
filesystem driver's layout) and ``Shape.manifests`` manifests straight into a migrated
SQLite file in one transaction: no server, no HTTP, seconds for 100,000 blobs. The mix:

- images in repositories ``gen/ci/<n>`` (even n: under a ``delete_untagged_days`` policy)
  and ``gen/keep/<n>`` (no policy); each has its own config and layers plus one base
  layer shared with many others, linked in every repository that uses it;
- most images tagged; some untagged, old (30 days) or recent (1 day);
- tagged indexes over two untagged images each (live through the index);
- referrers (signatures): most with a tagged subject, some whose subject is an old
  untagged image in a policy repository (they go with it) or was never stored (orphans,
  collected once older than the grace period, policy or not: a referrer may be pushed
  before its subject, and the grace period covers that);
- blobs with no link at all and blobs linked but used by no manifest, most old, some
  recent (inside any grace period: to be kept).

``expected`` is the reference model of a collection over that data: the manifests, links
and blobs that must survive it; everything else is collectable. Tests compare the store
after ``dockyard gc`` with it; ``perf.gc`` compares the counts the collector reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

DAY = 86_400.0
OLD_AGE = 30 * DAY
UNTAGGED_RECENT_AGE = 1 * DAY
# The policy the ``gen/ci/*`` repositories are under (``untagged_policy_toml``).
UNTAGGED_DAYS = 7.0
POLICY_GLOB = "gen/ci/*"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SIGNATURE = "application/vnd.example.signature.v1+json"

Key = tuple[str, str]  # (repository, digest)


@dataclass(frozen=True)
class Shape:
    blobs: int = 100_000
    manifests: int = 10_000
    repositories: int = 100
    untagged: float = 0.15  # of plain images: pushed without a tag
    indexes: float = 0.03  # of manifests: tagged indexes (each over 2 more images)
    referrers: float = 0.04  # of manifests: signatures
    orphaned: float = 0.3  # of referrers: subject dead (policy repositories only)
    unlinked: float = 0.08  # of blobs: no link
    dangling: float = 0.04  # of blobs: linked, used by no manifest
    recent: float = 0.2  # of unlinked and dangling blobs: used just now
    bases: float = 0.01  # of referenced blobs: base layers shared across images
    min_size: int = 64
    max_size: int = 1024
    seed: int = 11

    @classmethod
    def quick(cls) -> Shape:
        return cls(blobs=2_000, manifests=200, repositories=8)


@dataclass
class Manifest:
    repository: str
    digest: str
    media_type: str
    payload: bytes
    pushed: float
    blobs: list[str]
    children: list[str] = field(default_factory=list)
    subject: str | None = None
    artifact_type: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Dataset:
    root: Path
    now: float
    blobs: dict[str, tuple[int, float]]  # digest -> (size, last used)
    links: dict[Key, float]  # -> linked
    manifests: dict[Key, Manifest]
    policy_repositories: set[str]

    @property
    def database(self) -> Path:
        return self.root / "dockyard.sqlite3"

    @property
    def tags(self) -> dict[tuple[str, str], str]:
        return {(m.repository, t): m.digest for m in self.manifests.values() for t in m.tags}


@dataclass(frozen=True)
class Expected:
    """What survives a completed collection (the rest is collectable)."""

    manifests: frozenset[Key]
    links: frozenset[Key]
    blobs: frozenset[str]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class _Builder:
    def __init__(self, root: Path, shape: Shape, now: float) -> None:
        self.root, self.shape, self.now = root, shape, now
        self.old = now - OLD_AGE
        self.rng = random.Random(shape.seed)
        self.blobs: dict[str, tuple[int, float]] = {}
        self.links: dict[Key, float] = {}
        self.manifests: dict[Key, Manifest] = {}
        self.serial = 0
        for prefix in range(256):
            (root / "blobs" / "sha256" / f"{prefix:02x}").mkdir(parents=True, exist_ok=True)

    def blob(self, used: float) -> str:
        """A new blob's bytes written where the filesystem driver keeps them; its digest."""
        self.serial += 1
        size = self.rng.randint(self.shape.min_size, self.shape.max_size)
        data = self.serial.to_bytes(8, "big") + self.rng.randbytes(size - 8)
        digest = sha256(data)
        hex_ = digest.removeprefix("sha256:")
        with open(self.root / "blobs" / "sha256" / hex_[:2] / hex_, "wb") as f:
            f.write(data)
        self.blobs[digest] = (size, used)
        return digest

    def descriptor(self, media_type: str, digest: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": digest, "size": self.blobs[digest][0]}

    def manifest(self, m: Manifest) -> Manifest:
        self.manifests[(m.repository, m.digest)] = m
        for digest in m.blobs:
            self.links.setdefault((m.repository, digest), m.pushed)
        return m

    def image(
        self, repository: str, config: str, layers: list[str], pushed: float, **extra: object
    ) -> Manifest:
        doc: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.descriptor(OCI_CONFIG, config),
            "layers": [self.descriptor(OCI_LAYER, d) for d in layers],
        }
        subject = extra.get("subject")
        if isinstance(subject, Manifest):
            doc["artifactType"] = SIGNATURE
            doc["subject"] = {
                "mediaType": subject.media_type,
                "digest": subject.digest,
                "size": len(subject.payload),
            }
        doc["annotations"] = {"serial": str(self.serial)}  # distinct even with equal blobs
        payload = _json(doc)
        return self.manifest(
            Manifest(
                repository,
                sha256(payload),
                OCI_MANIFEST,
                payload,
                pushed,
                [config, *layers],
                subject=subject.digest if isinstance(subject, Manifest) else None,
                artifact_type=SIGNATURE if isinstance(subject, Manifest) else None,
            )
        )

    def index(self, repository: str, children: list[Manifest], pushed: float) -> Manifest:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": c.media_type, "digest": c.digest, "size": len(c.payload)}
                for c in children
            ],
        }
        payload = _json(doc)
        return self.manifest(
            Manifest(
                repository,
                sha256(payload),
                OCI_INDEX,
                payload,
                pushed,
                [],
                children=[c.digest for c in children],
            )
        )


def repositories(shape: Shape) -> list[str]:
    return [f"gen/{'ci' if i % 2 == 0 else 'keep'}/{i}" for i in range(shape.repositories)]


def _build(b: _Builder) -> None:
    shape, rng, now, old = b.shape, b.rng, b.now, b.old
    repos = repositories(shape)
    n_indexes = int(shape.manifests * shape.indexes)
    n_referrers = int(shape.manifests * shape.referrers)
    n_plain = shape.manifests - 3 * n_indexes - n_referrers
    assert n_plain > 0, "too few manifests for the mix"
    n_unlinked = int(shape.blobs * shape.unlinked)
    n_dangling = int(shape.blobs * shape.dangling)
    referenced = shape.blobs - n_unlinked - n_dangling - 2 * n_referrers
    n_bases = max(1, int(referenced * shape.bases))
    n_images = n_plain + 2 * n_indexes
    unique = referenced - n_bases  # configs and own layers, spread over the images
    assert unique >= n_images, "too few blobs for the manifests"
    bases = [b.blob(old) for _ in range(n_bases)]

    def image(i: int, pushed: float, repository: str | None = None) -> Manifest:
        own = unique // n_images + (1 if i < unique % n_images else 0)
        config, *layers = [b.blob(pushed) for _ in range(own)]
        repository = repository or repos[i % len(repos)]
        return b.image(repository, config, [rng.choice(bases), *layers], pushed)

    tagged: list[Manifest] = []
    untagged_old: list[Manifest] = []
    for i in range(n_plain):
        if rng.random() < shape.untagged:
            recent = rng.random() < 0.5
            m = image(i, now - UNTAGGED_RECENT_AGE if recent else old)
            if not recent and m.repository.startswith("gen/ci/"):
                untagged_old.append(m)
        else:
            m = image(i, old)
            m.tags.append(f"t{i}")
            tagged.append(m)
    for j in range(n_indexes):
        i = n_plain + 2 * j
        repository = repos[j % len(repos)]
        children = [image(i, old, repository), image(i + 1, old, repository)]
        b.index(repository, children, old).tags.append(f"multi{j}")
    policy_repos = [r for r in repos if r.startswith("gen/ci/")]
    for _ in range(n_referrers):
        if rng.random() >= shape.orphaned:
            subject = rng.choice(tagged)
        elif untagged_old and rng.random() < 0.5:
            subject = rng.choice(untagged_old)  # goes with its subject
        else:  # a subject never stored
            ghost = _json({"ghost": b.serial})
            subject = Manifest(
                rng.choice(policy_repos), sha256(ghost), OCI_MANIFEST, ghost, old, []
            )
        b.image(subject.repository, b.blob(old), [b.blob(old)], old, subject=subject)
    for _ in range(n_dangling):
        used = now if rng.random() < shape.recent else old
        b.links[(rng.choice(repos), b.blob(used))] = used
    for _ in range(n_unlinked):
        b.blob(now if rng.random() < shape.recent else old)


def generate(root: Path, shape: Shape, now: float | None = None) -> Dataset:
    """Write ``shape``'s data under ``root`` (the storage root and the SQLite file)."""
    from dockyard.meta.sqlite import SQLiteMeta

    root.mkdir(parents=True, exist_ok=True)
    b = _Builder(root, shape, time.time() if now is None else now)
    _build(b)
    database = root / "dockyard.sqlite3"
    meta = SQLiteMeta(database)
    try:
        meta.migrate()
    finally:
        meta.close()
    _write_rows(database, b)
    policy = {r for r in repositories(shape) if r.startswith("gen/ci/")}
    return Dataset(root, b.now, b.blobs, b.links, b.manifests, policy)


def _write_rows(database: Path, b: _Builder) -> None:
    repos = repositories(b.shape)
    ids = {name: i + 1 for i, name in enumerate(repos)}
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO repositories (id, name, created) VALUES (?, ?, ?)",
            [(ids[r], r, b.old) for r in repos],
        )
        conn.executemany(
            "INSERT INTO blobs (digest, size, created, touched) VALUES (?, ?, ?, ?)",
            [(d, size, used, used) for d, (size, used) in b.blobs.items()],
        )
        conn.executemany(
            "INSERT INTO repository_blobs (repository_id, digest, linked) VALUES (?, ?, ?)",
            [(ids[r], d, linked) for (r, d), linked in b.links.items()],
        )
        conn.executemany(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject,"
            " size, payload, annotations, pushed, touched) VALUES (?,?,?,?,?,?,?,NULL,?,?)",
            [
                (ids[m.repository], m.digest, m.media_type, m.artifact_type, m.subject,
                 len(m.payload), m.payload, m.pushed, m.pushed)
                for m in b.manifests.values()
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO manifest_references (repository_id, manifest_digest, child_digest, kind)"
            " VALUES (?, ?, ?, ?)",
            [
                (ids[m.repository], m.digest, child, kind)
                for m in b.manifests.values()
                for kind, children in (("blob", m.blobs), ("manifest", m.children))
                for child in children
            ],
        )
        conn.executemany(
            "INSERT INTO tags (repository_id, name, digest, pushed) VALUES (?, ?, ?, ?)",
            [
                (ids[m.repository], t, m.digest, m.pushed)
                for m in b.manifests.values()
                for t in m.tags
            ],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def expected(data: Dataset, started: float, grace_period: float) -> Expected:
    """What a collection that started at ``started`` keeps: manifests tagged, untagged in
    a repository with no policy or pushed within the policy's days, listed by a live
    index or referring to a live subject (a referrer whose subject is not stored only
    within the grace period); the links they need and any link made within the grace
    period; the blobs of those links and any blob used within it."""
    cutoff = started - grace_period
    untagged_cutoff = started - UNTAGGED_DAYS * DAY

    def root(m: Manifest) -> bool:
        if m.tags:
            return True
        if m.subject is not None and (m.repository, m.subject) not in data.manifests:
            return m.pushed >= cutoff
        policy = m.repository in data.policy_repositories
        return not policy or m.pushed >= min(untagged_cutoff, cutoff)

    live = {key for key, m in data.manifests.items() if root(m)}
    while True:
        more = {
            (m.repository, child)
            for key, m in data.manifests.items()
            if key in live
            for child in m.children
            if (m.repository, child) in data.manifests
        } | {
            key
            for key, m in data.manifests.items()
            if m.subject is not None and (m.repository, m.subject) in live
        }
        if more <= live:
            break
        live |= more
    needed = {(repo, d) for repo, digest in live for d in data.manifests[(repo, digest)].blobs}
    links = needed | {key for key, linked in data.links.items() if linked >= cutoff}
    blobs = {d for _, d in links} | {d for d, (_, used) in data.blobs.items() if used >= cutoff}
    return Expected(frozenset(live), frozenset(links), frozenset(blobs))


def untagged_policy_toml(days: float = UNTAGGED_DAYS) -> str:
    """The ``[[retention.policies]]`` the ``gen/ci/*`` repositories are under."""
    return (
        f'[[retention.policies]]\nrepositories = ["{POLICY_GLOB}"]\ndelete_untagged_days = {days}\n'
    )


def copy_data(source: Path, target: Path) -> None:
    """``target`` becomes a copy of the data directory ``source``: blob files hard-linked
    (a collector only ever unlinks them), the SQLite files copied."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=os.link)
    for database in source.glob("dockyard.sqlite3*"):
        (target / database.name).unlink()
        shutil.copy2(database, target / database.name)


def gc_config(path: Path, root: Path, grace_period: float, gc: str = "") -> None:
    """Write a config file for ``dockyard gc`` over ``root`` with the ``gen/ci/*``
    policy (its untagged manifests are collected after a day)."""
    from dockyard.config import load

    text = f'[storage]\nroot = "{root}"\n\n[gc]\ngrace_period = {grace_period}\n{gc}\n'
    path.write_text(text + untagged_policy_toml())
    load(str(path))  # the policy must load: a loader that drops it would skip coverage
