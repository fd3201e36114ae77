"""The container image: ``scripts/build-image`` builds it (exactly as README says), podman
runs it as README says (port 5000 published, here on a free loopback port, and the data
volume), skopeo pushes an image into it and pulls it back, a new container on the same
volume still serves it, and its health check passes (and fails with no server).

The image is built once for the module in an isolated podman store (``ContainerStore``:
vfs storage under the test's temporary directory, no daemon). The Debian base tarball
that mmdebstrap makes is kept between runs in ``$DOCKYARD_IMAGE_CACHE`` (default: a
directory under the system's temporary directory), so only the first run pays for it.

Containers run with ``--runtime runc`` and explicit ulimits: crun cannot start a
container on a host with hybrid cgroups (v1 controllers plus a v2 hierarchy, as CI's
VM has), and a root without CAP_SYS_RESOURCE cannot raise its limits to podman's root
defaults. Neither choice changes the image under test.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.containers_tools import ContainerStore
from tests.imagegen import Image, OCILayout, build_image, layout_blob, make_layer, random_layers
from tests.serverproc import free_port
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-image"
IMAGE = "localhost/dockyard-e2e-image:test"
BUILD_TIMEOUT = 600.0
START_TIMEOUT = 60.0


def _cache_dir() -> Path:
    """Where the base tarball is kept between runs (never inside the repository)."""
    configured = os.environ.get("DOCKYARD_IMAGE_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "dockyard-image"


def _ulimits() -> list[str]:
    """Limits at or below this process's own hard limits, so no raise is needed."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


@dataclass
class Running:
    """One container of the image, listening on ``port`` of the host's loopback."""

    store: ContainerStore
    name: str
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        done = self.store.run("podman", "--runtime", "runc", *args, check=False)
        if check and done.returncode != 0:
            pytest.fail(
                f"podman {' '.join(args)} exited {done.returncode}\n"
                f"--- stderr\n{done.stderr.decode(errors='replace')[-4000:]}\n"
                f"--- container log\n{self.logs()}",
                pytrace=False,
            )
        return done

    def logs(self) -> str:
        done = self.store.run("podman", "logs", self.name, check=False)
        return (done.stdout + done.stderr).decode(errors="replace")[-6000:]


@pytest.fixture(scope="module")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerStore]:
    """An isolated podman store holding the image ``scripts/build-image`` built."""
    for tool in ("podman", "mmdebstrap", "runc", "skopeo"):
        require_tool(tool)
    store = ContainerStore(tmp_path_factory.mktemp("container-image"))
    env = {**store.env, "DOCKYARD_IMAGE_CACHE": str(_cache_dir())}
    done = subprocess.run(
        [str(BUILD_SCRIPT), IMAGE],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"scripts/build-image exited {done.returncode}\n"
            f"--- stdout\n{done.stdout.decode(errors='replace')[-4000:]}\n"
            f"--- stderr\n{done.stderr.decode(errors='replace')[-4000:]}",
            pytrace=False,
        )
    yield store
    # vfs keeps a full copy of every layer: give the disk back now, not when pytest
    # prunes its old temporary directories.
    for directory in ("graph", "volumes"):
        shutil.rmtree(store.root / directory, ignore_errors=True)


def _run(store: ContainerStore, name: str, *args: str) -> Running:
    """``podman run`` as README says (port 5000 published, the data volume), on a free
    port of the host's loopback; ``args`` go before the image name."""
    running = Running(store, name, free_port())
    running.podman(
        "run",
        "--detach",
        "--name",
        name,
        "--publish",
        f"127.0.0.1:{running.port}:5000",
        *_ulimits(),
        *args,
    )
    return running


def _remove(running: Running) -> None:
    running.podman("rm", "--force", "--time", "2", running.name, check=False)


def _serving(store: ContainerStore, name: str, volume: str) -> Running:
    """The image run with its own entrypoint and command, once /readyz answers."""
    running = _run(store, name, "--volume", f"{volume}:/var/lib/dockyard", IMAGE)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if httpx.get(f"http://{running.host}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the container never became ready:\n{running.logs()}", pytrace=False)
        time.sleep(0.2)
    return running


@pytest.fixture(scope="module")
def registry_container(image_store: ContainerStore) -> Iterator[Running]:
    running = _serving(image_store, "dockyard-e2e", "dockyard-e2e-data")
    yield running
    _remove(running)


