"""The built-in token service through the in-process app: GET and OAuth2 POST forms,
refresh tokens, the JWKS, and every refusal as a clear error (never a 500)."""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dockyard.auth import Identity, Scope
from dockyard.auth.assembly import build_token_auth
from dockyard.auth.keys import GENERATED_KEY_NAME, SigningKey
from dockyard.auth.tokens import TokenAuth, TokenInvalid
from dockyard.services import Services, mount_token_endpoint
from tests.authfixtures import ROOT_RULE, auth_settings
from tests.authfixtures import basic as auth_basic
from tests.conftest import assert_error, make_client, make_settings, open_services
from tests.tokenkit import certificate_authority, grant, leaf, user_exists, verify_password

TOKEN = "/auth/token"


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {raw}"}


@pytest.fixture
async def token_services(tmp_path: Path) -> AsyncIterator[tuple[Services, TokenAuth]]:
    settings = make_settings(
        tmp_path / "data",
        DOCKYARD_AUTH_TOKEN_AUDIENCE="registry.test",
        DOCKYARD_SERVER_PUBLIC_URL="https://registry.test",
    )
    async with open_services(settings) as svc:
        tokens = build_token_auth(
            settings, grant=grant, user_exists=user_exists, shared_secret=svc.meta.shared_secret
        )
        mount_token_endpoint(svc.app, settings, tokens, verify_password)
        yield svc, tokens


@pytest.fixture
async def token_client(
    token_services: tuple[Services, TokenAuth],
) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(token_services[0]) as c:
        yield c


@pytest.fixture
def tokens(token_services: tuple[Services, TokenAuth]) -> TokenAuth:
    return token_services[1]


