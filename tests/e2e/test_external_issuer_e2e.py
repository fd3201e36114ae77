"""An external token issuer end to end: ``dockyard serve`` with ``auth.mode = "token"``,
the built-in service off, trusting a token service the test runs on loopback.

Two configurations, each one server for the module: the issuer's keys as a JWKS served
over HTTPS (``auth.token.jwks`` with ``jwks_ca``), and an issuer that signs with the leaf
of a root -> intermediate -> leaf chain carried in the token's ``x5c`` header
(``auth.token.root_certificates``). skopeo logs in through the challenge's realm (the
external service), pushes and pulls; expired, forged, foreign-audience and wrongly
chained tokens are sent with httpx and refused with 401 ``invalid_token``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dockyard.auth.keys import SigningKey
from tests.e2e.conftest import Skopeo, serving
from tests.external_issuer import ExternalIssuer
from tests.imagegen import OCILayout, build_image, make_layer, random_layers
from tests.jwks_server import JwksServer
from tests.serverproc import DockyardServer
from tests.tokenkit import (
    certificate_authority,
    intermediate,
    leaf,
    server_certificate,
    unsigned_token,
)
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

ISSUER = "https://issuer.test"
AUDIENCE = "dockyard-e2e"
PASSWORDS = {"alice": "looking-glass", "bob": "builder-bob"}
GRANTS: dict[str | None, dict[str, set[str]]] = {
    "alice": {"team/app": {"pull", "push"}, "public/app": {"pull", "push"}},
    "bob": {"team/app": {"pull"}},
    None: {"public/app": {"pull"}},
}
PULL_TEAM_APP = [{"type": "repository", "name": "team/app", "actions": ["pull"]}]


@dataclass
class Setup:
    registry: DockyardServer
    issuer: ExternalIssuer
    jwks: JwksServer | None = None


def write_config(root: Path, realm: str, **token: str) -> Path:
    """The config file of a registry that trusts only the external issuer."""
    settings = {
        "builtin": False,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "algorithms": ["ES256"],
        "realm": realm,
        **token,
    }
    lines = ["[auth]", 'mode = "token"', "", "[auth.token]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    config = root / "dockyard.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def run_registry(root: Path, config: Path) -> Iterator[DockyardServer]:
    env = {"DOCKYARD_CONFIG": str(config), "DOCKYARD_LOG_ACCESS": "true"}
    yield from serving(DockyardServer(root / "data", workers=1, env=env))


@pytest.fixture(scope="module")
def jwks_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The issuer's public key in a JWKS behind HTTPS (a CA the test makes)."""
    root = tmp_path_factory.mktemp("external-jwks")
    key = ec.generate_private_key(ec.SECP256R1())
    signing = SigningKey.from_private(key)
    tls_ca = certificate_authority("jwks tls ca")
    (root / "jwks-ca.pem").write_bytes(tls_ca.pem())
    with (
        JwksServer(server_certificate(tls_ca), root) as jwks,
        ExternalIssuer(
            issuer=ISSUER,
            service=AUDIENCE,
            key=key,
            headers={"kid": signing.kid},
            passwords=PASSWORDS,
            grants=GRANTS,
        ) as issuer,
    ):
        jwks.document = {"keys": [signing.jwk]}
        config = write_config(root, issuer.url, jwks=jwks.url, jwks_ca=str(root / "jwks-ca.pem"))
        for registry in run_registry(root, config):
            yield Setup(registry, issuer, jwks)


@dataclass
class Chain:
    root_pem: bytes
    x5c: list[str]
    key: ec.EllipticCurvePrivateKey


def make_chain(name: str) -> Chain:
    root = certificate_authority(f"{name} root")
    middle = intermediate(f"{name} intermediate", root)
    signer = leaf(f"{name} token signer", middle)
    return Chain(root.pem(), [signer.der_b64(), middle.der_b64()], signer.key)


@pytest.fixture(scope="module")
def trusted_chain() -> Chain:
    return make_chain("issuer")


