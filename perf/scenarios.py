"""The scenarios. Each has an untimed ``setup`` per registry, an untimed ``prepare`` per
repeat (data made and hashed here, shared by both registries of a comparison) and a timed
``run`` that yields one :class:`Record` per case.

Server CPU is read over each timed phase only (:func:`measured`). Every figure a record
carries is named with its unit (``_mib_s``, ``_ms``, ``_s_per_gib``...); ``report``
knows which direction is better.

=============  ==========================================================================
blob-push      N blobs of S bytes at concurrency C: ``mono`` (POST, PUT with the body)
               and ``chunked`` (POST, PATCHes of 8 MiB with Content-Range, empty PUT).
               Fresh content every repeat.
blob-pull      ``full``: GETs of N blobs of S bytes; ``ranged``: 1 MiB GETs at random
               offsets. Blobs pushed once in setup.
manifest-rps   HEAD and GET by tag and by digest at 16 and 64 connections, for a fixed
               time: req/s, p50/p99.
ci-storm       K images pushed concurrently as docker and skopeo do: HEAD each blob,
               mount the shared base layer from the base image's repository, upload
               missing layers (POST, PATCH, PUT), manifest PUT by tag. Fresh small
               layers every repeat.
pull-storm     K clients pulling whole images (manifest, config, layers).
catalog        a repository with 10,000 tags and a catalog of 1,000 repositories, each
               enumerated with n=1000 following Link headers.
big-blob       one upload of 4 GiB (``--big-size``), server peak RSS growth sampled from
               /proc. The same content every repeat (the second is deduplicated at
               commit by both registries, after all bytes were received and hashed).
events         dockyard only (a registry without the websocket feed is skipped and
               reported so): ``delivery``, N websocket subscribers (``feed.py``) and M
               manifest pushes by tag, paced; per subscriber and push the time from the
               PUT response to the event's arrival. ``pulls-blob-full`` and
               ``pulls-get-tag-c16``: the blob-pull full and manifest GET workloads
               against the target and its twin with pull events off
               (``Target.pulls_off``), alternately (on, off, off, on, ...).
=============  ==========================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

from perf import feed, oci
from perf.data import ACCEPT, OCI_MANIFEST, Blob, GiB, Image, MiB, blob, image, streamed_blob
from perf.httpclient import Connection, open_connection, split_url
from perf.load import LoadResult, Task, run_tasks
from perf.procstat import MemorySampler, cpu_seconds, process_tree
from perf.rate import RateResult, build_h2_requests, build_requests, run_h2, run_py, run_wrk
from perf.tls import ClientTLS

T = TypeVar("T")


@dataclass
class Params:
    """Every size and count; ``quick()`` is a tiny version for smoke runs and tests."""

    push_count: int = 8
    push_size: int = 64 * MiB
    push_concurrency: int = 4
    push_chunk: int = 8 * MiB
    pull_count: int = 8
    pull_size: int = 64 * MiB
    pull_rounds: int = 2
    pull_concurrency: int = 4
    range_size: int = 1 * MiB
    range_requests: int = 4000
    range_concurrency: int = 8
    rps_tags: int = 16
    rps_connections: tuple[int, ...] = (16, 64)
    rps_duration: float = 5.0
    rps_max_requests: int = 1_000_000
    rps_engine: str = "py"  # or "wrk" (GET cases only; HEAD cases stay on py)
    storm_images: int = 32
    storm_concurrency: int = 8
    storm_repos: int = 8
    storm_base_size: int = 32 * MiB
    storm_layers: int = 2
    storm_layer_size: int = 1 * MiB
    pullstorm_images: int = 8
    pullstorm_clients: int = 16
    pullstorm_per_client: int = 4
    pullstorm_base_size: int = 16 * MiB
    pullstorm_layers: int = 2
    pullstorm_layer_size: int = 2 * MiB
    catalog_tags: int = 10_000
    catalog_repos: int = 1_000
    catalog_page: int = 1_000
    catalog_passes: int = 3
    big_size: int = 4 * GiB
    events_subscribers: int = 1000
    events_pushes: int = 50
    events_rate: float = 10.0  # pushes per second
    events_procs: int = 2  # subscriber processes (epoll loops)
    events_grace: float = 10.0  # how long after the last push events may still arrive
    events_setup_timeout: float = 120.0  # to connect and welcome every subscriber
    events_pull_connections: int = 16  # the manifest GET half of the on/off comparison
    events_flush_wait: float = 0.6  # after a pull workload: pull events reach the log
    procs: int = 2  # client processes for request-heavy phases
    time_limit: float = 600.0  # per timed phase
    setup_concurrency: int = 8

    @classmethod
    def quick(cls) -> Params:
        return cls(
            push_count=4,
            push_size=2 * MiB,
            push_concurrency=2,
            push_chunk=512 * 1024,
            pull_count=2,
            pull_size=4 * MiB,
            pull_rounds=2,
            pull_concurrency=2,
            range_requests=40,
            range_concurrency=4,
            rps_tags=4,
            rps_connections=(16,),
            rps_duration=0.5,
            rps_max_requests=20_000,
            storm_images=6,
            storm_concurrency=3,
            storm_repos=2,
            storm_base_size=2 * MiB,
            storm_layers=2,
            storm_layer_size=64 * 1024,
            pullstorm_images=2,
            pullstorm_clients=4,
            pullstorm_per_client=2,
            pullstorm_base_size=1 * MiB,
            pullstorm_layers=1,
            pullstorm_layer_size=256 * 1024,
            catalog_tags=120,
            catalog_repos=30,
            catalog_page=50,
            catalog_passes=1,
            big_size=64 * MiB,
            events_subscribers=50,
            events_pushes=5,
            events_grace=5.0,
            events_setup_timeout=30.0,
            time_limit=120.0,
        )

    def with_overrides(self, **kw: Any) -> Params:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Target:
    """A registry under test: ``label`` is A, B or ``ceiling``; ``pids`` its processes.

    ``pulls_off``: the same registry (build, workers) with pull events off, for the
    events scenario's on/off comparison. ``tls``: speak HTTPS to it (HTTP/2 with
    ``tls.http2``), verifying its certificate against the run's CA.
    """

    label: str
    name: str
    url: str
    pids: list[int] = field(default_factory=list)
    pulls_off: Target | None = None
    tls: ClientTLS | None = None

    @property
    def address(self) -> tuple[str, int]:
        return split_url(self.url)

    def connection(self, timeout: float = 120.0) -> Connection:
        host, port = self.address
        return open_connection(host, port, timeout, self.tls)


@dataclass
class Record:
    scenario: str
    case: str
    label: str
    server: str
    repeat: int
    figures: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return int(self.figures.get("failed", 0) + self.figures.get("not_run", 0))

    @property
    def skipped(self) -> str | None:
        """Why this case did not run against this registry (no figures then)."""
        why = self.info.get("skipped")
        return str(why) if why else None


def measured(target: Target, fn: Callable[[], T]) -> tuple[T, float]:
    """Run ``fn``; also return the CPU seconds the target's processes spent meanwhile."""
    pids = process_tree(target.pids)
    before = cpu_seconds(pids)
    out = fn()
    return out, cpu_seconds(pids) - before


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def _load_figures(res: LoadResult, cpu: float) -> dict[str, float]:
    return {
        "elapsed_s": res.elapsed,
        "ok": res.ok,
        "failed": res.failed,
        "not_run": res.not_run,
        "requests": res.requests,
        "req_s": res.requests / res.elapsed,
        "sent_mib": res.sent / MiB,
        "received_mib": res.received / MiB,
        "server_cpu_s": cpu,
        "client_cpu_s": res.client_cpu_s,
        "server_cpu_ms_per_req": 1000 * cpu / max(res.requests, 1),
    }