def assert_oauth_error(r: httpx.Response, status: int, error: str) -> None:
    """An RFC 6749 section 5.2 error answer: the token endpoint is OAuth2's, not /v2/."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert set(doc) == {"error", "error_description"}, doc
    assert doc["error"] == error, doc
    assert isinstance(doc["error_description"], str) and doc["error_description"]


def assert_token_answer(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    issued = datetime.datetime.strptime(r.json()["issued_at"], "%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert abs((now - issued).total_seconds()) < 60


async def test_get_anonymous_token(token_client: httpx.AsyncClient, tokens: TokenAuth) -> None:
    r = await token_client.get(
        TOKEN,
        params={"service": "registry.test", "scope": "repository:public/app:pull,push"},
    )
    assert_token_answer(r)
    doc = r.json()
    assert set(doc) == {"token", "access_token", "expires_in", "issued_at"}
    assert doc["token"] == doc["access_token"] and doc["expires_in"] == 300
    verified = await tokens.verify(doc["token"])
    assert verified.identity.name is None
    assert verified.allows(Scope("pull", "public/app"))
    assert not verified.allows(Scope("push", "public/app"))


async def test_empty_basic_credentials_mean_anonymous(
    token_client: httpx.AsyncClient, tokens: TokenAuth
) -> None:
    # What skopeo and podman send to the token service when they have no credentials.
    r = await token_client.get(
        TOKEN, params={"scope": "repository:public/app:pull"}, headers=basic("", "")
    )
    assert_token_answer(r)
    verified = await tokens.verify(r.json()["token"])
    assert verified.identity.name is None and verified.allows(Scope("pull", "public/app"))
    r = await token_client.get(TOKEN, headers=basic("", "password-without-user"))
    assert_oauth_error(r, 400, "invalid_request")


async def test_get_with_credentials_grants_the_intersection(
    token_client: httpx.AsyncClient, tokens: TokenAuth
) -> None:
    r = await token_client.get(
        TOKEN,
        params=[
            ("service", "registry.test"),
            ("scope", "repository:team/app:pull,push,delete"),
            ("scope", "repository:secret/app:pull"),
            ("scope", "bogus"),
            ("account", "alice"),
        ],
        headers=basic("alice", "wonderland"),
    )
    assert_token_answer(r)
    verified = await tokens.verify(r.json()["token"])
    assert verified.identity == Identity("alice")
    assert [str(s) for s in verified.access] == ["repository:team/app:pull,push"]


async def test_get_refusals(token_client: httpx.AsyncClient) -> None:
    r = await token_client.get(TOKEN, headers=basic("alice", "wrong"))
    assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"] == 'Basic realm="registry.test"'
    r = await token_client.get(TOKEN, headers=basic("nobody", "x"))
    assert_error(r, 401, "UNAUTHORIZED")
    r = await token_client.get(TOKEN, params={"service": "other.test"})
    assert_oauth_error(r, 400, "invalid_request")
    assert "other.test" in r.json()["error_description"]
    r = await token_client.get(TOKEN, headers={"authorization": "Basic !!!"})
    assert_oauth_error(r, 400, "invalid_request")
    r = await token_client.get(TOKEN, headers={"authorization": "Bearer abc"})
    assert_oauth_error(r, 400, "invalid_request")
    r = await token_client.get(
        TOKEN, params={"account": "admin"}, headers=basic("alice", "wonderland")
    )
    assert_oauth_error(r, 400, "invalid_request")
    many = {"scope": [f"repository:r{i}:pull" for i in range(100)]}
    assert_oauth_error(await token_client.get(TOKEN, params=many), 400, "invalid_request")
    r = await token_client.put(TOKEN)
    assert_error(r, 405, "UNSUPPORTED")


async def test_offline_token_then_oauth2_refresh(
    token_client: httpx.AsyncClient, tokens: TokenAuth
) -> None:
    r = await token_client.get(
        TOKEN,
        params={"service": "registry.test", "offline_token": "true", "client_id": "test"},
        headers=basic("alice", "wonderland"),
    )
    assert_token_answer(r)
    refresh = r.json()["refresh_token"]
    r = await token_client.post(
        TOKEN,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": "registry.test",
            "client_id": "test",
            "scope": "repository:team/app:pull repository:public/app:pull",
        },
    )
    assert_token_answer(r)
    doc = r.json()
    assert doc["scope"] == "repository:team/app:pull repository:public/app:pull"
    assert "refresh_token" not in doc and doc["token_type"] == "Bearer"
    verified = await tokens.verify(doc["access_token"])
    assert verified.identity == Identity("alice") and verified.allows(Scope("pull", "team/app"))
    # A refresh token is not a bearer token, nor the other way round.
    with pytest.raises(TokenInvalid, match=r"(?i)audience"):
        await tokens.verify(refresh)
    r = await token_client.post(
        TOKEN,
        data={
            "grant_type": "refresh_token",
            "refresh_token": doc["access_token"],
            "client_id": "t",
        },
    )
    assert_oauth_error(r, 400, "invalid_grant")


async def test_oauth2_password_grant(token_client: httpx.AsyncClient, tokens: TokenAuth) -> None:
    form = {
        "grant_type": "password",
        "username": "admin",
        "password": "s3cret-admin",
        "service": "registry.test",
        "client_id": "test",
        "access_type": "offline",
        "scope": "registry:catalog:* repository:team/app:delete",
    }
    r = await token_client.post(TOKEN, data=form)
    assert_token_answer(r)
    doc = r.json()
    assert doc["scope"] == "registry:catalog:* repository:team/app:delete"
    verified = await tokens.verify(doc["access_token"])
    assert verified.allows(Scope("catalog")) and verified.allows(Scope("delete", "team/app"))
    assert tokens.issuer is not None
    assert await tokens.issuer.redeem(doc["refresh_token"]) == Identity("admin")


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "username": "alice", "password": "no"}, "invalid_grant"),
        ({"grant_type": "password", "username": "nobody", "password": "x"}, "invalid_grant"),
        ({"grant_type": "refresh_token", "refresh_token": "junk"}, "invalid_grant"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "authorization_code", "code": "x"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": "password", "password": "x"}, "invalid_request"),
        ({"username": "alice", "password": "wonderland"}, "invalid_request"),
        ({"grant_type": "password", "service": "other.test"}, "invalid_request"),
    ],
)
async def test_oauth2_refusals(
    token_client: httpx.AsyncClient, form: dict[str, str], error: str
) -> None:
    r = await token_client.post(TOKEN, data={"client_id": "test", **form})
    assert_oauth_error(r, 400, error)


async def test_oauth2_bad_requests(token_client: httpx.AsyncClient) -> None:
    good = {"grant_type": "password", "username": "alice", "password": "wonderland"}
    # client_id is required by the OAuth2 token spec.
    r = await token_client.post(TOKEN, data=good)
    assert_oauth_error(r, 400, "invalid_request")
    assert "client_id" in r.json()["error_description"]
    r = await token_client.post(TOKEN, json={**good, "client_id": "t"})
    assert_oauth_error(r, 400, "invalid_request")
    r = await token_client.post(
        TOKEN,
        content=b"\xff\xfe=\x00",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_oauth_error(r, 400, "invalid_request")
    r = await token_client.post(
        TOKEN,
        content=b"a=" + b"x" * (70 * 1024),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_oauth_error(r, 400, "invalid_request")
    # Client authentication is not supported (no registered clients): RFC 6749 5.2 asks
    # for 401 with a challenge of the scheme tried.
    r = await token_client.post(
        TOKEN, data={**good, "client_id": "t"}, headers=basic("alice", "wonderland")
    )
    assert_oauth_error(r, 401, "invalid_client")
    assert r.headers["www-authenticate"] == 'Basic realm="registry.test"'


async def test_jwks_publishes_the_signing_key(
    token_client: httpx.AsyncClient, tokens: TokenAuth
) -> None:
    r = await token_client.get("/auth/jwks.json")
    assert r.status_code == 200
    (jwk,) = r.json()["keys"]
    assert jwk["kty"] == "EC" and jwk["alg"] == "ES256" and "d" not in jwk
    r = await token_client.get(
        TOKEN, params={"scope": "repository:public/app:pull", "service": "registry.test"}
    )
    token = r.json()["token"]
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    # Anyone holding the published JWKS can verify the token on their own.
    claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience="registry.test")
    assert claims["iss"] == "dockyard"
    assert tokens.challenge([Scope("pull", "public/app")]) == (
        'Bearer realm="https://registry.test/auth/token",service="registry.test",'
        'scope="repository:public/app:pull"'
    )


async def test_registry_routes_are_unchanged(token_client: httpx.AsyncClient) -> None:
    assert (await token_client.get("/v2/")).status_code == 200
    # Other paths still go to the dashboard app.
    assert (await token_client.get("/auth/other")).status_code == 404


async def test_external_issuer_only(tmp_path: Path) -> None:
    """builtin = false: no token endpoint; tokens of the external issuer's JWKS and of an
    x5c chain to the configured roots are accepted, read through the request header."""
    external = SigningKey.from_private(ec.generate_private_key(ec.SECP256R1()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [external.jwk]}))
    root = certificate_authority("issuer root")
    signer = leaf("issuer signer", root)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(root.pem())
    settings = make_settings(
        tmp_path / "data",
        DOCKYARD_AUTH_TOKEN_BUILTIN="false",
        DOCKYARD_AUTH_TOKEN_ISSUER="https://idp.test",
        DOCKYARD_AUTH_TOKEN_AUDIENCE="registry.test",
        DOCKYARD_AUTH_TOKEN_JWKS=str(jwks),
        DOCKYARD_AUTH_TOKEN_ROOT_CERTIFICATES=str(roots),
        DOCKYARD_AUTH_TOKEN_REALM="https://idp.test/token",
    )
    async with open_services(settings) as svc:
        tokens = build_token_auth(
            settings, grant=grant, user_exists=user_exists, shared_secret=svc.meta.shared_secret
        )
        mount_token_endpoint(svc.app, settings, tokens, verify_password)
        assert tokens.issuer is None and tokens.jwks() == {"keys": []}
        # No signing key was made: the store hands back the probe as the first value.
        assert svc.meta.shared_secret(GENERATED_KEY_NAME, b"probe") == b"probe"
        async with make_client(svc) as c:
            assert (await c.get(TOKEN)).status_code == 404
        now = int(time.time())
        claims = {
            "iss": "https://idp.test",
            "aud": "registry.test",
            "sub": "bob",
            "exp": now + 60,
            "access": [{"type": "repository", "name": "bob/app", "actions": ["pull"]}],
        }
        token = jwt.encode(claims, external.private, "ES256", headers={"kid": external.kid})
        verified = await tokens.from_headers({"authorization": f"Bearer {token}"})
        assert verified is not None and verified.identity == Identity("bob")
        assert verified.allows(Scope("pull", "bob/app"))
        chained = jwt.encode(claims, signer.key, "ES256", headers={"x5c": [signer.der_b64()]})
        assert (await tokens.verify(chained)).identity == Identity("bob")
        assert await tokens.from_headers({}) is None
        with pytest.raises(TokenInvalid, match="issuer"):
            await tokens.verify(
                jwt.encode(
                    {**claims, "iss": "dockyard"},
                    external.private,
                    "ES256",
                    headers={"kid": external.kid},
                )
            )
        assert tokens.challenge([Scope("push", "bob/app")], "invalid_token") == (
            'Bearer realm="https://idp.test/token",service="registry.test",'
            'scope="repository:bob/app:pull,push",error="invalid_token"'
        )


@pytest.mark.parametrize(
    "query",
    [
        "scope=" + "a" * 20000,
        "scope=repository:" + "a/" * 300 + "b:pull",
        "scope=repository%00:x:pull",
        "scope=repository:%C3%A9:pull&scope=registry:catalog:%2A",
        "scope=:::&scope=repository:x:pull,,push",
        "offline_token=yes&account=&service=",
        "scope=%FF%FE",
        "&&&==&scope",
    ],
)
async def test_hostile_get_queries_are_answered_not_crashed(
    token_client: httpx.AsyncClient, query: str
) -> None:
    r = await token_client.get(f"{TOKEN}?{query}")
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert r.json()["token"]


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=password&username=alice&password=wonderland&client_id=c&scope=" + b"x" * 9000,
        b"grant_type=refresh_token&refresh_token=" + b"e30." * 500 + b"&client_id=c",
        b"grant_type=password&username=%00&password=%00&client_id=c",
        b"grant_type&client_id",
        b"=" * 100,
        b"client_id=c&" + b"a=1&" * 300,
    ],
)
async def test_hostile_forms_are_answered_not_crashed(
    token_client: httpx.AsyncClient, body: bytes
) -> None:
    r = await token_client.post(
        TOKEN, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"] in ("invalid_request", "invalid_grant"), r.text


async def test_credentials_at_the_endpoint_of_a_token_mode_registry(tmp_path: Path) -> None:
    """With auth.mode = "token" the router authenticates every request first; at the token
    endpoint a refusal of the credentials is the endpoint's (a Basic challenge, RFC 6749
    errors), not the registry's Bearer challenge pointing back at the endpoint itself."""
    settings = auth_settings(tmp_path / "data", [ROOT_RULE], DOCKYARD_AUTH_MODE="token")
    async with open_services(settings) as svc, make_client(svc) as c:
        r = await c.get(TOKEN, headers=auth_basic("root", "wrong"))
        assert_error(r, 401, "UNAUTHORIZED")
        assert r.headers["www-authenticate"] == 'Basic realm="dockyard"'
        r = await c.get(TOKEN, headers={"authorization": "Basic !!!"})
        assert_oauth_error(r, 400, "invalid_request")
        r = await c.get(TOKEN, headers={"authorization": "Bearer not.a.token"})
        assert_oauth_error(r, 400, "invalid_request")
        r = await c.get(TOKEN, params={"scope": "repository:a/b:pull"}, headers=auth_basic("root"))
        assert_token_answer(r)
        # Elsewhere the registry's own challenge is unchanged.
        r = await c.get("/v2/", headers=auth_basic("root", "wrong"))
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Bearer realm="')
