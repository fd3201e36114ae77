"""Registries (and the discard server) started on loopback with temporary data.

Each server is a child process in its own session; ``pids`` are the processes whose CPU
and memory the scenarios read (a server's whole process tree is resolved at measurement
time, so hypercorn's workers count). ``stop`` signals the process group of the pid it
started (SIGTERM, then SIGKILL after a timeout) and removes the temporary directory.

For the events scenario a second dockyard runs with ``DOCKYARD_EVENTS_RECORD_PULLS=false``
(:data:`PULL_EVENTS_OFF`): same build and workers, its own temporary data directory.

Distribution is Debian's ``docker-registry`` package (2.8.2): :func:`ensure_distribution`
installs it with apt-get when missing. Or, when :data:`DISTRIBUTION_ENV`
(``DOCKYARD_PERF_DISTRIBUTION``) names a ``registry`` binary, that one: CNCF Distribution
3.1.1 built from source (``perf/README.md`` says how). Either is started as ``BINARY serve
CONFIG.yml`` with our own config (never a systemd service): filesystem root in the
temporary directory, loopback address, access log off and log level ``error`` (dockyard's
access log is off here too, see ``Dockyard``), the in-memory blob descriptor cache Debian's
default config enables, delete enabled. 3.x reads the same keys; it also traces every
request with OpenTelemetry and exports the spans to an OTLP collector on localhost:4318
unless ``OTEL_TRACES_EXPORTER=none``, which its deployment docs give for "no collector"
and which we set (spans are still made: that cost is 3.x's own).

With ``tls`` (``perf.tls.ServerTLS``: the run's certificate) every server speaks HTTPS
only: dockyard through ``DOCKYARD_TLS_CERT``/``_KEY`` (ALPN h2 and http/1.1), Distribution
through ``http.tls.certificate``/``key`` in its config (Go's server offers h2 and
http/1.1 by itself), the discard server through ``--cert``/``--key`` (http/1.1 only).
Readiness is checked over TLS, verifying the certificate.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from perf.httpclient import Connection, HTTPError
from perf.tls import ClientTLS, ServerTLS

DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: perf-suite-secret
{tls}health:
  storagedriver:
    enabled: false
"""


