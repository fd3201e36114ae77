"""Two ``dockyard serve`` instances on one PostgreSQL and one blob directory: skopeo
pushes to one and pulls from the other, the event feed of one sees the other's pushes at
once (LISTEN/NOTIFY, not polling), and the database password shows nowhere."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.conftest import Skopeo, serving
from tests.feedclient import open_feed
from tests.imagegen import OCILayout, build_image, layout_blob, layout_tags, random_layers
from tests.pgserver import PostgresServer
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

# Long enough that only a NOTIFY can bring another instance's event within the test's
# bound: a poll would come this late.
FALLBACK_POLL = "30"


@pytest.fixture(scope="module")
def pg_url(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared") / "data"


def instance(root: Path, url: str, name: str, workers: int) -> DockyardServer:
    env = {
        "DOCKYARD_DATABASE_URL": url,
        "DOCKYARD_SERVER_INSTANCE": name,
        "DOCKYARD_EVENTS_FALLBACK_POLL_INTERVAL": FALLBACK_POLL,
        "DOCKYARD_EVENTS_PULL_FLUSH_INTERVAL": "0.05",
    }
    return DockyardServer(root, workers=workers, env=env)


@pytest.fixture(scope="module")
def first(shared_root: Path, pg_url: str) -> Iterator[DockyardServer]:
    yield from serving(instance(shared_root, pg_url, "first", workers=2))


@pytest.fixture(scope="module")
def second(shared_root: Path, pg_url: str, first: DockyardServer) -> Iterator[DockyardServer]:
    yield from serving(instance(shared_root, pg_url, "second", workers=1))


def test_push_to_one_instance_pull_from_the_other(
    first: DockyardServer, second: DockyardServer, tmp_path: Path
) -> None:
    path = require_tool("skopeo")
    layout = OCILayout(tmp_path / "layout")
    image = layout.add_image("v1", build_image(random_layers(2, 2)))
    to_first = Skopeo(path, first)
    to_first.copy(layout.ref("v1"), to_first.docker("pg/app:v1"), "--preserve-digests")
    from_second = Skopeo(path, second)
    assert from_second.raw("pg/app:v1") == image.manifest.data
    out = tmp_path / "out"
    from_second.copy(from_second.docker("pg/app:v1"), f"oci:{out}:v1", "--preserve-digests")
    assert layout_tags(out) == {"v1": image.digest}
    for blob in (image.config, *(layer.blob for layer in image.layers)):
        assert layout_blob(out, blob.digest) == blob.data
    tags = httpx.get(f"{second.url}/v2/pg/app/tags/list", timeout=10).json()
    assert tags == {"name": "pg/app", "tags": ["v1"]}
    # Nothing went to an embedded SQLite file.
    assert not (first.data_dir / "dockyard.sqlite3").exists()


async def test_feed_on_one_instance_sees_the_others_push_at_once(
    first: DockyardServer, second: DockyardServer
) -> None:
    delays: list[float] = []
    async with (
        open_feed(second.port, {"repository": "wake/*"}) as feed,
        httpx.AsyncClient(base_url=first.url, timeout=10) as client,
    ):
        for i in range(5):
            data = f"wake-up {i}".encode()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            pushed = time.monotonic()
            r = await client.post(
                "/v2/wake/app/blobs/uploads/", params={"digest": digest}, content=data
            )
            assert r.status_code == 201, r.text
            (event,) = await feed.events(1, timeout=5)
            delays.append(time.monotonic() - pushed)
            assert event["target"]["digest"] == digest
            await trio.sleep(0.05)
    # A poll every 30 s could not have brought five events within seconds.
    print(f"cross-instance event delays (s): {[round(d, 4) for d in delays]}")
    assert max(delays) < float(FALLBACK_POLL) / 10


def test_password_appears_in_no_log_and_no_config_output(
    first: DockyardServer, second: DockyardServer, postgres_server: PostgresServer, pg_url: str
) -> None:
    password = postgres_server.password
    assert password in pg_url
    shown = subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "config", "check"],
        env={"DOCKYARD_DATABASE_URL": pg_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "<redacted>" in shown.stdout
    assert password not in shown.stdout + shown.stderr
    for server in (first, second):
        assert password not in server.log_path.read_text(errors="replace")


def test_wrong_password_fails_start_up_without_showing_it(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    wrong = "not-the-" + postgres_server.password[:6]
    url = postgres_server.url.replace(postgres_server.password, wrong)
    server = instance(tmp_path / "data", url, "bad", workers=1)
    with pytest.raises(RuntimeError) as failed:
        server.start(timeout=30)
    server.stop()
    text = str(failed.value) + server.log_path.read_text(errors="replace")
    assert "password authentication failed" in text
    assert wrong not in text