def _run_load(
    target: Target,
    tasks: Sequence[Task],
    concurrency: int,
    p: Params,
    procs: int = 1,
) -> tuple[LoadResult, float]:
    host, port = target.address
    return measured(
        target,
        lambda: run_tasks(
            host, port, tasks, concurrency, procs=procs, time_limit=p.time_limit, tls=target.tls
        ),
    )


def _setup(target: Target, tasks: Sequence[Task], p: Params, what: str) -> None:
    host, port = target.address
    res = run_tasks(
        host, port, tasks, p.setup_concurrency, time_limit=max(p.time_limit, 1800),
        tls=target.tls,
    )  # fmt: skip
    if res.failed or res.not_run:
        raise RuntimeError(f"setup of {what} on {target.name} failed: {res.errors}")


def _info(res: LoadResult) -> dict[str, Any]:
    return {"errors": res.errors} if res.errors else {}


class Scenario:
    name = ""

    def __init__(self, params: Params) -> None:
        self.p = params

    def setup(self, target: Target) -> None:
        """Untimed, once per registry, before the first repeat."""

    def prepare(self, repeat: int) -> None:
        """Untimed, once per repeat, before any registry runs it."""

    def run(self, target: Target, repeat: int) -> list[Record]:
        raise NotImplementedError

    def record(
        self,
        case: str,
        target: Target,
        repeat: int,
        figures: dict[str, float],
        info: dict[str, Any] | None = None,
    ) -> Record:
        return Record(self.name, case, target.label, target.name, repeat, figures, info or {})


