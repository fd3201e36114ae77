"""Token auth end to end: ``dockyard serve`` with ``auth.mode = "token"`` and the built-in
token service; skopeo and httpx get tokens from it and push and pull with them (oras-py
re-sends the same token after a 401 insufficient_scope, so it is not used here)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Skopeo, _serve
from tests.e2e.test_auth_e2e import PASSWORDS, creds, write_auth_config
from tests.imagegen import OCILayout, build_image, make_layer, random_layers
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("dockyard-token")
    config = write_auth_config(root, "token")
    yield from _serve(
        root, workers=2, env={"DOCKYARD_CONFIG": str(config), "DOCKYARD_LOG_ACCESS": "true"}
    )


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> OCILayout:
    layout = OCILayout(tmp_path_factory.mktemp("token-images") / "layout")
    layout.add_image("v1", build_image([make_layer(21), *random_layers(22, 2)]))
    return layout


def test_probe_challenges_with_bearer(server: DockyardServer) -> None:
    r = httpx.get(f"{server.url}/v2/")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == (
        f'Bearer realm="{server.url}/auth/token",service="dockyard"'
    )
    r = httpx.get(f"{server.url}/v2/team/app/tags/list")
    assert 'scope="repository:team/app:pull"' in r.headers["www-authenticate"]


def test_skopeo_push_and_pull_through_tokens(
    server: DockyardServer, layout: OCILayout, tmp_path: Path
) -> None:
    skopeo = Skopeo(require_tool("skopeo"), server)
    target = skopeo.docker("team/app:v1")
    skopeo.copy(layout.ref("v1"), target, "--dest-creds", creds("alice"), "--preserve-digests")
    out = tmp_path / "pulled"
    skopeo.copy(target, f"oci:{out}:v1", "--src-creds", creds("bob"))
    assert json.loads((out / "index.json").read_text())["manifests"]
    done = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds("bob"),
        layout.ref("v1"),
        skopeo.docker("team/bob:v1"),
        check=False,
    )
    assert done.returncode != 0
    # Anonymous: a token without credentials, for what the rules allow anonymous callers.
    skopeo.copy(layout.ref("v1"), skopeo.docker("public/app:v1"), "--dest-creds", creds("root"))
    skopeo.copy(skopeo.docker("public/app:v1"), f"oci:{tmp_path / 'anon'}:v1")
    done = skopeo(
        "copy", "--src-tls-verify=false", target, f"oci:{tmp_path / 'no'}:v1", check=False
    )
    assert done.returncode != 0


def test_tokens_over_http(server: DockyardServer) -> None:
    def token(user: str, scope: str) -> str:
        r = httpx.get(
            f"{server.url}/auth/token",
            params={"service": "dockyard", "scope": scope},
            auth=(user, PASSWORDS[user]),
        )
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    bob = token("bob", "repository:team/app:pull,push")
    r = httpx.get(f"{server.url}/v2/team/app/tags/list", headers={"authorization": f"Bearer {bob}"})
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server.url}/v2/team/app/blobs/uploads/", headers={"authorization": f"Bearer {bob}"}
    )
    assert r.status_code == 401
    assert r.headers["www-authenticate"].endswith(
        'scope="repository:team/app:pull,push",error="insufficient_scope"'
    )
    r = httpx.get(f"{server.url}/v2/team/app/tags/list", headers={"authorization": "Bearer x.y.z"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
