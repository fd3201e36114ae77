"""The scaled topology: N ``dockyard serve`` instances behind a real haproxy.

Each instance is its own process group with its own ``server.instance`` name, port, log
file and ``storage.root``; what they share (the metadata store and the blob store) comes
from a ``Backend``: DOCKYARD_* settings every instance gets, plus the data directory each
instance is given. haproxy (Debian's) balances round robin with no stickiness and takes
an instance out when its ``GET /readyz`` health check fails.

``pg_s3_backend`` is the target topology: the instances share a PostgreSQL database and
an S3 bucket (SeaweedFS in the tests) and no local disk; each reaches both servers through
``TcpRelay``s of its own, so one instance's path to either can be cut alone.
``interim_backend`` (kept for comparison, e.g. ``perf.scaled --backend interim``) shares
ONE SQLite file and ONE filesystem data directory on the local disk, which each instance
reaches through a symbolic link of its own (so one instance's view of the blob store can
be broken alone).
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests.serverproc import DockyardServer, free_port
from tests.tcprelay import TcpRelay
from tests.tools import require_tool

if TYPE_CHECKING:
    from tests.seaweed import SeaweedServer

# haproxy's health checks: fast enough that a test sees an instance leave and rejoin
# within a second or two.
CHECK_INTER_MS = 200
CHECK_FALL = 2
CHECK_RISE = 2


@dataclass
class Backend:
    """What the instances share. ``env`` goes to every instance, ``instance_env(i)`` to
    instance i only; ``data_dir(i)`` is instance i's ``storage.root``.
    ``break_storage``/``heal_storage`` (and the database's) make one instance's blob store
    (database) unreachable and reachable again; None: this backend cannot.

    A backend of network servers (PostgreSQL, an S3 store) gives each instance its own
    ``TcpRelay`` (tests/tcprelay.py) to each server through ``instance_env`` (say
    ``DOCKYARD_DATABASE_URL`` naming relay i's port), and cuts relay i to break instance
    i's path alone, as a network partition would."""

    name: str
    env: dict[str, str]
    data_dir: Callable[[int], Path]
    instance_env: Callable[[int], dict[str, str]] = lambda index: {}
    break_storage: Callable[[int], None] | None = None
    heal_storage: Callable[[int], None] | None = None
    break_database: Callable[[int], None] | None = None
    heal_database: Callable[[int], None] | None = None
    # Called by ``Topology.stop`` once the instances are stopped (a backend's relays).
    close: Callable[[], None] = lambda: None


def interim_backend(directory: Path) -> Backend:
    """One SQLite file and one blob directory on the local disk, shared by every instance
    (INTERIM: the target is PostgreSQL + an S3 store, no shared local disk).

    Instance i reaches the blob directory through ``views/instance-i``, a symbolic link;
    pointing that link at nothing makes that instance's blob store unreachable (its
    ``check()`` fails) while the others keep theirs. The SQLite file has a fixed path (a
    connection already open would not notice a link moved, so there is no per-instance
    database fault here: PostgreSQL's comes with a relay per instance)."""
    shared = directory / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    views = directory / "views"
    views.mkdir(exist_ok=True)

    def view(index: int) -> Path:
        link = views / f"instance-{index}"
        if not link.is_symlink():
            link.symlink_to(shared, target_is_directory=True)
        return link

    def break_storage(index: int) -> None:
        link = view(index)
        temporary = views / f".instance-{index}.broken"
        temporary.symlink_to(directory / "unreachable", target_is_directory=True)
        temporary.replace(link)  # atomically: the instance never sees no link at all

    def heal_storage(index: int) -> None:
        link = view(index)
        temporary = views / f".instance-{index}.healed"
        temporary.symlink_to(shared, target_is_directory=True)
        temporary.replace(link)

    return Backend(
        "interim",
        {"DOCKYARD_DATABASE_PATH": str(shared / "dockyard.sqlite3")},
        view,
        break_storage=break_storage,
        heal_storage=heal_storage,
    )


def pg_s3_backend(
    directory: Path,
    postgres_url: str,
    seaweed: SeaweedServer,
    bucket: str,
    relayed: bool = True,
) -> Backend:
    """An empty PostgreSQL database (``postgres_url``) and an S3 ``bucket`` on ``seaweed``
    (SeaweedFS), shared; each instance has its own data directory under ``directory``, so
    nothing is shared on the local disk.

    Instance i reaches PostgreSQL and the S3 gateway through two ``TcpRelay``s of its own
    (made when the instance is first configured): cutting one is a network partition
    between that instance and that server, the others keep theirs. ``relayed=False``
    connects them directly (perf.scaled: the relays' threads would cost CPU), and the
    backend then cannot break anything."""
    database = urlsplit(postgres_url)
    storage = urlsplit(seaweed.endpoint)
    assert database.hostname and database.port and storage.hostname and storage.port
    relays: dict[tuple[str, int], TcpRelay] = {}

    def relay(kind: str, index: int) -> TcpRelay:
        key = (kind, index)
        if key not in relays:
            target = database if kind == "database" else storage
            assert target.hostname and target.port
            relays[key] = TcpRelay(target.hostname, target.port)
        return relays[key]

    def direct_env(index: int) -> dict[str, str]:
        return {
            "DOCKYARD_DATABASE_URL": postgres_url,
            "DOCKYARD_STORAGE_S3_ENDPOINT": seaweed.endpoint,
        }

    def instance_env(index: int) -> dict[str, str]:
        credentials, at, _ = database.netloc.rpartition("@")
        netloc = f"{credentials}{at}{relay('database', index).address}"
        return {
            "DOCKYARD_DATABASE_URL": urlunsplit(database._replace(netloc=netloc)),
            "DOCKYARD_STORAGE_S3_ENDPOINT": f"{storage.scheme}://{relay('storage', index).address}",
        }

    def data_dir(index: int) -> Path:
        path = directory / f"instance-{index}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close() -> None:
        for r in relays.values():
            r.stop()
        relays.clear()

    env = {
        "DOCKYARD_STORAGE_DRIVER": "s3",
        "DOCKYARD_STORAGE_S3_BUCKET": bucket,
        "DOCKYARD_STORAGE_S3_REGION": seaweed.region,
        "DOCKYARD_STORAGE_S3_ACCESS_KEY": seaweed.access_key,
        "DOCKYARD_STORAGE_S3_SECRET_KEY": seaweed.secret_key,
        "DOCKYARD_STORAGE_S3_PATH_STYLE": "true",
    }
    if not relayed:
        return Backend("pg-s3", env, data_dir, instance_env=direct_env)
    return Backend(
        "pg-s3",
        env,
        data_dir,
        instance_env=instance_env,
        break_storage=lambda index: relay("storage", index).cut(),
        heal_storage=lambda index: relay("storage", index).heal(),
        break_database=lambda index: relay("database", index).cut(),
        heal_database=lambda index: relay("database", index).heal(),
        close=close,
    )


DOCS = Path(__file__).parents[1] / "docs" / "storage.md"


def haproxy_config(port: int, stats_port: int, servers: list[DockyardServer]) -> str:
    """docs/storage.md's haproxy configuration (the snippet marked tested) for these
    instances: loopback ports, fast health checks, and a stats page the tests read."""
    match = re.search(r"<!-- tested: scaled-haproxy -->\n```\w*\n(.*?)```", DOCS.read_text(), re.S)
    assert match, f"no tested scaled-haproxy snippet in {DOCS.name}"
    lines: list[str] = []
    for line in match[1].splitlines():
        if line.strip().startswith("server "):
            continue  # replaced by this topology's instances
        if line.strip().startswith("default-server "):
            line = (
                f"    default-server inter {CHECK_INTER_MS}ms fastinter {CHECK_INTER_MS}ms"
                f" downinter {CHECK_INTER_MS}ms fall {CHECK_FALL} rise {CHECK_RISE}"
            )
        if line.strip() == "bind :5000":
            line = f"    bind 127.0.0.1:{port}"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    assert f"bind 127.0.0.1:{port}" in text and "inter 2s" not in text, text
    instances = "".join(f"    server instance-{i} {s.host} check\n" for i, s in enumerate(servers))
    stats = (
        f"frontend stats\n    bind 127.0.0.1:{stats_port}\n    stats enable\n    stats uri /stats\n"
    )
    return text + instances + stats


@dataclass
class Topology:
    """N instances and haproxy in front; ``url`` is haproxy's address.

    ``kill9(i)`` SIGKILLs instance i (every process of it), ``restart(i)`` starts it again
    on the same port and settings, ``wait_ready(i)`` waits until both the instance and
    haproxy say it is up. ``config`` is TOML every instance reads (``[[webhooks]]``)."""

    directory: Path
    backend: Backend
    instances: int = 2
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    config: str = ""
    servers: list[DockyardServer] = field(init=False, default_factory=list)
    port: int = field(init=False, default=0)
    stats_port: int = field(init=False, default=0)
    _haproxy: subprocess.Popen[bytes] | None = field(init=False, default=None)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def haproxy_log(self) -> Path:
        return self.directory / "haproxy.log"

    def instance_name(self, index: int) -> str:
        return f"instance-{index}"

    def start(self) -> Topology:
        haproxy = require_tool("haproxy")
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {**self.backend.env, **self.env}
        if self.config:
            conf = self.directory / "dockyard.toml"
            conf.write_text(self.config)
            env["DOCKYARD_CONFIG"] = str(conf)
        for index in range(self.instances):
            server = DockyardServer(
                self.backend.data_dir(index),
                workers=self.workers,
                env={
                    **env,
                    **self.backend.instance_env(index),
                    "DOCKYARD_SERVER_INSTANCE": self.instance_name(index),
                },
            )
            # One log per instance, beside the others (the data directory may be shared).
            server.log_path = self.directory / f"{self.instance_name(index)}.log"
            self.servers.append(server)
        try:
            for server in self.servers:
                server.start()
            self._start_haproxy(haproxy)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_haproxy(self, path: str) -> None:
        self.port, self.stats_port = free_port(), free_port()
        conf = self.directory / "haproxy.cfg"
        conf.write_text(haproxy_config(self.port, self.stats_port, self.servers))
        with open(self.haproxy_log, "ab") as out:
            self._haproxy = subprocess.Popen(
                [path, "-db", "-f", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._haproxy.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.haproxy_output()}")
            try:
                httpx.get(f"http://127.0.0.1:{self.stats_port}/stats", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not start:\n{self.haproxy_output()}")

    def haproxy_output(self) -> str:
        try:
            return self.haproxy_log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, str]:
        """haproxy's view of each instance: "UP", "DOWN", "UP 1/2", ..."""
        r = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5)
        r.raise_for_status()
        rows = csv.DictReader(io.StringIO(r.text.removeprefix("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "dockyard" and row["svname"].startswith("instance-")
        }

    def sessions(self) -> list[int]:
        """haproxy's current sessions (requests in flight) to each instance."""
        r = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5)
        r.raise_for_status()
        rows = {
            row["svname"]: int(row["scur"] or 0)
            for row in csv.DictReader(io.StringIO(r.text.removeprefix("# ")))
            if row["pxname"] == "dockyard"
        }
        return [rows.get(self.instance_name(i), 0) for i in range(len(self.servers))]

    def instance_ready(self, index: int) -> bool:
        try:
            r = httpx.get(f"{self.servers[index].url}/readyz", timeout=2)
        except httpx.TransportError:
            return False
        return r.status_code == 200

    def wait_ready(self, index: int | None = None, timeout: float = 20.0) -> None:
        """Until instance ``index`` (default: every one) is ready and haproxy has it UP."""
        indexes = range(len(self.servers)) if index is None else [index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if all(
                self.instance_ready(i) and status.get(self.instance_name(i)) == "UP"
                for i in indexes
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"not ready in {timeout} s: haproxy says {self.status()}")

    def wait_down(self, index: int, timeout: float = 10.0) -> None:
        """Until haproxy has taken instance ``index`` out."""
        deadline = time.monotonic() + timeout
        name = self.instance_name(index)
        while time.monotonic() < deadline:
            if self.status().get(name, "").startswith("DOWN"):
                return
            time.sleep(0.05)
        raise AssertionError(f"haproxy still has {name}: {self.status()}")

    def pids(self) -> list[int]:
        """Every running instance's serve process and haproxy's (for CPU figures)."""
        pids = [s.proc.pid for s in self.servers if s.proc is not None]
        return pids + ([self._haproxy.pid] if self._haproxy is not None else [])

    def kill9(self, index: int) -> None:
        """SIGKILL every process of instance ``index``, like a machine dying."""
        self.servers[index].kill()

    def restart(self, index: int) -> None:
        self.servers[index].start()

    def logs(self) -> str:
        return "\n".join(
            f"--- {self.instance_name(i)}\n{s.log()}" for i, s in enumerate(self.servers)
        )

    def stop(self) -> None:
        if self._haproxy is not None:
            self._haproxy.terminate()
            try:
                self._haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self._haproxy.kill()
                self._haproxy.wait()
            self._haproxy = None
        for server in self.servers:
            server.stop()
        self.backend.close()

    def tracebacks(self) -> list[str]:
        """The instances whose log holds an unhandled error."""
        return [
            self.instance_name(i)
            for i, s in enumerate(self.servers)
            if s.log_path.exists() and "Traceback" in s.log_path.read_text(errors="replace")
        ]
