"""podman and containerd's ``ctr`` pull through dockyard's pull-through cache, configured
the way docs/proxy.md tells users to: podman with a ``registries.conf`` mirror (dockyard's
cached prefix), ctr with a ``hosts.toml`` mirror (so it sends ``ns=<upstream>``).

The upstream is a real Distribution 2.8 (tests/distribution.py) holding images built here
(tests/imagegen.py) and pushed with skopeo. Both clients fall back to the upstream itself
when the mirror fails, so a pull that works proves nothing on its own: each test checks
dockyard's access log (the client's requests reached dockyard and were answered), its
pull events (``target.cache = "fill"``) and the upstream's access log (no request from the
client itself, only dockyard's). Then the upstream is stopped, the local image removed,
and the same pull must work from the cache alone.

The first tests pull straight from the Distribution: they check the fixtures (the
private containerd, the isolated podman store, the images) without the cache.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import imagegen
from tests.containerd import Containerd
from tests.distribution import Distribution
from tests.e2e.conftest import TOOL_TIMEOUT, server_events, serving
from tests.e2e.containers_tools import ContainerStore
from tests.e2e.logread import access_log, field
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

PREFIX = "dist"  # dockyard's repositories "dist/<path>" are the upstream's "<path>"
# One request line of the Distribution's combined access log, with its User-Agent.
UPSTREAM_LINE = re.compile(r'"(GET|HEAD) (/v2/\S+) HTTP/[\d.]+" (\d{3}) \S+ "[^"]*" "([^"]*)"')


@dataclass(frozen=True)
class UpstreamImage:
    path: str  # repository in the upstream
    tag: str
    image: imagegen.Image


@dataclass
class Upstream:
    registry: Distribution
    images: dict[str, UpstreamImage]

    def ref(self, name: str) -> str:
        """The reference a user pulls: the upstream's own name of the image."""
        found = self.images[name]
        return f"{self.registry.host}/{found.path}:{found.tag}"

    def user_agents(self, path: str) -> set[str]:
        """User-Agents of the GET and HEAD requests for ``path``'s manifests and blobs."""
        text = self.registry.log_path.read_text(errors="replace")
        return {m[4] for m in UPSTREAM_LINE.finditer(text) if m[2].startswith(f"/v2/{path}/")}


def skopeo_push(source: str, destination: str) -> None:
    cmd = [
        require_tool("skopeo"),
        "--insecure-policy",
        "copy",
        "--dest-tls-verify=false",
        source,
        destination,
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=TOOL_TIMEOUT, check=False)
    assert done.returncode == 0, f"{cmd}: {done.stderr.decode(errors='replace')}"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A Distribution holding one small image per test (two layers, built here)."""
    root = tmp_path_factory.mktemp("upstream")
    layout = imagegen.OCILayout(root / "layout")
    images: dict[str, UpstreamImage] = {}
    with Distribution(root / "distribution") as registry:
        for seed, name in enumerate(("ctr-direct", "podman-direct", "ctr", "podman")):
            built = imagegen.build_image(imagegen.random_layers(100 + seed, 2))
            layout.add_image(name, built)
            images[name] = UpstreamImage(f"lib/{name}", "v1", built)
            skopeo_push(layout.ref(name), f"docker://{registry.host}/lib/{name}:v1")
        yield Upstream(registry, images)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[DockyardServer]:
    """dockyard with the Distribution as its upstream under PREFIX; access log on."""
    root = tmp_path_factory.mktemp("dockyard-cache")
    config = root / "dockyard.toml"
    config.write_text(
        "[[upstreams]]\n"
        'name = "distribution"\n'
        f'url = "{upstream.registry.url}"\n'
        f'prefix = "{PREFIX}"\n'
    )
    env = {
        "DOCKYARD_CONFIG": str(config),
        "DOCKYARD_LOG_ACCESS": "true",
        "DOCKYARD_EVENTS_PULL_FLUSH_INTERVAL": "0.05",
    }
    yield from serving(DockyardServer(root / "data", env=env))


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    with Containerd() as running:
        yield running


def podman_store(root: Path, upstream: Upstream, mirror: str | None) -> ContainerStore:
    """An empty podman store whose registries.conf makes the upstream plain HTTP and,
    with ``mirror`` (``host:port/prefix``), pulls it through that mirror first."""
    store = ContainerStore(root)
    lines = [
        "unqualified-search-registries = []",
        "",
        "[[registry]]",
        f'location = "{upstream.registry.host}"',
        "insecure = true",
    ]
    if mirror is not None:
        lines += ["", "[[registry.mirror]]", f'location = "{mirror}"', "insecure = true"]
    (root / "registries.conf").write_text("\n".join(lines) + "\n")
    return store


def podman_pull(store: ContainerStore, ref: str) -> str:
    """``podman pull ref``; the pulled image's manifest digest."""
    store.run("podman", "pull", "--signature-policy", str(store.policy), ref)
    return (
        store.run("podman", "image", "inspect", "--format", "{{.Digest}}", ref)
        .stdout.decode()
        .strip()
    )