class BlobPush(Scenario):
    name = "blob-push"
    REPO = "perf/push"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._blobs: dict[str, list[Blob]] = {}

    def prepare(self, repeat: int) -> None:
        p = self.p
        self._blobs = {
            mode: [blob(f"push-{mode}-r{repeat}-{i}", p.push_size) for i in range(p.push_count)]
            for mode in ("mono", "chunked")
        }

    def run(self, target: Target, repeat: int) -> list[Record]:
        p = self.p
        out = []
        for mode, blobs in self._blobs.items():
            tasks: list[Task]
            if mode == "mono":
                tasks = [partial(oci.upload_monolithic, repo=self.REPO, blob=b) for b in blobs]
            else:
                tasks = [
                    partial(oci.upload_chunked, repo=self.REPO, blob=b, chunk=p.push_chunk)
                    for b in blobs
                ]
            res, cpu = _run_load(target, tasks, p.push_concurrency, p)
            figures = _load_figures(res, cpu)
            gib = res.sent / GiB
            figures.update(
                mib_s=res.sent / MiB / res.elapsed,
                blob_p50_ms=1000 * percentile(res.latencies, 50),
                blob_p99_ms=1000 * percentile(res.latencies, 99),
                server_cpu_s_per_gib=cpu / gib if gib else float("nan"),
                logical_mib=sum(b.size for b in blobs) / MiB,
            )
            out.append(self.record(mode, target, repeat, figures, _info(res)))
        return out


class BlobPull(Scenario):
    name = "blob-pull"
    REPO = "perf/pull"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._blobs: list[Blob] = []
        self.digests: list[tuple[str, int]] = []

    def setup(self, target: Target) -> None:
        p = self.p
        if not self._blobs and not self.digests:
            self._blobs = [blob(f"pull-{i}", p.pull_size) for i in range(p.pull_count)]
            self.digests = [(b.digest, b.size) for b in self._blobs]
        tasks = [partial(oci.upload_monolithic, repo=self.REPO, blob=b) for b in self._blobs]
        _setup(target, tasks, p, "blob-pull blobs")

    def release(self) -> None:
        """Pushed everywhere by now (setup is done): free the blobs' memory."""
        self._blobs = []

    def prepare(self, repeat: int) -> None:
        self.release()
        rng = random.Random(repeat)
        size = self.p.range_size
        self._ranges = []
        for _ in range(self.p.range_requests):
            digest, total = rng.choice(self.digests)
            start = rng.randrange(0, max(1, total - size + 1))
            self._ranges.append((digest, (start, min(total, start + size) - 1)))

    def run(self, target: Target, repeat: int) -> list[Record]:
        p = self.p
        full: list[Task] = []
        for _ in range(p.pull_rounds):
            full += [partial(oci.get_blob, repo=self.REPO, digest=d) for d, _ in self.digests]
        res, cpu = _run_load(target, full, p.pull_concurrency, p)
        figures = _load_figures(res, cpu)
        gib = res.received / GiB
        figures.update(
            mib_s=res.received / MiB / res.elapsed,
            blob_p50_ms=1000 * percentile(res.latencies, 50),
            blob_p99_ms=1000 * percentile(res.latencies, 99),
            server_cpu_s_per_gib=cpu / gib if gib else float("nan"),
        )
        out = [self.record("full", target, repeat, figures, _info(res))]
        ranged: list[Task] = [
            partial(oci.get_blob, repo=self.REPO, digest=d, byte_range=r) for d, r in self._ranges
        ]
        res, cpu = _run_load(target, ranged, p.range_concurrency, p, procs=p.procs)
        figures = _load_figures(res, cpu)
        gib = res.received / GiB
        figures.update(
            mib_s=res.received / MiB / res.elapsed,
            p50_ms=1000 * percentile(res.latencies, 50),
            p99_ms=1000 * percentile(res.latencies, 99),
            server_cpu_s_per_gib=cpu / gib if gib else float("nan"),
        )
        out.append(self.record("ranged", target, repeat, figures, _info(res)))
        return out


def _small_image(name: str, layer_size: int = 1024) -> Image:
    return image(name, [blob(f"{name}/layer", layer_size)])


