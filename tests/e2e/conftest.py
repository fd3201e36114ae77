"""Fixtures for the end-to-end tests: real ``dockyard serve`` processes and real clients.

One server per test module (start-up takes about a second, tests use distinct repository
names so they do not see each other's content). At teardown the server log must hold no
traceback: an unhandled exception on the server is a bug even when the client retried
its way around it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio

from dockyard.meta.records import StoredEvent
from dockyard.meta.sqlite import SQLiteMeta
from tests.pgserver import PostgresServer
from tests.seaweed import SeaweedServer
from tests.serverproc import DockyardServer, server_backend
from tests.tools import require_tool
from tests.topology import Topology, pg_s3_backend
from tests.webhook_receiver import Receiver, hook, webhooks_toml

TOOL_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """End-to-end tests drive a server process: their own async code (a client) runs on
    trio only; the loop under test is the server's (``DOCKYARD_TEST_SERVER_BACKEND``).
    Running each client on both loops would only run every e2e test twice."""
    return "trio"


def _fail(
    what: Sequence[str], rc: int, stdout: bytes, stderr: bytes, server: DockyardServer
) -> None:
    pytest.fail(
        f"{' '.join(what)} exited with {rc}\n"
        f"--- stdout\n{stdout.decode(errors='replace')[-3000:]}\n"
        f"--- stderr\n{stderr.decode(errors='replace')[-6000:]}\n"
        f"--- dockyard log\n{server.log()}",
        pytrace=False,
    )


class Skopeo:
    """The skopeo CLI against one dockyard server (plain HTTP, no signature policy)."""

    def __init__(self, path: str, server: DockyardServer) -> None:
        self.path = path
        self.server = server

    def docker(self, ref: str) -> str:
        """``docker://127.0.0.1:PORT/<ref>``."""
        return f"docker://{self.server.host}/{ref}"

    def command(self, *args: str, debug: bool = False) -> list[str]:
        # --insecure-policy: a laptop may have no /etc/containers/policy.json.
        return [self.path, "--insecure-policy", *(["--debug"] if debug else []), *args]

    def __call__(
        self, *args: str, debug: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        cmd = self.command(*args, debug=debug)
        done = subprocess.run(cmd, capture_output=True, timeout=TOOL_TIMEOUT, check=False)
        if check and done.returncode != 0:
            _fail(cmd, done.returncode, done.stdout, done.stderr, self.server)
        return done

    async def run(self, *args: str, debug: bool = False) -> subprocess.CompletedProcess[bytes]:
        """The same from trio, so several copies can run at once."""
        cmd = self.command(*args, debug=debug)
        with trio.fail_after(TOOL_TIMEOUT):
            done = await trio.run_process(
                cmd, capture_stdout=True, capture_stderr=True, check=False
            )
        if done.returncode != 0:
            _fail(cmd, done.returncode, done.stdout, done.stderr, self.server)
        return done

    def copy(self, src: str, dst: str, *flags: str, debug: bool = False) -> str:
        """``skopeo copy``; returns its stderr (the --debug log goes there)."""
        done = self(
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            *flags,
            src,
            dst,
            debug=debug,
        )
        return done.stderr.decode(errors="replace")

    def raw(self, ref: str) -> bytes:
        """The manifest bytes exactly as the registry serves them."""
        return self("inspect", "--tls-verify=false", "--raw", self.docker(ref)).stdout


def run_tool(cmd: Sequence[str], server: DockyardServer, cwd: Path | None = None) -> str:
    """Run any other client (umoci); its stdout, or a failure with both logs."""
    done = subprocess.run(
        list(cmd), capture_output=True, timeout=TOOL_TIMEOUT, check=False, cwd=cwd
    )
    if done.returncode != 0:
        _fail(cmd, done.returncode, done.stdout, done.stderr, server)
    return done.stdout.decode()


def server_events(server: DockyardServer) -> list[StoredEvent]:
    """The server's durable event log (what the websocket feed and webhooks read)."""
    meta = SQLiteMeta(server.data_dir / "dockyard.sqlite3")
    try:
        return meta.events_after(0, 1_000_000)
    finally:
        meta.close()


def _serve(root: Path, workers: int, env: dict[str, str] | None = None) -> Iterator[DockyardServer]:
    yield from serving(DockyardServer(root / "data", workers=workers, env=env))


def serving(server: DockyardServer) -> Iterator[DockyardServer]:
    """Run ``server`` for the caller's fixture; fail if it logged an unhandled error."""
    server.start()
    # The worker chosen by DOCKYARD_TEST_SERVER_BACKEND (tests/serverproc.py) serves.
    backend = server.env.get("DOCKYARD_SERVER_BACKEND") or server_backend()
    started = server.log()
    # Its start-up line names it, unless the server's own [log] settings send that line
    # elsewhere or below their level (tests/e2e/test_request_log.py: warning, to a file).
    if "serving on" in started:
        assert f"backend: {backend})" in started, started
    try:
        yield server
    finally:
        server.stop()
    text = server.log_path.read_text(errors="replace")
    if "Traceback" in text:
        pytest.fail(f"dockyard logged an unhandled error:\n{text[-8000:]}", pytrace=False)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """A one-worker ``dockyard serve`` on loopback, shared by the tests of a module."""
    yield from _serve(tmp_path_factory.mktemp("dockyard"), workers=1)


@pytest.fixture(scope="module")
def registry2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """``dockyard serve --workers 2``: two processes on one data directory."""
    yield from _serve(tmp_path_factory.mktemp("dockyard2"), workers=2)


@pytest.fixture(scope="module")
def registry_small_pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    """A server whose tag lists, catalog and referrers come in pages of two by default,
    so clients must follow ``Link`` headers to see everything."""
    env = {"DOCKYARD_LIMITS_DEFAULT_PAGE_SIZE": "2"}
    yield from _serve(tmp_path_factory.mktemp("dockyard-pages"), workers=1, env=env)


@pytest.fixture
def skopeo(registry: DockyardServer) -> Skopeo:
    return Skopeo(require_tool("skopeo"), registry)


# -- the scaled topology (tests/topology.py): started once per session


# Webhook endpoints every instance delivers to (test_scaled.py's once-per-event test).
SCALED_HOOK_REPOSITORIES = "hooks/*"
# Uploads idle this long are purged by every instance's janitor, which looks this often.
SCALED_MAX_IDLE = 6.0
SCALED_PURGE_INTERVAL = 0.5
# A killed instance's upload leases free the session this soon for a client's retry.
SCALED_LEASE_SECONDS = 2.0


@pytest.fixture(scope="session")
def scaled_receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def scaled(
    tmp_path_factory: pytest.TempPathFactory,
    scaled_receiver: Receiver,
    postgres_server: PostgresServer,
    seaweed: SeaweedServer,
) -> Iterator[Topology]:
    """Two instances behind haproxy sharing a PostgreSQL database and an S3 bucket on
    SeaweedFS, each through relays of its own (tests/topology.py ``pg_s3_backend``), no
    local disk shared: issue 9's target topology."""
    directory = tmp_path_factory.mktemp("scaled")
    backend = pg_s3_backend(
        directory / "backend",
        postgres_server.new_database(),
        seaweed,
        seaweed.new_bucket("scaled"),
    )
    hooks = [
        hook(path, f"{scaled_receiver.url}/{path}", repositories=[SCALED_HOOK_REPOSITORIES])
        for path in ("a", "b")
    ]
    topology = Topology(
        directory,
        backend,
        instances=2,
        env={
            "DOCKYARD_EVENTS_PULL_FLUSH_INTERVAL": "0.05",
            "DOCKYARD_UPLOADS_MAX_IDLE": str(SCALED_MAX_IDLE),
            "DOCKYARD_UPLOADS_PURGE_INTERVAL": str(SCALED_PURGE_INTERVAL),
            "DOCKYARD_UPLOADS_LEASE_SECONDS": str(SCALED_LEASE_SECONDS),
            "DOCKYARD_LOG_ACCESS": "true",
        },
        config=webhooks_toml(hooks),
    )
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()
    broken = topology.tracebacks()
    if broken:
        pytest.fail(f"unhandled errors in {broken}:\n{topology.logs()}", pytrace=False)
