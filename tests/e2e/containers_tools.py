"""podman and buildah as root, each store isolated in a temporary directory.

Everything they would keep under /var/lib/containers, /run/containers, /etc/containers or
the user's home goes to the directory given: image storage (vfs, so no overlay mount is
needed), configuration (storage.conf, containers.conf, registries.conf, a signature
policy that accepts anything), network configuration, temporary files and the credential
files (``--authfile`` is passed on every command that talks to a registry). Two things
remain outside: rootful podman 4.3 creates the empty directory /run/containers/networks
(its netavark state directory is fixed for root), and both tools share containers/image's
blob-info cache in /var/lib/containers/cache with skopeo; neither holds images or
credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.e2e.conftest import TOOL_TIMEOUT, _fail
from tests.serverproc import DockyardServer
from tests.tools import require_tool

# Flags of the commands that talk to a plain-HTTP registry on loopback.
INSECURE = "--tls-verify=false"


class ContainerStore:
    """One isolated podman/buildah store; ``run("podman", ...)`` runs a command in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        home = root / "home"
        for directory in (home, root / "tmp", root / "networks"):
            directory.mkdir(parents=True, exist_ok=True)
        (root / "storage.conf").write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f"graphroot = {json.dumps(str(root / 'graph'))}\n"
            f"runroot = {json.dumps(str(root / 'run'))}\n"
        )
        (root / "containers.conf").write_text(
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f"events_logfile_path = {json.dumps(str(root / 'events.log'))}\n"
            f"tmp_dir = {json.dumps(str(root / 'tmp'))}\n"
            f"volume_path = {json.dumps(str(root / 'volumes'))}\n"
            "[network]\n"
            'network_backend = "netavark"\n'
            f"network_config_dir = {json.dumps(str(root / 'networks'))}\n"
        )
        # No search registries: every reference in the tests names its registry.
        (root / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.policy = root / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        # buildah refuses to start when REGISTRY_AUTH_FILE names a missing file.
        default_auth = root / "auth.json"
        default_auth.write_text('{"auths": {}}\n')
        self.env = {
            **{
                k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "XDG_CONFIG_HOME")
            },
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(default_auth),
            # containers/image also reads ~/.docker/config.json and
            # $XDG_CONFIG_HOME/containers/auth.json for credentials.
            "HOME": str(home),
            "TMPDIR": str(root / "tmp"),
        }

    def run(
        self,
        tool: str,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        server: DockyardServer | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """``tool args...``; with ``check`` a non-zero exit fails the test with both logs."""
        cmd = [require_tool(tool), *args]
        done = subprocess.run(
            cmd,
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            env=self.env,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        if check and done.returncode != 0:
            if server is None:
                raise AssertionError(f"{cmd} exited {done.returncode}: {done.stderr.decode()}")
            _fail(cmd, done.returncode, done.stdout, done.stderr, server)
        return done

    def build_scratch_image(self, name: str, files: dict[str, bytes]) -> str:
        """``buildah from scratch``, copy ``files`` into ``/``, commit as ``name``; its id."""
        container = self.run("buildah", "from", "scratch").stdout.decode().strip()
        for file_name, content in files.items():
            source = self.root / "tmp" / file_name
            source.write_bytes(content)
            self.run("buildah", "copy", container, str(source), f"/{file_name}")
        self.run("buildah", "commit", "--signature-policy", str(self.policy), container, name)
        self.run("buildah", "rm", container)
        return self.image_id("buildah", name)

    def image_id(self, tool: str, ref: str) -> str:
        """The id (config digest) of the local image ``ref``, as ``tool`` reports it."""
        if tool == "buildah":
            args: Sequence[str] = ("inspect", "--type", "image", "--format", "{{.FromImageID}}")
        else:
            args = ("image", "inspect", "--format", "{{.Id}}")
        return self.run(tool, *args, ref).stdout.decode().strip()