class ManifestRps(Scenario):
    name = "manifest-rps"
    REPO = "perf/rps"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.images = [_small_image(f"rps-{i}") for i in range(params.rps_tags)]

    def setup(self, target: Target) -> None:
        tasks = [
            partial(oci.push_image, repo=self.REPO, tag=f"t{i}", image=im)
            for i, im in enumerate(self.images)
        ]
        _setup(target, tasks, self.p, "manifest-rps images")

    def run(self, target: Target, repeat: int) -> list[Record]:
        p = self.p
        headers = [("accept", ACCEPT), ("user-agent", "dockyard-perf")]
        out = []
        for conns in p.rps_connections:
            for method in ("HEAD", "GET"):
                for by in ("tag", "digest"):
                    refs = (
                        [f"t{i}" for i in range(len(self.images))]
                        if by == "tag"
                        else [im.digest for im in self.images]
                    )
                    targets = [f"/v2/{self.REPO}/manifests/{r}" for r in refs]
                    res, cpu = measured(
                        target,
                        partial(self._rate, target, method, targets, conns, headers),
                    )
                    lat_p50 = res.p50_s if res.p50_s is not None else percentile(res.latencies, 50)
                    lat_p99 = res.p99_s if res.p99_s is not None else percentile(res.latencies, 99)
                    done = res.ok + res.failed
                    figures = {
                        "elapsed_s": res.elapsed,
                        "ok": res.ok,
                        "failed": res.failed,
                        "requests": done,
                        "req_s": res.ok / res.elapsed,
                        "p50_ms": 1000 * lat_p50,
                        "p99_ms": 1000 * lat_p99,
                        "server_cpu_s": cpu,
                        "client_cpu_s": res.client_cpu_s,
                        "server_cpu_us_per_req": 1e6 * cpu / max(done, 1),
                        "client_cpu_us_per_req": 1e6 * res.client_cpu_s / max(done, 1),
                    }
                    info: dict[str, Any] = {"engine": res.engine}
                    if res.errors:
                        info["errors"] = res.errors
                    case = f"{method.lower()}-{by}-c{conns}"
                    out.append(self.record(case, target, repeat, figures, info))
        return out

    def _rate(
        self,
        target: Target,
        method: str,
        targets: list[str],
        conns: int,
        headers: list[tuple[str, str]],
    ) -> RateResult:
        p = self.p
        host, port = target.address
        if target.tls is not None and target.tls.http2:
            return run_h2(
                host,
                port,
                build_h2_requests(host, port, method, targets, headers),
                tls=target.tls,
                connections=conns,
                duration=p.rps_duration,
                max_requests=p.rps_max_requests,
                procs=p.procs,
            )
        if p.rps_engine == "wrk" and method == "GET":
            return run_wrk(
                host,
                port,
                targets,
                headers,
                connections=conns,
                duration=p.rps_duration,
                max_requests=p.rps_max_requests,
            )
        requests = build_requests(host, port, method, targets, headers)
        return run_py(
            host,
            port,
            requests,
            head=method == "HEAD",
            connections=conns,
            duration=p.rps_duration,
            max_requests=p.rps_max_requests,
            procs=p.procs,
            tls=target.tls,
        )


class CiStorm(Scenario):
    name = "ci-storm"
    BASE_REPO = "storm/base"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.base = blob("storm-base", params.storm_base_size)
        self.images: list[Image] = []

    def setup(self, target: Target) -> None:
        base_image = image("storm-base", [self.base])
        _setup(
            target,
            [lambda c: oci.push_image(c, self.BASE_REPO, "latest", base_image)],
            self.p,
            "ci-storm base image",
        )

    def prepare(self, repeat: int) -> None:
        p = self.p
        self.images = [
            image(
                f"storm-r{repeat}-{i}",
                [self.base]
                + [
                    blob(f"storm-r{repeat}-{i}-{j}", p.storm_layer_size)
                    for j in range(p.storm_layers)
                ],
            )
            for i in range(p.storm_images)
        ]

    def _push(self, conn: Connection, repo: str, tag: str, img: Image) -> None:
        for b in img.blobs:
            if oci.blob_exists(conn, repo, b.digest):
                continue
            if b.digest == self.base.digest and oci.mount(conn, repo, b.digest, self.BASE_REPO):
                continue
            oci.upload_streamed(conn, repo, b)
        oci.put_manifest(conn, repo, tag, img)

    def run(self, target: Target, repeat: int) -> list[Record]:
        p = self.p
        tasks = [
            partial(self._push, repo=f"storm/r{repeat}-app{i % p.storm_repos}", tag=f"b{i}", img=im)
            for i, im in enumerate(self.images)
        ]
        res, cpu = _run_load(target, tasks, p.storm_concurrency, p, procs=p.procs)
        figures = _load_figures(res, cpu)
        logical = sum(im.logical_size for im in self.images)
        gib = res.sent / GiB
        figures.update(
            images_s=res.ok / res.elapsed,
            image_p50_ms=1000 * percentile(res.latencies, 50),
            image_p99_ms=1000 * percentile(res.latencies, 99),
            uploaded_mib=res.sent / MiB,
            logical_mib=logical / MiB,
            uploaded_ratio=res.sent / logical,
            server_cpu_s_per_gib=cpu / gib if gib else float("nan"),
        )
        return [self.record("push", target, repeat, figures, _info(res))]