def test_image_keeps_its_health_check_and_runs_as_non_root(
    image_store: ContainerStore, registry_container: Running
) -> None:
    # --format docker keeps HEALTHCHECK (the OCI image config has no such field).
    inspected = image_store.run("podman", "image", "inspect", IMAGE).stdout
    (image,) = json.loads(inspected)
    check = image["Healthcheck"]["Test"]
    assert check[0] == "CMD" and any("/readyz" in part for part in check), check
    assert image["Config"]["User"] == "dockyard"
    (container,) = json.loads(registry_container.podman("inspect", registry_container.name).stdout)
    assert container["Config"]["Healthcheck"]["Test"] == check
    uid = registry_container.podman("exec", registry_container.name, "id", "-u").stdout
    assert uid.decode().strip() == "10001"


SKOPEO_COPY = ("copy", "--src-tls-verify=false", "--dest-tls-verify=false")


def skopeo(container: Running, *args: str) -> bytes:
    """skopeo's stdout; a failure shows its stderr and the container's log."""
    cmd = [require_tool("skopeo"), "--insecure-policy", *args]
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {done.returncode}\n"
            f"{done.stderr.decode(errors='replace')[-4000:]}\n"
            f"--- container log\n{container.logs()}",
            pytrace=False,
        )
    return done.stdout


def push(container: Running, tmp_path: Path, seed: int, reference: str) -> Image:
    layout = OCILayout(tmp_path / f"layout-{seed}")
    image = layout.add_image("v1", build_image([make_layer(seed), *random_layers(seed + 1, 2)]))
    remote = f"docker://{container.host}/{reference}"
    skopeo(container, *SKOPEO_COPY, "--preserve-digests", layout.ref("v1"), remote)
    return image


def assert_pulls(container: Running, tmp_path: Path, reference: str, image: Image) -> None:
    """A pull into an empty layout gives back exactly the pushed bytes."""
    pulled = tmp_path / f"pulled-{image.digest.removeprefix('sha256:')[:12]}"
    skopeo(container, *SKOPEO_COPY, f"docker://{container.host}/{reference}", f"oci:{pulled}:v1")
    assert skopeo(container, "inspect", "--raw", f"oci:{pulled}:v1") == image.manifest.data
    assert layout_blob(pulled, image.config.digest) == image.config.data
    for layer in image.layers:
        assert layout_blob(pulled, layer.digest) == layer.blob.data


def test_push_and_pull_through_the_container(registry_container: Running, tmp_path: Path) -> None:
    image = push(registry_container, tmp_path, 91, "e2e/container-image:v1")
    tags = httpx.get(f"http://{registry_container.host}/v2/e2e/container-image/tags/list")
    assert tags.json() == {"name": "e2e/container-image", "tags": ["v1"]}
    assert_pulls(registry_container, tmp_path, "e2e/container-image:v1", image)


def test_a_new_container_on_the_volume_serves_what_the_old_one_stored(
    image_store: ContainerStore, tmp_path: Path
) -> None:
    first = _serving(image_store, "dockyard-e2e-first", "dockyard-e2e-kept")
    try:
        image = push(first, tmp_path, 95, "e2e/kept:v1")
    finally:
        _remove(first)
    second = _serving(image_store, "dockyard-e2e-second", "dockyard-e2e-kept")
    try:
        assert_pulls(second, tmp_path, "e2e/kept:v1", image)
    finally:
        _remove(second)


def test_health_check_passes(registry_container: Running) -> None:
    # Exit status 0 is podman's "healthy"; it also records the result in the state.
    registry_container.podman("healthcheck", "run", registry_container.name)
    (container,) = json.loads(registry_container.podman("inspect", registry_container.name).stdout)
    assert container["State"]["Health"]["Status"] == "healthy"


def test_health_check_fails_without_a_server(image_store: ContainerStore) -> None:
    # The same image and check, but nothing listening: the check must notice.
    idle = _run(image_store, "dockyard-e2e-idle", "--entrypoint", "sleep", IMAGE, "300")
    try:
        done = idle.podman("healthcheck", "run", idle.name, check=False)
        assert done.returncode != 0
        assert "unhealthy" in (done.stdout + done.stderr).decode()
    finally:
        _remove(idle)
