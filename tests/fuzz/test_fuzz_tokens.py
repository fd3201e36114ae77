"""The token paths fuzzed through the in-process app (``auth.mode = "token"``, the built-in
service on, and an external issuer trusted by a JWKS file and by x5c roots):

- any ``Authorization: Bearer`` value at a registry route is 401 (never 500) unless a
  trusted key really signed it: random bytes, huge values, JWS compact strings with
  random headers and claims (alg none, HMAC, unknown or wrong kid, junk x5c, embedded
  jwk, deeply nested JSON), signed by nobody, by a stranger or by a trusted key;
- the token endpoint's query (GET) and form (POST) parameters are answered with a token,
  400 with an RFC 6749 error, or 401, never 500.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from dockyard.auth.keys import SigningKey
from tests.authfixtures import PASSWORDS, ROOT_RULE, auth_settings, basic
from tests.conftest import OCI_ERROR_CODES, digest_of
from tests.fuzz.app import App
from tests.tokenkit import b64url, certificate_authority, intermediate, leaf

ISSUER = "https://idp.fuzz"
AUDIENCE = "dockyard"
TOKEN = "/auth/token"
OAUTH_ERRORS = {"invalid_request", "invalid_grant", "unsupported_grant_type", "invalid_client"}

# Made once for the module: hypothesis draws among them.
EXTERNAL = ec.generate_private_key(ec.SECP256R1())
EXTERNAL_KID = SigningKey.from_private(EXTERNAL).kid
STRANGER = ec.generate_private_key(ec.SECP256R1())
_ROOT = certificate_authority("fuzz root")
_MIDDLE = intermediate("fuzz intermediate", _ROOT)
_LEAF = leaf("fuzz signer", _MIDDLE)
TRUSTED_X5C = [_LEAF.der_b64(), _MIDDLE.der_b64()]
_STRANGE_ROOT = certificate_authority("stranger root")
STRANGE_LEAF = leaf("stranger signer", _STRANGE_ROOT)
SIGNERS = {"external": EXTERNAL, "leaf": _LEAF.key, "stranger": STRANGER}
TRUSTED_SIGNERS = {"external", "leaf"}


class Registry:
    def __init__(self, app: App, refresh_token: str) -> None:
        self.app = app
        self.refresh_token = refresh_token


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("fuzz-tokens")
    jwks = root / "jwks.json"
    jwks.write_text(json.dumps({"keys": [SigningKey.from_private(EXTERNAL).jwk]}))
    roots = root / "roots.pem"
    roots.write_bytes(_ROOT.pem())
    settings = auth_settings(
        root / "data",
        [ROOT_RULE, {"users": ["anonymous"], "repositories": ["public/*"], "actions": ["pull"]}],
        DOCKYARD_AUTH_MODE="token",
        DOCKYARD_AUTH_TOKEN_ISSUER=ISSUER,
        DOCKYARD_AUTH_TOKEN_AUDIENCE=AUDIENCE,
        DOCKYARD_AUTH_TOKEN_JWKS=str(jwks),
        DOCKYARD_AUTH_TOKEN_ROOT_CERTIFICATES=str(roots),
        # Wrong passwords are drawn often: the failed-login limiter would answer 429 to
        # most requests after the first few (its own tests are in test_limits.py).
        DOCKYARD_RATE_LIMITS_LOGIN_BURST="1000000",
        DOCKYARD_RATE_LIMITS_LOGIN_USER_BURST="1000000",
    )
    with App(settings) as app:
        scope = {"scope": "repository:known:pull,push"}
        r = app.request("GET", TOKEN, params=scope, headers=basic("root"))
        assert r.status_code == 200, r.text
        bearer = {"authorization": f"Bearer {r.json()['token']}"}
        params = {"digest": digest_of(b"fuzz")}
        r = app.request(
            "POST", "/v2/known/blobs/uploads/", params=params, content=b"fuzz", headers=bearer
        )
        assert r.status_code == 201, r.text
        r = app.request("GET", TOKEN, params={"offline_token": "true"}, headers=basic("root"))
        assert r.status_code == 200, r.text
        yield Registry(app, str(r.json()["refresh_token"]))


# -- bearer tokens at a registry route

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
NOW = int(time.time())
TIMES = st.sampled_from([NOW - 3600, NOW - 10, NOW + 10, NOW + 3600, 0, -1, 2**63, 2**70]) | JSON
ACCESS_ENTRY = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["repository", "registry"]) | JSON,
        "name": st.sampled_from(["known", "*", "known/*", "catalog", ""]) | JSON,
        "actions": st.lists(st.sampled_from(["pull", "push", "*", ""]) | JSON, max_size=3) | JSON,
    },
    optional={"class": st.sampled_from(["", "plugin"]) | JSON},
)
CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.sampled_from([ISSUER, "dockyard", ""]) | JSON,
        "aud": st.sampled_from([AUDIENCE, [AUDIENCE], [AUDIENCE, "x"], "other"]) | JSON,
        "sub": st.sampled_from(["root", "", "alice"]) | JSON,
        "exp": TIMES,
        "nbf": TIMES,
        "iat": TIMES,
        "jti": JSON,
        "access": st.lists(ACCESS_ENTRY, max_size=3) | JSON,
    },
)
HEADER = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(
            ["ES256", "ES384", "RS256", "PS256", "EdDSA", "HS256", "none", "None", ""]
        )
        | JSON,
        "kid": st.sampled_from([EXTERNAL_KID, EXTERNAL_KID.lower(), "", "x" * 300]) | JSON,
        "x5c": st.sampled_from([TRUSTED_X5C, TRUSTED_X5C[:1], [STRANGE_LEAF.der_b64()], []])
        | st.lists(st.text(max_size=40), max_size=7)
        | JSON,
        "jwk": st.just(SigningKey.from_private(STRANGER).jwk) | JSON,
        "typ": st.sampled_from(["JWT", "at+jwt"]) | JSON,
        "crit": st.lists(st.text(max_size=8), max_size=2) | JSON,
    },
)
# JSON nested far deeper than any parser's recursion limit.
DEEP = st.integers(min_value=1, max_value=4000).map(
    lambda n: (b"[" * n + b"]" * n) if n % 2 else (b'{"a":' * n + b"1" + b"}" * n)
)


def es256(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> str:
    """The JWS ES256 signature (raw r || s) of ``signing_input``, made by hand so that any
    header, however hostile, can be signed by a trusted key."""
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@st.composite
def jws(draw: st.DrawFn) -> tuple[str, bool]:
    """A compact JWS and whether a trusted key signed it."""
    header = draw(DEEP | HEADER.map(_json_bytes) | JSON.map(_json_bytes))
    claims = draw(DEEP | CLAIMS.map(_json_bytes) | JSON.map(_json_bytes) | st.binary(max_size=50))
    signing_input = f"{b64url(header)}.{b64url(claims)}"
    signer = draw(st.sampled_from(["external", "leaf", "stranger", "none", "junk"]))
    if signer in SIGNERS:
        signature = es256(SIGNERS[signer], signing_input.encode())
    elif signer == "junk":
        signature = b64url(draw(st.binary(max_size=80)))
    else:
        signature = ""
    return f"{signing_input}.{signature}", signer in TRUSTED_SIGNERS


def check_bearer_answer(r: httpx.Response, trusted: bool) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if not trusted:
        assert r.status_code == 401, (r.status_code, r.text)
    assert r.status_code in (200, 401, 404), (r.status_code, r.text)
    if r.status_code == 401:
        assert r.headers["www-authenticate"].startswith("Bearer realm="), r.headers
        codes = {entry["code"] for entry in r.json()["errors"]}
        assert codes <= OCI_ERROR_CODES, r.text


def bearer_get(registry: Registry, value: bytes | str) -> httpx.Response:
    raw = value.encode("latin-1") if isinstance(value, str) else value
    return registry.app.request(
        "GET", "/v2/known/tags/list", headers={"authorization": b"Bearer " + raw}
    )


@given(jws())
def test_jws_tokens(registry: Registry, token: tuple[str, bool]) -> None:
    text, trusted = token
    check_bearer_answer(bearer_get(registry, text), trusted)


@given(
    st.binary(max_size=300)
    | st.text(alphabet="ABCDEFabcdef0123456789-_.=+/ ", max_size=300).map(str.encode)
    | st.integers(min_value=8 * 1024, max_value=200 * 1024).map(lambda n: b"e30." * (n // 4))
)
def test_random_bearer_values(registry: Registry, raw: bytes) -> None:
    # Control characters are what a real HTTP server refuses before dockyard sees them.
    raw = raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
    r = bearer_get(registry, raw)
    assert r.status_code == 401, (r.status_code, r.text)


# -- the token endpoint's parameters

SCOPE = st.builds(
    lambda kind, name, actions: f"{kind}:{name}:{actions}",
    st.sampled_from(["repository", "registry", "repository(plugin)", "Repository", ""])
    | st.text(max_size=12),
    st.sampled_from(["known", "public/app", "catalog", "*", "a/" * 200 + "b", "x:5000/y"])
    | st.text(max_size=40),
    st.lists(st.sampled_from(["pull", "push", "delete", "admin", "*", ""]), max_size=4).map(
        ",".join
    )
    | st.text(max_size=20),
) | st.text(max_size=60)
TEXT = st.text(max_size=40)
FIELD = {
    "service": st.sampled_from([AUDIENCE, "", "other"]) | TEXT,
    "account": st.sampled_from(["root", "alice", ""]) | TEXT,
    "client_id": st.sampled_from(["fuzz", ""]) | TEXT,
    "offline_token": st.sampled_from(["true", "TRUE", "false", "1"]) | TEXT,
    "grant_type": st.sampled_from(["password", "refresh_token", "client_credentials", ""]) | TEXT,
    "username": st.sampled_from(["root", "alice", "nobody", ""]) | TEXT,
    "password": st.sampled_from([PASSWORDS["root"], "wrong", ""]) | TEXT,
    "access_type": st.sampled_from(["offline", "online"]) | TEXT,
}
AUTHORIZATION = st.sampled_from(
    [None, "root", "alice-wrong", "empty", "garbage", "bearer"]
) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


def authorization_header(choice: str | None) -> dict[str, str]:
    if choice is None:
        return {}
    fixed = {
        "root": basic("root"),
        "alice-wrong": basic("alice", "wrong"),
        "empty": {"authorization": "Basic " + base64.b64encode(b":").decode()},
        "garbage": {"authorization": "Basic !!!"},
        "bearer": {"authorization": "Bearer abc"},
    }
    return fixed.get(choice, {"authorization": choice})


def latin1(headers: dict[str, str]) -> dict[str, bytes]:
    """Header values as bytes: what a client sends (httpx would encode str as ASCII)."""
    return {name: value.encode("latin-1") for name, value in headers.items()}


def check_token_answer(r: httpx.Response) -> None:
    assert r.status_code in (200, 400, 401), (r.status_code, r.text)
    doc = r.json()
    if r.status_code == 200:
        assert isinstance(doc["access_token"], str) and doc["expires_in"] > 0, doc
    elif r.status_code == 400 or "error" in doc:
        assert doc["error"] in OAUTH_ERRORS and doc["error_description"], doc
    else:  # the GET form's wrong Basic credentials: distribution's answer
        assert [e["code"] for e in doc["errors"]] == ["UNAUTHORIZED"], doc
        assert r.headers["www-authenticate"].startswith("Basic realm="), r.headers


@given(
    st.lists(SCOPE, max_size=5),
    st.dictionaries(
        st.sampled_from(["service", "account", "client_id", "offline_token"]),
        st.deferred(lambda: st.one_of(*FIELD.values())),
        max_size=4,
    ),
    AUTHORIZATION,
)
def test_get_token_parameters(
    registry: Registry, scopes: list[str], fields: dict[str, str], who: str | None
) -> None:
    params = [("scope", s) for s in scopes] + list(fields.items())
    r = registry.app.request("GET", TOKEN, params=params, headers=latin1(authorization_header(who)))
    check_token_answer(r)


@given(
    st.lists(SCOPE, max_size=4),
    st.dictionaries(st.sampled_from(sorted(FIELD)), st.deferred(lambda: TEXT), max_size=3),
    st.fixed_dictionaries(
        {},
        optional={name: strategy for name, strategy in FIELD.items() if name != "account"},
    ),
    st.sampled_from(["real", "junk", "none"]) | TEXT,
    st.sampled_from([None, None, None, "root", "garbage"]),
)
def test_post_token_forms(
    registry: Registry,
    scopes: list[str],
    junk: dict[str, str],
    fields: dict[str, str],
    refresh: str,
    who: str | None,
) -> None:
    form = {**junk, **fields, "scope": " ".join(scopes)}
    if refresh == "real":
        form["refresh_token"] = registry.refresh_token
    elif refresh != "none":
        form["refresh_token"] = refresh
    headers = {"content-type": "application/x-www-form-urlencoded", **authorization_header(who)}
    body = urlencode(form).encode()
    r = registry.app.request("POST", TOKEN, content=body, headers=latin1(headers))
    check_token_answer(r)


@given(
    st.binary(max_size=300),
    st.sampled_from(["application/x-www-form-urlencoded", "application/json", ""]),
)
def test_post_token_raw_bodies(registry: Registry, body: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    check_token_answer(registry.app.request("POST", TOKEN, content=body, headers=headers))


def test_the_fuzzed_paths_can_succeed(registry: Registry) -> None:
    """The strategies reach the accepting branches: a trusted external token works, and
    so do both forms of the endpoint (otherwise the properties above prove little)."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60}
    claims["access"] = [{"type": "repository", "name": "known", "actions": ["pull"]}]
    header = {"alg": "ES256", "kid": EXTERNAL_KID}
    signing_input = f"{b64url(_json_bytes(header))}.{b64url(_json_bytes(claims))}"
    token = f"{signing_input}.{es256(EXTERNAL, signing_input.encode())}"
    assert bearer_get(registry, token).status_code in (200, 404)
    chained = {"alg": "ES256", "x5c": TRUSTED_X5C}
    signing_input = f"{b64url(_json_bytes(chained))}.{b64url(_json_bytes(claims))}"
    token = f"{signing_input}.{es256(_LEAF.key, signing_input.encode())}"
    assert bearer_get(registry, token).status_code in (200, 404)
    form = {"grant_type": "refresh_token", "refresh_token": registry.refresh_token}
    r = registry.app.request("POST", TOKEN, data={**form, "client_id": "fuzz"})
    assert r.status_code == 200, r.text
    r = registry.app.request("GET", TOKEN, params={"scope": "repository:known:pull"})
    assert r.status_code == 200, r.text