class PullStorm(Scenario):
    name = "pull-storm"
    REPO = "pullstorm/app"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._images: list[Image] = []

    def setup(self, target: Target) -> None:
        p = self.p
        if not self._images:
            base = blob("pullstorm-base", p.pullstorm_base_size)
            self._images = [
                image(
                    f"pullstorm-{i}",
                    [base]
                    + [
                        blob(f"pullstorm-{i}-{j}", p.pullstorm_layer_size)
                        for j in range(p.pullstorm_layers)
                    ],
                )
                for i in range(p.pullstorm_images)
            ]
        # The shared base first, so concurrent setup pushes do not race on it.
        first = self._images[0]
        _setup(target, [lambda c: oci.push_image(c, self.REPO, "v0", first)], p, "pull-storm")
        tasks = [
            partial(oci.push_image, repo=self.REPO, tag=f"v{i}", image=im)
            for i, im in enumerate(self._images)
        ]
        _setup(target, tasks, p, "pull-storm images")

    def prepare(self, repeat: int) -> None:
        self.logical = sum(im.logical_size for im in self._images) / max(len(self._images), 1)

    def run(self, target: Target, repeat: int) -> list[Record]:
        p = self.p
        n = p.pullstorm_clients * p.pullstorm_per_client
        tasks = [
            partial(
                oci.pull_image, repo=self.REPO, reference=f"v{(j + repeat) % p.pullstorm_images}"
            )
            for j in range(n)
        ]
        res, cpu = _run_load(target, tasks, p.pullstorm_clients, p, procs=p.procs)
        figures = _load_figures(res, cpu)
        gib = res.received / GiB
        figures.update(
            images_s=res.ok / res.elapsed,
            mib_s=res.received / MiB / res.elapsed,
            image_p50_ms=1000 * percentile(res.latencies, 50),
            image_p99_ms=1000 * percentile(res.latencies, 99),
            server_cpu_s_per_gib=cpu / gib if gib else float("nan"),
        )
        return [self.record("pull", target, repeat, figures, _info(res))]


class Catalog(Scenario):
    name = "catalog"
    TAG_REPO = "catalog/tags"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.image = _small_image("catalog")

    def setup(self, target: Target) -> None:
        p = self.p
        img = self.image
        _setup(target, [lambda c: oci.push_image(c, self.TAG_REPO, "t00000", img)], p, "catalog")
        tags = [
            partial(oci.put_manifest, repo=self.TAG_REPO, reference=f"t{i:05d}", image=img)
            for i in range(1, p.catalog_tags)
        ]
        _setup(target, tags, p, "catalog tags")

        def repo(c: Connection, i: int) -> None:
            name = f"catalog/repo{i:05d}"
            for b in img.blobs:
                if not oci.mount(c, name, b.digest, self.TAG_REPO):
                    oci.upload_monolithic(c, name, b)
            oci.put_manifest(c, name, "latest", img)

        _setup(
            target,
            [partial(repo, i=i) for i in range(p.catalog_repos)],
            p,
            "catalog repositories",
        )

    def run(self, target: Target, repeat: int) -> list[Record]:
        p = self.p
        out = []
        cases = [
            ("tags", f"/v2/{self.TAG_REPO}/tags/list", "tags", p.catalog_tags),
            ("repositories", "/v2/_catalog", "repositories", p.catalog_repos),
        ]
        with target.connection() as conn:
            for case, path, key, expected in cases:
                times: list[float] = []
                cpus: list[float] = []
                items = pages = 0
                failed = 0
                errors: list[str] = []
                for _ in range(p.catalog_passes):
                    t0 = time.perf_counter()
                    try:
                        (items, pages), cpu = measured(
                            target,
                            partial(oci.list_all, conn, path, key, p.catalog_page),
                        )
                    except Exception as e:
                        failed += 1
                        errors.append(f"{type(e).__name__}: {e}")
                        conn.close()
                        continue
                    times.append(time.perf_counter() - t0)
                    cpus.append(cpu)
                    # Exactly the tags made in setup; at least the repositories made there
                    # (other scenarios add theirs to the catalog).
                    if items < expected or (case == "tags" and items != expected):
                        failed += 1
                        errors.append(f"enumerated {items} {key}, expected {expected}")
                figures = {
                    "seconds": percentile(times, 50),
                    "items": items,
                    "pages": pages,
                    "failed": failed,
                    "server_cpu_s": percentile(cpus, 50),
                }
                info: dict[str, Any] = {"passes": p.catalog_passes, "page": p.catalog_page}
                if errors:
                    info["errors"] = errors[:5]
                out.append(self.record(case, target, repeat, figures, info))
        return out


class BigBlob(Scenario):
    name = "big-blob"
    REPO = "perf/big"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._blob: Blob | None = None

    def prepare(self, repeat: int) -> None:
        if self._blob is None:
            self._blob = streamed_blob("big-blob", self.p.big_size)

    def run(self, target: Target, repeat: int) -> list[Record]:
        b = self._blob
        assert b is not None
        pids = process_tree(target.pids)
        failed = 0
        errors: list[str] = []
        with target.connection(timeout=600) as conn:
            with MemorySampler(pids) as sampler:
                t0 = time.perf_counter()
                try:
                    _, cpu = measured(target, lambda: oci.upload_monolithic(conn, self.REPO, b))
                except Exception as e:
                    failed, cpu = 1, float("nan")
                    errors.append(f"{type(e).__name__}: {e}")
                elapsed = time.perf_counter() - t0
            sent = conn.counters.sent
        growth = sampler.result()
        figures = {
            "elapsed_s": elapsed,
            "failed": failed,
            "size_mib": b.size / MiB,
            "sent_mib": sent / MiB,
            "mib_s": sent / MiB / elapsed,
            "server_cpu_s": cpu,
            "server_cpu_s_per_gib": cpu / (sent / GiB) if sent else float("nan"),
            "peak_rss_growth_mib": growth.max_growth_mib,
            "total_rss_growth_mib": growth.total_growth_mib,
        }
        info: dict[str, Any] = {
            "rss_samples": growth.samples,
            "peak_reset": growth.peak_reset,
            "pids": pids,
        }
        if errors:
            info["errors"] = errors
        return [self.record("upload", target, repeat, figures, info)]