# A Distribution binary to compare against instead of Debian's docker-registry.
DISTRIBUTION_ENV = "DOCKYARD_PERF_DISTRIBUTION"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ensure_distribution(install: bool = True) -> str:
    """Path of ``docker-registry``; installs Debian's package if missing and allowed."""
    found = shutil.which("docker-registry")
    if found:
        return found
    if not install:
        raise FileNotFoundError(
            "docker-registry is not installed (apt-get install docker-registry)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "install", "-y", "-qq", "docker-registry"]
    if subprocess.run(apt, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(apt, env=env, check=True)
    # The package enables a systemd service; we never use it (no systemd here anyway).
    found = shutil.which("docker-registry")
    if not found:
        raise FileNotFoundError("docker-registry still missing after apt-get install")
    return found


def distribution_binary(environ: Mapping[str, str] | None = None, install: bool = True) -> str:
    """The Distribution to start: :data:`DISTRIBUTION_ENV`'s binary when set, else Debian's.

    A set but unusable path is an error, never a silent fallback to 2.8.2 (a comparison
    against the wrong version would look like a real one).
    """
    environ = os.environ if environ is None else environ
    given = environ.get(DISTRIBUTION_ENV, "")
    if not given:
        return ensure_distribution(install)
    path = Path(given).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{DISTRIBUTION_ENV}={given}: not an executable file")
    return str(path.resolve())


def distribution_version(binary: str) -> str:
    """``--version``'s line, with the program's name for the path it starts with (results
    name no directory of the machine that measured)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    text = out.stdout.strip() or out.stderr.strip()
    if text.startswith(binary):
        text = Path(binary).name + text[len(binary) :]
    return text


def version_tuple(version: str) -> tuple[int, ...]:
    """(3, 1, 1) from ``registry github.com/distribution/distribution/v3 v3.1.1``, (2, 8, 2)
    from ``docker-registry github.com/docker/distribution 2.8.2+ds1``; () if none."""
    found = re.search(r"(?:^|\s)v?(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(x) for x in found.groups()) if found else ()


def distribution_config(root: Path, port: int, tls: ServerTLS | None = None) -> str:
    """The loopback config; 2.8 and 3.x read the same keys (checked by starting both)."""
    block = ""
    if tls is not None:
        block = f"  tls:\n    certificate: {tls.cert}\n    key: {tls.key}\n"
    return DISTRIBUTION_CONFIG.format(root=root, port=port, tls=block)


class Server:
    """A child process serving HTTP on 127.0.0.1:<port>."""

    name = "server"

    def __init__(
        self, port: int | None = None, keep: bool = False, tls: ServerTLS | None = None
    ) -> None:
        self.port = port or free_port()
        self.keep = keep
        self.tls = tls
        self.tmp = Path(tempfile.mkdtemp(prefix=f"perf-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.description = self.name

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready_path(self) -> str:
        return "/v2/"

    def start(self, timeout: float = 30.0) -> Server:
        log = open(self.tmp / "server.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.command(),
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.tmp,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log()
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"{self.name} exited with {code}:\n{text}")
            try:
                client = ClientTLS(self.tls.ca) if self.tls else None
                with Connection("127.0.0.1", self.port, timeout=2, tls=client) as conn:
                    if conn.request("GET", self.ready_path()).status == 200:
                        return self
            except (OSError, HTTPError):
                pass
            time.sleep(0.05)
        text = self.log()
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready in {timeout} s:\n{text}")

    def log(self) -> str:
        try:
            return (self.tmp / "server.log").read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Dockyard(Server):
    """``dockyard serve --workers N`` with its data directory in the temporary dir."""

    name = "dockyard"

    def __init__(
        self,
        workers: int = 2,
        port: int | None = None,
        keep: bool = False,
        settings: dict[str, str] | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        super().__init__(port, keep, tls)
        self.workers = workers
        # DOCKYARD_* variables, e.g. pull events off. The access log is off unless asked
        # for, like Distribution's here (its cost is measured by perf.logs).
        self.settings = {"DOCKYARD_LOG_ACCESS": "false", **(settings or {})}
        from dockyard import __version__

        extra = "".join(f", {k}={v}" for k, v in sorted(self.settings.items()))
        extra += ", HTTPS (TLS, ALPN h2 and http/1.1)" if tls else ""
        self.description = f"dockyard {__version__} (--workers {workers}{extra})"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "dockyard.cli", "serve",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--data-dir", str(self.tmp / "data"),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        env.update(self.settings)
        if self.tls is not None:
            env.update(DOCKYARD_TLS_CERT=str(self.tls.cert), DOCKYARD_TLS_KEY=str(self.tls.key))
        return env

    def ready_path(self) -> str:
        return "/readyz"


PULL_EVENTS_OFF = {"DOCKYARD_EVENTS_RECORD_PULLS": "false"}


def distribution_env(version: tuple[int, ...], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment to start a Distribution of ``version`` with."""
    env = dict(environ)
    if version >= (3,):
        # No collector here: 3.x would otherwise retry OTLP exports to localhost:4318.
        env.setdefault("OTEL_TRACES_EXPORTER", "none")
    return env


class Distribution(Server):
    """CNCF Distribution with a loopback config: the binary :data:`DISTRIBUTION_ENV` names
    (3.1.1 built from source), else Debian's docker-registry (2.8.2)."""

    name = "distribution"

    def __init__(
        self,
        port: int | None = None,
        keep: bool = False,
        install: bool = True,
        binary: str | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        self.binary = binary or distribution_binary(install=install)
        super().__init__(port, keep, tls)
        self.description = distribution_version(self.binary)
        self.version = version_tuple(self.description)
        config = distribution_config(self.tmp / "data", self.port, tls)
        (self.tmp / "config.yml").write_text(config)

    def command(self) -> list[str]:
        return [self.binary, "serve", str(self.tmp / "config.yml")]

    def env(self) -> dict[str, str]:
        return distribution_env(self.version, os.environ)


class DiscardServer(Server):
    name = "discard"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "perf.discard", "--port", str(self.port)]
        if self.tls is not None:
            command += ["--cert", str(self.tls.cert), "--key", str(self.tls.key)]
        return command

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        return env