@pytest.fixture(scope="module")
def x5c_setup(tmp_path_factory: pytest.TempPathFactory, trusted_chain: Chain) -> Iterator[Setup]:
    """Tokens signed by a leaf whose chain (in the x5c header) reaches the root in
    ``root_certificates``; no JWKS at all."""
    root = tmp_path_factory.mktemp("external-x5c")
    (root / "token-roots.pem").write_bytes(trusted_chain.root_pem)
    with ExternalIssuer(
        issuer=ISSUER,
        service=AUDIENCE,
        key=trusted_chain.key,
        headers={"x5c": trusted_chain.x5c},
        passwords=PASSWORDS,
        grants=GRANTS,
    ) as issuer:
        config = write_config(root, issuer.url, root_certificates=str(root / "token-roots.pem"))
        for registry in run_registry(root, config):
            yield Setup(registry, issuer)


@pytest.fixture(params=["jwks", "x5c"])
def setup(request: pytest.FixtureRequest) -> Setup:
    fixture: Setup = request.getfixturevalue(f"{request.param}_setup")
    return fixture


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> OCILayout:
    layout = OCILayout(tmp_path_factory.mktemp("external-images") / "layout")
    layout.add_image("v1", IMAGE)
    return layout


IMAGE = build_image([make_layer(31), *random_layers(32, 2)])


def status_with(setup: Setup, token: str, path: str = "/v2/team/app/tags/list") -> httpx.Response:
    return httpx.get(
        f"{setup.registry.url}{path}", headers={"authorization": f"Bearer {token}"}, timeout=10
    )


def assert_refused(r: httpx.Response) -> None:
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_challenge_sends_clients_to_the_external_service(setup: Setup) -> None:
    r = httpx.get(f"{setup.registry.url}/v2/")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == (
        f'Bearer realm="{setup.issuer.url}",service="{AUDIENCE}"'
    )
    r = httpx.get(f"{setup.registry.url}/v2/team/app/tags/list")
    assert r.headers["www-authenticate"] == (
        f'Bearer realm="{setup.issuer.url}",service="{AUDIENCE}",scope="repository:team/app:pull"'
    )
    # No built-in service: the registry issues nothing itself.
    assert httpx.get(f"{setup.registry.url}/auth/token").status_code == 404


def test_skopeo_logs_in_pushes_and_pulls(setup: Setup, layout: OCILayout, tmp_path: Path) -> None:
    skopeo = Skopeo(require_tool("skopeo"), setup.registry)
    host = setup.registry.host
    authfile = str(tmp_path / "auth.json")
    wrong = skopeo(
        "login", "--tls-verify=false", "--authfile", authfile,
        "-u", "alice", "-p", "not-her-password", host, check=False,
    )  # fmt: skip
    assert wrong.returncode != 0
    skopeo(
        "login", "--tls-verify=false", "--authfile", authfile,
        "-u", "alice", "-p", PASSWORDS["alice"], host,
    )  # fmt: skip
    seen = len(setup.issuer.requests)
    target = skopeo.docker("team/app:v1")
    skopeo.copy(layout.ref("v1"), target, "--authfile", authfile, "--preserve-digests")
    # The push's token came from the external service, for the push's scope.
    asked = setup.issuer.requests[seen:]
    assert any(
        r["user"] == ("alice", PASSWORDS["alice"])
        and r.get("service") == [AUDIENCE]
        and r.get("account") == ["alice"]
        and "repository:team/app:pull,push" in r.get("scope", [])
        for r in asked
    ), asked
    out = tmp_path / "pulled"
    skopeo.copy(target, f"oci:{out}:v1", "--authfile", authfile)
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == IMAGE.digest
    # bob's token grants pull only: his push is refused.
    done = skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", f"bob:{PASSWORDS['bob']}",
        layout.ref("v1"), skopeo.docker("team/app:bob"), check=False,
    )  # fmt: skip
    assert done.returncode != 0
    # Anonymous: a token without credentials, for what the issuer grants anybody.
    skopeo.copy(layout.ref("v1"), skopeo.docker("public/app:v1"), "--authfile", authfile)
    skopeo.copy(skopeo.docker("public/app:v1"), f"oci:{tmp_path / 'anon'}:v1")
    done = skopeo(
        "copy", "--src-tls-verify=false", target, f"oci:{tmp_path / 'no'}:v1", check=False
    )
    assert done.returncode != 0