def _ms(values: Sequence[float], q: float) -> float:
    return 1000 * percentile(values, q)


class Events(Scenario):
    """Push-to-subscriber latency with N websocket subscribers; pull events on vs off.

    ``delivery``: N subscribers (``feed.Subscribers``: raw websocket clients in epoll
    loops, ``events_procs`` processes) subscribe to ``repository=perf/events&action=push``
    and each gets its welcome before anything is pushed; then M small manifests, unique
    by an annotation, are PUT by tag at ``events_rate`` per second on one keep-alive
    connection. For each push t0 is when the server made the event: its ``timestamp``
    (CLOCK_REALTIME of this host, moved to CLOCK_MONOTONIC), and each subscriber's
    arrival is the CLOCK_MONOTONIC time right after the ``recv`` that completed the
    event's frame (events are matched by digest). Latency = arrival - t0 over every
    subscriber x push. ``from_response_*`` pair the arrival with the time the PUT's 201
    response reached this host (the kernel's receive timestamp, ``feed.TimedConnection``)
    instead: negative when the server fans out before its response is on the wire, so it
    is no latency (what the scenario reported before, -114 ms minimum); an event without
    a timestamp (a feed that sends none) falls back to it and is counted in
    ``untimed_events``. Lost events (a subscriber without the event
    ``events_grace`` s after the last push), duplicates and failed pushes are failures.
    Server CPU is read from the first push to the last arrival. The subscribers' sockets
    have kernel receive stamps too: ``wire_*`` is latency up to the subscriber host's
    kernel (what the server and loopback took), ``client_lag_*`` how long events waited
    in the subscribers' sockets for the client (its own share of the latency).

    ``pulls-blob-full`` and ``pulls-get-tag-c16``: the blob-pull full workload and
    manifest GETs by tag at ``events_pull_connections`` for ``rps_duration`` s, each run
    against the target (pull events on) and ``target.pulls_off`` (off), on then off in
    even repeats, off then on in odd ones, with no subscriber connected. Server CPU is read
    from the workload's start until ``events_flush_wait`` s after its end, so the batched
    pull-event writes that follow the last requests are counted. The log's newest id
    (the ``since`` of a feed welcome) before and after each half says how many events it
    recorded: every pull with events on, none with them off, or the case failed.
    """

    name = "events"
    REPO = "perf/events"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.base = _small_image("events-base")
        self.nonce = os.urandom(4).hex()
        self.images: list[Image] = []
        self.unsupported: dict[str, str] = {}
        self._pull = BlobPull(params)
        self._rps = ManifestRps(params)
        self.pull_cases = ("pulls-blob-full", f"pulls-get-tag-c{params.events_pull_connections}")

    @property
    def resource(self) -> str:
        return f"{feed.FEED_PATH}?repository={self.REPO}&action=push"

    def setup(self, target: Target) -> None:
        host, port = target.address
        if target.tls is not None:
            self.unsupported[target.url] = "the feed's subscribers speak plain HTTP only"
            return
        try:
            feed.welcome(host, port, self.resource)
        except feed.FeedUnavailable as e:
            self.unsupported[target.url] = f"no websocket event feed at {feed.FEED_PATH} ({e})"
            return
        base = self.base
        _setup(target, [lambda c: oci.push_image(c, self.REPO, "base", base)], self.p, "events")
        twin = self._twin(target)
        for t in [target] + ([twin] if twin is not None and twin is not target else []):
            self._pull.setup(t)
            self._rps.setup(t)

    def prepare(self, repeat: int) -> None:
        self._pull.release()
        base = json.loads(self.base.manifest)
        self.images = []
        for i in range(self.p.events_pushes):
            doc = dict(base, annotations={"perf.events.push": f"{self.nonce}-r{repeat}-{i}"})
            raw = json.dumps(doc, separators=(",", ":")).encode()
            digest = "sha256:" + hashlib.sha256(raw).hexdigest()
            config, layers = self.base.config, self.base.layers
            self.images.append(Image(f"events-{i}", config, layers, raw, digest))

    def _twin(self, target: Target) -> Target | None:
        # The discard server has no pull events to turn off: both halves run against it,
        # and its on/off difference is the measurement's own noise.
        return target.pulls_off or (target if target.label == "ceiling" else None)

    def run(self, target: Target, repeat: int) -> list[Record]:
        why = self.unsupported.get(target.url)
        if why is not None:
            cases = ("delivery", *self.pull_cases)
            return [self.record(c, target, repeat, {}, {"skipped": why}) for c in cases]
        out = [self._delivery(target, repeat)]
        twin = self._twin(target)
        if twin is None:
            why = "no registry with pull events off to compare with (--pulls-off-url)"
            return out + [
                self.record(c, target, repeat, {}, {"skipped": why}) for c in self.pull_cases
            ]
        return out + self._pulls(target, twin, repeat)

    # -- delivery

    def _delivery(self, target: Target, repeat: int) -> Record:
        p = self.p
        host, port = target.address
        subs = feed.Subscribers(
            host,
            port,
            self.resource,
            p.events_subscribers,
            p.events_procs,
            setup_timeout=p.events_setup_timeout,
            time_limit=p.time_limit,
        )
        pushed: list[tuple[str, feed.Timed]] = []
        push_failed = not_run = 0
        errors: list[str] = []
        with subs:
            ready = subs.start()
            errors += ready.errors
            pids = process_tree(target.pids)
            cpu0 = cpu_seconds(pids)
            conn = feed.TimedConnection(host, port)
            headers = [("content-type", OCI_MANIFEST), ("user-agent", "dockyard-perf")]
            start = time.monotonic()
            try:
                for i, im in enumerate(self.images):
                    due = start + i / p.events_rate
                    if due > start + p.time_limit:
                        not_run += 1
                        continue
                    time.sleep(max(0.0, due - time.monotonic()))
                    try:
                        timed = conn.request(
                            "PUT", f"/v2/{self.REPO}/manifests/p{i}", headers, im.manifest
                        )
                    except (OSError, ValueError) as e:
                        push_failed += 1
                        errors.append(f"PUT p{i}: {type(e).__name__}: {e}")
                        continue
                    if timed.status != 201:
                        push_failed += 1
                        errors.append(f"PUT p{i}: HTTP {timed.status} {timed.body[:120]!r}")
                        continue
                    pushed.append((im.digest, timed))
            finally:
                conn.close()
            result = subs.finish([d for d, _ in pushed], time.monotonic() + p.events_grace)
            cpu = cpu_seconds(pids) - cpu0
            errors += result.errors
        lat: list[float] = []
        from_response: list[float] = []
        from_request: list[float] = []
        wire: list[float] = []  # the subscriber's kernel stamp - t0: before client delays
        client_lag: list[float] = []  # arrival - the subscriber's kernel stamp
        complete = duplicates = lagged = disconnected = heartbeats = untimed = 0
        for sub in result.subs:
            arrivals = sub["arrivals"]
            got = 0
            for digest, timed in pushed:
                arrival = arrivals.get(digest)
                if arrival is not None:
                    t, kernel = arrival
                    got += 1
                    t0 = result.event_times.get(digest)
                    if t0 is None:
                        untimed += 1
                        t0 = timed.arrived
                    lat.append(t - t0)
                    from_response.append(t - timed.arrived)
                    from_request.append(t - timed.sent)
                    wire.append(kernel - t0)
                    client_lag.append(t - kernel)
            complete += got == len(pushed)
            duplicates += sub["dups"]
            heartbeats += sub["heartbeats"]
            if sub["lagged"] is not None:
                lagged += 1
            elif sub["eof"] or sub["close_code"] is not None:
                disconnected += 1
        expected = p.events_subscribers * len(pushed)
        lost = expected - len(lat)
        rtt = [t.arrived - t.sent for _, t in pushed]
        pusher_lag = [t.read - t.arrived for _, t in pushed]
        figures = {
            "subscribers": p.events_subscribers,
            "welcomed": ready.welcomed,
            "connect_failures": ready.failed,
            "connect_s": ready.connect_s,
            "pushes": len(pushed),
            "events_expected": expected,
            "events_received": len(lat),
            "lost_events": lost,
            "duplicates": duplicates,
            "complete_subscribers": complete,
            "lagged": lagged,
            "disconnected": disconnected,
            "heartbeats": heartbeats,
            "p50_ms": _ms(lat, 50),
            "p99_ms": _ms(lat, 99),
            "max_ms": 1000 * max(lat) if lat else float("nan"),
            "min_ms": 1000 * min(lat) if lat else float("nan"),
            "early_events": sum(1 for x in lat if x < 0),
            "untimed_events": untimed,
            "from_response_p50_ms": _ms(from_response, 50),
            "from_response_min_ms": 1000 * min(from_response) if from_response else float("nan"),
            "from_request_p50_ms": _ms(from_request, 50),
            "from_request_p99_ms": _ms(from_request, 99),
            "from_request_min_ms": 1000 * min(from_request) if from_request else float("nan"),
            "wire_p50_ms": _ms(wire, 50),
            "wire_p99_ms": _ms(wire, 99),
            "client_lag_p99_ms": _ms(client_lag, 99),
            "client_lag_max_ms": 1000 * max(client_lag) if client_lag else float("nan"),
            "push_rtt_p50_ms": _ms(rtt, 50),
            "pusher_lag_p99_ms": _ms(pusher_lag, 99),
            "server_cpu_s": cpu,
            "server_cpu_ms_per_push": 1000 * cpu / max(len(pushed), 1),
            "server_cpu_us_per_event": 1e6 * cpu / max(len(lat), 1),
            "client_cpu_s": result.client_cpu_s,
            "failed": lost + duplicates + push_failed,
            "not_run": not_run,
        }
        info: dict[str, Any] = {
            "procs": subs.procs,
            "rate": p.events_rate,
            "resource": self.resource,
            "kernel_stamps": all(t.kernel_stamp for _, t in pushed),
            "clock": "t0: the event's timestamp (server CLOCK_REALTIME) on CLOCK_MONOTONIC; "
            "arrival: CLOCK_MONOTONIC after the recv completing the frame",
        }
        if errors:
            info["errors"] = errors[:5]
        return self.record("delivery", target, repeat, figures, info)

    # -- pull events on versus off

    def _log_position(self, target: Target) -> int | None:
        host, port = target.address
        since = feed.welcome(host, port, self.resource).get("since")
        return since if isinstance(since, int) else None

    def _half(self, target: Target, case: str, repeat: int) -> tuple[dict[str, float], list[str]]:
        p = self.p
        host, port = target.address
        before = self._log_position(target)
        pids = process_tree(target.pids)
        cpu0 = cpu_seconds(pids)
        if case == "pulls-blob-full":
            tasks: list[Task] = []
            for _ in range(p.pull_rounds):
                tasks += [
                    partial(oci.get_blob, repo=BlobPull.REPO, digest=d)
                    for d, _ in self._pull.digests
                ]
            res = run_tasks(host, port, tasks, p.pull_concurrency, time_limit=p.time_limit)
            ok, failed, not_run, requests = res.ok, res.failed, res.not_run, res.requests
            received, elapsed, errors = res.received, res.elapsed, res.errors
            p99 = percentile(res.latencies, 99)
        else:
            headers = [("accept", ACCEPT), ("user-agent", "dockyard-perf")]
            refs = [f"/v2/{ManifestRps.REPO}/manifests/t{i}" for i in range(p.rps_tags)]
            rate = self._rps._rate(target, "GET", refs, p.events_pull_connections, headers)
            ok, failed, not_run, requests = rate.ok, rate.failed, 0, rate.ok + rate.failed
            received, elapsed, errors = rate.received, rate.elapsed, rate.errors
            p99 = rate.p99_s if rate.p99_s is not None else percentile(rate.latencies, 99)
        time.sleep(p.events_flush_wait)
        cpu = cpu_seconds(pids) - cpu0
        after = self._log_position(target)
        recorded = after - before if before is not None and after is not None else float("nan")
        return {
            "req_s": ok / elapsed,
            "mib_s": received / MiB / elapsed,
            "requests": requests,
            "p99_ms": 1000 * p99,
            "server_cpu_s": cpu,
            "server_cpu_us_per_req": 1e6 * cpu / max(requests, 1),
            "events_recorded": recorded,
            "failed": failed,
            "not_run": not_run,
        }, list(errors)

    def _pulls(self, target: Target, twin: Target, repeat: int) -> list[Record]:
        out = []
        halves = [("on", target), ("off", twin)]
        if repeat % 2:
            halves.reverse()
        for case in self.pull_cases:
            got: dict[str, dict[str, float]] = {}
            errors: list[str] = []
            for which, t in halves:
                got[which], errs = self._half(t, case, repeat)
                errors += [f"{which}: {e}" for e in errs]
            on, off = got["on"], got["off"]
            failed = on["failed"] + off["failed"]
            if twin is not target:  # a registry with an event log: check what it recorded
                if not on["events_recorded"] >= 1:
                    failed += 1
                    errors.append(f"on: {on['events_recorded']} events recorded for the pulls")
                if off["events_recorded"] != 0:
                    failed += 1
                    errors.append(f"off: {off['events_recorded']} events recorded, expected 0")
            ratio = on["req_s"] / off["req_s"] if off["req_s"] else float("nan")
            cpu_ratio = (
                on["server_cpu_us_per_req"] / off["server_cpu_us_per_req"]
                if off["server_cpu_us_per_req"]
                else float("nan")
            )
            figures = {f"{which}_{k}": v for which in ("on", "off") for k, v in got[which].items()}
            figures.update(
                on_off_ratio=ratio,
                pull_events_cost_pct=100 * (1 - ratio),
                cpu_cost_pct=100 * (cpu_ratio - 1),
                failed=failed,
                not_run=on["not_run"] + off["not_run"],
            )
            for k in ("on_failed", "off_failed", "on_not_run", "off_not_run"):
                figures.pop(k)
            info: dict[str, Any] = {
                "order": [w for w, _ in halves],
                "off": twin.name,
                "flush_wait_s": self.p.events_flush_wait,
            }
            if errors:
                info["errors"] = errors[:5]
            out.append(self.record(case, target, repeat, figures, info))
        return out


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (BlobPush, BlobPull, ManifestRps, CiStorm, PullStorm, Catalog, BigBlob, Events)
}
