"""Basic auth end to end: a real ``dockyard serve`` with ``auth.mode = "basic"``, its users
file made by ``dockyard users add``, and real clients (skopeo, oras-py) logging in."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import oras.client
import pytest

from tests.e2e.conftest import Skopeo, _serve
from tests.imagegen import OCILayout, build_image, make_layer, random_layers
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

PASSWORDS = {"root": "r00t-secret", "alice": "alice secret", "bob": "b0b"}
RULES: list[dict[str, list[str]]] = [
    {"users": ["root"], "repositories": ["*"], "actions": ["*"]},
    {"users": ["alice"], "repositories": ["team/*"], "actions": ["pull", "push"]},
    {"users": ["bob"], "repositories": ["team/*"], "actions": ["pull"]},
    {"users": ["anonymous"], "repositories": ["public/*"], "actions": ["pull"]},
]


def users_add(htpasswd: Path, name: str, password: str) -> None:
    """``echo PASSWORD | dockyard users add NAME --password-stdin --htpasswd PATH``."""
    command = [sys.executable, "-m", "dockyard.cli", "users", "add", name, "--password-stdin"]
    done = subprocess.run(
        [*command, "--htpasswd", str(htpasswd)],
        input=f"{password}\n".encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()


def write_auth_config(root: Path, mode: str) -> Path:
    """A users file of PASSWORDS (made by ``dockyard users add``) and a config with
    ``auth.mode = mode`` and RULES; the config's path."""
    htpasswd = root / "htpasswd"
    for name, password in PASSWORDS.items():
        users_add(htpasswd, name, password)
    config = root / "dockyard.toml"
    lines = ["[auth]", f"mode = {json.dumps(mode)}", f"htpasswd = {json.dumps(str(htpasswd))}", ""]
    for rule in RULES:
        lines += ["[[access]]", *(f"{k} = {json.dumps(v)}" for k, v in rule.items()), ""]
    config.write_text("\n".join(lines))
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("dockyard-auth")
    config = write_auth_config(root, "basic")
    yield from _serve(root, workers=2, env={"DOCKYARD_CONFIG": str(config)})


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> OCILayout:
    layout = OCILayout(tmp_path_factory.mktemp("auth-images") / "layout")
    layout.add_image("v1", build_image([make_layer(11), *random_layers(12, 2)]))
    layout.add_image("v2", build_image([make_layer(13)]))
    return layout


@pytest.fixture
def skopeo(server: DockyardServer) -> Skopeo:
    return Skopeo(require_tool("skopeo"), server)


def creds(name: str) -> str:
    return f"{name}:{PASSWORDS[name]}"


def status(server: DockyardServer, method: str, path: str, user: str | None) -> int:
    auth = (user, PASSWORDS[user]) if user else None
    return httpx.request(method, f"{server.url}{path}", auth=auth, timeout=10).status_code


def test_probe_asks_for_credentials(server: DockyardServer) -> None:
    r = httpx.get(f"{server.url}/v2/")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Basic realm="dockyard"')
    assert httpx.get(f"{server.url}/v2/", auth=("alice", PASSWORDS["alice"])).status_code == 200
    assert httpx.get(f"{server.url}/v2/", auth=("alice", "wrong")).status_code == 401


def test_skopeo_push_and_pull_with_credentials(
    skopeo: Skopeo, layout: OCILayout, server: DockyardServer, tmp_path: Path
) -> None:
    target = skopeo.docker("team/app:v1")
    skopeo.copy(layout.ref("v1"), target, "--dest-creds", creds("alice"), "--preserve-digests")
    out = tmp_path / "pulled"
    skopeo.copy(target, f"oci:{out}:v1", "--src-creds", creds("bob"))
    assert json.loads((out / "index.json").read_text())["manifests"]
    # Without credentials, or with wrong ones, the pull is refused.
    for flags in ((), ("--src-creds", "alice:wrong")):
        done = skopeo(
            "copy",
            "--src-tls-verify=false",
            *flags,
            target,
            f"oci:{tmp_path / 'no'}:x",
            check=False,
        )
        assert done.returncode != 0
        assert b"401" in done.stderr or b"unauthorized" in done.stderr.lower()