def test_issued_token_is_accepted(setup: Setup) -> None:
    """The baseline of the refusals below: the issuer's own token works."""
    r = status_with(setup, setup.issuer.token("bob", PULL_TEAM_APP))
    assert r.status_code in (200, 404), r.text  # 404 until the push test ran
    if setup.jwks is not None:
        assert setup.jwks.requests >= 1  # the key came from the JWKS URL
    r = status_with(setup, setup.issuer.token("bob", PULL_TEAM_APP), "/v2/other/app/tags/list")
    assert r.status_code == 401
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]


def test_wrong_audience_is_refused(setup: Setup) -> None:
    assert_refused(status_with(setup, setup.issuer.token("bob", PULL_TEAM_APP, aud="other")))


def test_wrong_issuer_is_refused(setup: Setup) -> None:
    token = setup.issuer.token("bob", PULL_TEAM_APP, iss="https://evil.test")
    assert_refused(status_with(setup, token))


def test_expired_token_is_refused(setup: Setup) -> None:
    # Past the 30 s leeway.
    now = int(time.time())
    token = setup.issuer.token("bob", PULL_TEAM_APP, exp=now - 120, iat=now - 600, nbf=now - 600)
    assert_refused(status_with(setup, token))


def test_token_signed_by_another_key_is_refused(setup: Setup) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    # Same header (kid, or the trusted x5c chain), wrong signature.
    assert_refused(status_with(setup, setup.issuer.token("bob", PULL_TEAM_APP, key=other)))
    # The other key named by its own kid, which nobody trusts.
    own: dict[str, Any] = {"kid": SigningKey.from_private(other).kid}
    token = setup.issuer.token("bob", PULL_TEAM_APP, key=other, headers=own)
    assert_refused(status_with(setup, token))


def test_alg_none_and_embedded_jwk_are_refused(setup: Setup) -> None:
    signed = setup.issuer.token("bob", PULL_TEAM_APP)
    header = jwt.get_unverified_header(signed)
    claims = jwt.decode(signed, options={"verify_signature": False})
    assert_refused(status_with(setup, unsigned_token({**header, "alg": "none"}, claims)))
    head, body, _ = signed.split(".")
    assert_refused(status_with(setup, f"{head}.{body}."))  # ES256 with the signature cut off
    other = ec.generate_private_key(ec.SECP256R1())
    jwk = SigningKey.from_private(other).jwk
    token = setup.issuer.token("bob", PULL_TEAM_APP, key=other, headers={"jwk": jwk})
    assert_refused(status_with(setup, token))


def test_x5c_chain_to_another_root_is_refused(x5c_setup: Setup, trusted_chain: Chain) -> None:
    stranger = make_chain("stranger")
    token = x5c_setup.issuer.token(
        "bob", PULL_TEAM_APP, key=stranger.key, headers={"x5c": stranger.x5c}
    )
    assert_refused(status_with(x5c_setup, token))
    # The trusted leaf without its intermediate does not reach the root either.
    token = x5c_setup.issuer.token("bob", PULL_TEAM_APP, headers={"x5c": trusted_chain.x5c[:1]})
    assert_refused(status_with(x5c_setup, token))
    # And the trusted chain in full does (the same token otherwise).
    r = status_with(x5c_setup, x5c_setup.issuer.token("bob", PULL_TEAM_APP))
    assert r.status_code in (200, 404), r.text


@pytest.mark.parametrize("name", ["team/*", "*", "team/ap?", "[t]eam/app"])
def test_access_names_are_repository_names_not_globs(setup: Setup, name: str) -> None:
    """The access claim names repositories (distribution's token spec); a name with glob
    characters is no repository, so it grants nothing, whatever an issuer put in it."""
    access = [{"type": "repository", "name": name, "actions": ["pull", "push"]}]
    r = status_with(setup, setup.issuer.token("bob", access))
    assert r.status_code == 401, r.text
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    r = httpx.post(
        f"{setup.registry.url}/v2/team/app/blobs/uploads/",
        headers={"authorization": f"Bearer {setup.issuer.token('bob', access)}"},
    )
    assert r.status_code == 401, r.text
