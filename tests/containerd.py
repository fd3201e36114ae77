"""A private containerd for tests, and its ``ctr`` pulling through a ``hosts.toml`` mirror.

``Containerd(tmp)`` runs ``containerd`` (as root, the only way it runs) with everything of
its own under a short temporary directory: root, state, the gRPC and ttrpc sockets (a
Unix socket path must stay under 108 bytes, so not under pytest's long tmp_path) and a
minimal config: version 2, the CRI plugin and the snapshotters that need more than a
directory (btrfs, zfs, devmapper, aufs) disabled, the ``opt`` plugin's directory inside
the temporary one, ``native`` the snapshotter (copies; no mount needed). ``stop()``
terminates it and removes the directory.

``ctr(...)`` runs ``ctr -a <socket>`` against it. ``hosts_dir(upstream, mirror)`` writes
the ``hosts.toml`` that sends pulls of ``upstream`` (host:port) to ``mirror`` first with
capabilities pull and resolve: containerd then asks the mirror
``GET /v2/<path>/manifests/<tag>?ns=<upstream>`` (and blobs with the same ``ns=``), and
falls back to the upstream itself only if the mirror fails. ``pull`` passes
``--hosts-dir``, ``--plain-http`` is not needed: each host's scheme is in hosts.toml.

Tests that need it call ``require_containerd()``: a failure in CI, a skip naming the
package elsewhere (and when not root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import pytest

from tests.tools import wait_ready

# Seconds one ctr command may take (a pull of a few small layers takes well under one).
CTR_TIMEOUT = 120.0
SNAPSHOTTER = "native"
NAMESPACE = "dockyard-tests"

CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""

HOSTS_TOML = """\
server = "http://{upstream}"

[host."http://{mirror}"]
  capabilities = ["pull", "resolve"]
"""


def require_containerd() -> tuple[str, str]:
    """Paths of ``containerd`` and ``ctr``; skip (fail in CI) if missing or not root."""
    containerd, ctr = shutil.which("containerd"), shutil.which("ctr")
    message = ""
    if containerd is None or ctr is None:
        message = "containerd is not installed: apt-get install -y containerd"
    elif os.geteuid() != 0:
        message = "containerd runs as root only: run these tests as root"
    if message:
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must install every tool the suite needs)")
        pytest.skip(message)
    assert containerd is not None and ctr is not None
    return containerd, ctr


class CtrFailed(AssertionError):
    pass


class Containerd:
    """One private containerd; ``ctr(...)`` talks to it in namespace ``NAMESPACE``."""

    def __init__(self) -> None:
        self.containerd, self.ctr_path = require_containerd()
        # Short: the socket path must fit in sockaddr_un.
        self.dir = Path(tempfile.mkdtemp(prefix="ctrd-"))
        self.socket = self.dir / "c.sock"
        self.log_path = self.dir / "containerd.log"
        self.config = self.dir / "config.toml"
        self.config.write_text(
            CONFIG.format(
                root=self.dir / "root",
                state=self.dir / "state",
                socket=self.socket,
                opt=self.dir / "opt",
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Containerd:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.containerd, "--config", str(self.config)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_ready(
            self.proc,
            lambda: self.socket.exists() and self.ctr("version", check=False).returncode == 0,
            name="containerd",
            timeout=timeout,
            log=self.log,
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """``ctr -a <socket> -n NAMESPACE args...``; with ``check`` a non-zero exit raises
        ``CtrFailed`` with its output and containerd's log."""
        cmd = [self.ctr_path, "-a", str(self.socket), "-n", NAMESPACE, *args]
        done = subprocess.run(cmd, capture_output=True, timeout=CTR_TIMEOUT, check=False)
        if check and done.returncode != 0:
            raise CtrFailed(
                f"{' '.join(cmd)} exited {done.returncode}\n"
                f"--- stdout\n{done.stdout.decode(errors='replace')[-3000:]}\n"
                f"--- stderr\n{done.stderr.decode(errors='replace')[-3000:]}\n"
                f"--- containerd log\n{self.log()}"
            )
        return done

    def hosts_dir(self, upstream: str, mirror: str | None = None) -> Path:
        """A ``--hosts-dir`` for pulls of ``upstream`` (host:port): through ``mirror``
        (host:port of dockyard) when given, else straight from the upstream."""
        directory = self.dir / "hosts" / (mirror or "direct")
        (directory / upstream).mkdir(parents=True, exist_ok=True)
        text = HOSTS_TOML.format(upstream=upstream, mirror=mirror)
        if mirror is None:
            text = text.split("\n\n")[0] + "\n"
        (directory / upstream / "hosts.toml").write_text(text)
        return directory

    def pull(self, ref: str, hosts_dir: Path) -> str:
        """``ctr images pull`` (unpacked with the native snapshotter); its output."""
        done = self.ctr(
            "images", "pull", "--snapshotter", SNAPSHOTTER, "--hosts-dir", str(hosts_dir), ref
        )
        return done.stdout.decode(errors="replace")

    def image_digest(self, ref: str) -> str | None:
        """The target digest of the local image ``ref``; None if there is none."""
        out = self.ctr("images", "ls").stdout.decode().splitlines()
        for line in out[1:]:
            fields = line.split()
            if fields and fields[0] == ref:
                return next(f for f in fields if f.startswith("sha256:"))
        return None

    def forget(self, ref: str) -> None:
        """Remove the image, its snapshots and content, so the next pull fetches all."""
        self.ctr("images", "rm", "--sync", ref)
        # --sync waited for containerd's gc: nothing of the image may be left.
        left = self.ctr("content", "ls", "-q").stdout.decode().split()
        assert left == [], f"content left after images rm --sync: {left}"

    def content(self) -> list[str]:
        return self.ctr("content", "ls", "-q").stdout.decode().split()

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