def test_refused_push_pull_delete(
    skopeo: Skopeo, layout: OCILayout, server: DockyardServer
) -> None:
    skopeo.copy(layout.ref("v2"), skopeo.docker("team/base:v2"), "--dest-creds", creds("root"))
    digest = (
        skopeo(
            "inspect",
            "--tls-verify=false",
            "--creds",
            creds("bob"),
            "--format",
            "{{.Digest}}",
            skopeo.docker("team/base:v2"),
        )
        .stdout.decode()
        .strip()
    )
    # bob may pull team/* but not push: skopeo fails, the server said 403.
    done = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds("bob"),
        layout.ref("v2"),
        skopeo.docker("team/bob:v2"),
        check=False,
    )
    assert done.returncode != 0
    assert status(server, "POST", "/v2/team/bob/blobs/uploads/", "bob") == 403
    assert status(server, "POST", "/v2/team/bob/blobs/uploads/", None) == 401
    # alice may push but not delete.
    done = skopeo(
        "delete",
        "--tls-verify=false",
        "--creds",
        creds("alice"),
        skopeo.docker("team/base:v2"),
        check=False,
    )
    assert done.returncode != 0
    assert status(server, "DELETE", f"/v2/team/base/manifests/{digest}", "alice") == 403
    assert status(server, "GET", "/v2/team/base/manifests/v2", "alice") == 200  # still there
    skopeo("delete", "--tls-verify=false", "--creds", creds("root"), skopeo.docker("team/base:v2"))
    assert status(server, "GET", "/v2/team/base/manifests/v2", "root") == 404


def test_anonymous_pull_where_a_rule_allows_it(
    skopeo: Skopeo, layout: OCILayout, server: DockyardServer, tmp_path: Path
) -> None:
    skopeo.copy(layout.ref("v1"), skopeo.docker("public/tools:v1"), "--dest-creds", creds("root"))
    skopeo.copy(skopeo.docker("public/tools:v1"), f"oci:{tmp_path / 'anon'}:v1")
    # Logged in, alice may pull it too; but not what no rule gives her (403, not 401).
    assert status(server, "GET", "/v2/public/tools/manifests/v1", "alice") == 200
    assert status(server, "GET", "/v2/other/manifests/v1", "alice") == 403
    r = httpx.get(f"{server.url}/v2/_catalog")
    assert r.status_code == 200 and r.json()["repositories"] == ["public/tools"]
    done = skopeo(
        "copy",
        "--dest-tls-verify=false",
        layout.ref("v1"),
        skopeo.docker("public/mine:v1"),
        check=False,
    )
    assert done.returncode != 0


def oras_client(server: DockyardServer, user: str) -> Any:
    client = oras.client.OrasClient(hostname=server.host, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth(user, PASSWORDS[user])
    return client


def test_oras_push_and_pull_with_credentials(
    server: DockyardServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # oras-py pushes files under the working directory only
    artifact = Path("notes.txt")
    artifact.write_text("release notes\n")
    target = f"{server.host}/team/notes:v1"
    r = oras_client(server, "alice").push(files=[str(artifact)], target=target)
    assert r.status_code == 201, r.text
    files = oras_client(server, "bob").pull(target=target, outdir=str(tmp_path / "out"))
    assert [Path(f).read_text() for f in files] == ["release notes\n"]
    # bob may pull team/* but not push: oras-py reports the registry's DENIED answer.
    with pytest.raises(ValueError, match="DENIED"):
        oras_client(server, "bob").push(files=[str(artifact)], target=f"{server.host}/team/x:v1")
    assert status(server, "GET", "/v2/team/x/tags/list", "root") == 404  # nothing was stored