# -- the fixtures alone: pulls straight from the Distribution


def test_ctr_pulls_from_the_distribution_directly(
    containerd: Containerd, upstream: Upstream
) -> None:
    ref = upstream.ref("ctr-direct")
    containerd.pull(ref, containerd.hosts_dir(upstream.registry.host))
    assert containerd.image_digest(ref) == upstream.images["ctr-direct"].image.digest
    assert any(a.startswith("containerd/") for a in upstream.user_agents("lib/ctr-direct"))
    containerd.forget(ref)


def test_podman_pulls_from_the_distribution_directly(tmp_path: Path, upstream: Upstream) -> None:
    store = podman_store(tmp_path / "podman", upstream, mirror=None)
    assert (
        podman_pull(store, upstream.ref("podman-direct"))
        == upstream.images["podman-direct"].image.digest
    )


# -- through the cache


def wait_for_fill(server: DockyardServer, digests: set[str], timeout: float = 10.0) -> None:
    """Until dockyard's event log has pull events with ``target.cache = "fill"`` of each
    of ``digests`` (pull events are written in batches)."""
    deadline = time.monotonic() + timeout
    filled: set[str] = set()
    while time.monotonic() < deadline:
        filled = {
            e.digest
            for e in server_events(server)
            if e.action == "pull" and e.body["target"].get("cache") == "fill" and e.digest
        }
        if digests <= filled:
            return
        time.sleep(0.1)
    raise AssertionError(f"no cache-fill pull events of {sorted(digests - filled)}: {filled}")


def answered(server: DockyardServer, path: str, agent_prefix: str) -> list[int]:
    """Statuses dockyard answered to ``agent_prefix``'s GETs and HEADs of ``path``."""
    deadline = time.monotonic() + 5.0
    found: list[int] = []
    while time.monotonic() < deadline:  # the access log is written by the server's thread
        found = [
            int(field(d, "http.response.status_code"))
            for d in access_log(server)
            if field(d, "url.path") == path
            and str(field(d, "user_agent.original") or "").startswith(agent_prefix)
        ]
        if found:
            break
        time.sleep(0.05)
    return found


def all_blobs(image: imagegen.Image) -> set[str]:
    return {image.config.digest, *(layer.blob.digest for layer in image.layers)}


def test_ctr_pulls_through_the_cache_with_ns_and_then_from_it_alone(
    containerd: Containerd, upstream: Upstream, cache: DockyardServer
) -> None:
    name = "ctr"
    image = upstream.images[name].image
    ref = upstream.ref(name)
    hosts = containerd.hosts_dir(upstream.registry.host, mirror=cache.host)
    containerd.pull(ref, hosts)
    assert containerd.image_digest(ref) == image.digest
    # containerd asked dockyard (GET .../manifests/v1?ns=<upstream>) and got answers...
    statuses = answered(cache, f"/v2/lib/{name}/manifests/v1", "containerd/")
    assert statuses and set(statuses) <= {200}, statuses
    for digest in all_blobs(image):
        assert answered(cache, f"/v2/lib/{name}/blobs/{digest}", "containerd/") == [200]
    # ...filled from the upstream, which saw dockyard and never containerd itself. (The
    # manifest came in with containerd's HEAD by tag, which records no pull event: its
    # GET by digest was then a cache hit.)
    wait_for_fill(cache, all_blobs(image))
    agents = upstream.user_agents(f"lib/{name}")  # skopeo's are from the push
    assert any(a.startswith("dockyard/") for a in agents), agents
    assert not any(a.startswith("containerd/") for a in agents), agents

    containerd.forget(ref)
    upstream.registry.stop()
    try:
        containerd.pull(ref, hosts)
        assert containerd.image_digest(ref) == image.digest
    finally:
        upstream.registry.start()
    containerd.forget(ref)


def test_podman_pulls_through_the_cache_mirror_and_then_from_it_alone(
    tmp_path: Path, upstream: Upstream, cache: DockyardServer
) -> None:
    name = "podman"
    image = upstream.images[name].image
    ref = upstream.ref(name)
    store = podman_store(tmp_path / "podman", upstream, mirror=f"{cache.host}/{PREFIX}")
    assert podman_pull(store, ref) == image.digest
    statuses = answered(cache, f"/v2/{PREFIX}/lib/{name}/manifests/v1", "containers/")
    assert statuses and set(statuses) <= {200}, statuses
    for digest in all_blobs(image):
        assert answered(cache, f"/v2/{PREFIX}/lib/{name}/blobs/{digest}", "containers/") == [200]
    wait_for_fill(cache, {image.digest, *all_blobs(image)})
    agents = upstream.user_agents(f"lib/{name}")  # skopeo's are from the push
    assert any(a.startswith("dockyard/") for a in agents), agents
    assert not any(a.startswith("containers/") for a in agents), agents

    store.run("podman", "rmi", ref)
    upstream.registry.stop()
    try:
        assert podman_pull(store, ref) == image.digest
    finally:
        upstream.registry.start()
