"""Token issuing and verification: round trips, the granted intersection, every refusal.

Keys, JWKS files and certificate chains are made per test; tokens are verified by the
real ``TokenVerifier`` (PyJWT underneath), and hostile tokens are made by hand.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dockyard.auth import ANONYMOUS, Identity, Scope
from dockyard.auth.bearer import INSUFFICIENT_SCOPE, bearer_challenge, bearer_token
from dockyard.auth.issuer import RefreshTokenInvalid, TokenIssuer
from dockyard.auth.jwks import JwksFile, KeyRing, jwks_source
from dockyard.auth.keys import (
    GENERATED_KEY_NAME,
    LEGACY_KEY_FILE,
    KeyError_,
    SigningKey,
    certificate_keys,
    libtrust_kid,
    load_or_generate,
    thumbprint,
)
from dockyard.auth.scopes import MAX_SCOPES, ResourceScope, TooManyScopes, parse_scopes
from dockyard.auth.tokens import rules_grant
from dockyard.auth.verifier import VERIFIED_SECONDS, TokenInvalid, TokenVerifier
from dockyard.config import ConfigError, load
from dockyard.config.model import TokenSettings
from dockyard.meta.sqlite import SQLiteMeta
from tests.jwks_server import JwksServer
from tests.tokenkit import (
    certificate_authority,
    grant,
    hmac_token,
    intermediate,
    leaf,
    server_certificate,
    unsigned_token,
    user_exists,
)

ISSUER = "dockyard-test"
SERVICE = "registry.test"


def make_issuer(
    key: SigningKey, clock: Callable[[], float] = time.time, expiry: int = 300
) -> TokenIssuer:
    return TokenIssuer(
        key,
        issuer=ISSUER,
        service=SERVICE,
        expiry=expiry,
        refresh_expiry=3600,
        leeway=0,
        grant=grant,
        user_exists=user_exists,
        clock=clock,
    )


def make_verifier(
    keys: KeyRing, leeway: int = 0, roots: Any = None, algorithms: list[str] | None = None
) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISSUER,
        audience=SERVICE,
        algorithms=algorithms or ["ES256", "RS256"],
        leeway=leeway,
        keys=keys,
        roots=roots,
    )


def new_key() -> SigningKey:
    return SigningKey.from_private(ec.generate_private_key(ec.SECP256R1()))


def ring_of(*keys: SigningKey) -> KeyRing:
    return KeyRing({k.kid: k.private.public_key() for k in keys})


def claims(**override: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "j",
        "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
    }
    base.update(override)
    return base


def sign(key: SigningKey, body: dict[str, object], **headers: Any) -> str:
    return jwt.encode(
        body, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **headers}
    )


async def refused(verifier: TokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(TokenInvalid) as info:
        await verifier.verify(token)
    assert reason in str(info.value).lower(), str(info.value)


# -- scopes


def test_scope_strings_parse_per_the_spec() -> None:
    scopes = parse_scopes(
        [
            "repository:team/app:pull,push",
            "repository(plugin):team/plug:pull registry:catalog:*",
            "repository:team/app:delete",  # same resource again: actions merge
        ]
    )
    assert scopes == [
        ResourceScope("repository", "team/app", frozenset({"pull", "push", "delete"})),
        ResourceScope("repository", "team/plug", frozenset({"pull"}), "plugin"),
        ResourceScope("registry", "catalog", frozenset({"*"})),
    ]
    assert str(scopes[1]) == "repository(plugin):team/plug:pull"


@pytest.mark.parametrize(
    "text",
    [
        "repository:team/app",  # no actions
        "repository::pull",
        "repository:Team/App:pull",  # not a repository name
        "repository:localhost:5000/app:pull",  # registry names carry no host or port
        "repository:team/app:pu$h",
        "repository:team/app:",
        "repo(:team/app:pull",
        "registry:everything:*",
        "",
    ],
)
def test_malformed_scopes_are_ignored(text: str) -> None:
    assert parse_scopes([text, "repository:ok:pull"]) == [
        ResourceScope("repository", "ok", frozenset({"pull"}))
    ]


def test_too_many_scopes_are_refused() -> None:
    with pytest.raises(TooManyScopes):
        parse_scopes([f"repository:r{i}:pull" for i in range(MAX_SCOPES + 1)])


def test_bearer_challenge_names_what_the_request_needs() -> None:
    assert (
        bearer_challenge("https://r.test/auth/token", "r.test", [Scope("push", "team/app")])
        == 'Bearer realm="https://r.test/auth/token",service="r.test",'
        'scope="repository:team/app:pull,push"'
    )
    value = bearer_challenge(
        "https://r.test/t", "r.test", [Scope("catalog"), Scope("pull", "a")], INSUFFICIENT_SCOPE
    )
    assert value == (
        'Bearer realm="https://r.test/t",service="r.test",'
        'scope="registry:catalog:* repository:a:pull",error="insufficient_scope"'
    )
    assert 'realm="a\\"b"' in bearer_challenge('a"b', "s")


def test_bearer_token_is_read_from_the_authorization_header() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc ") == "abc"
    for value in (None, "Basic YTpi", "Bearer", "Bearer a b", "Bearerabc"):
        assert bearer_token(value) is None


# -- issue and verify


async def test_round_trip_carries_the_spec_claims() -> None:
    key = new_key()
    issued = make_issuer(key).issue(
        Identity("alice"), parse_scopes(["repository:team/app:pull,push"])
    )
    raw = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(raw) == {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"}
    assert raw["iss"] == ISSUER and raw["aud"] == SERVICE and raw["sub"] == "alice"
    assert raw["exp"] - raw["iat"] == 300 == issued.expires_in
    assert raw["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]}
    ]
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "ES256" and header["kid"] == key.kid
    verified = await make_verifier(ring_of(key)).verify(issued.token)
    assert verified.identity == Identity("alice")
    assert verified.allows(Scope("push", "team/app"))
    assert verified.allows(Scope("pull", "team/app"))
    assert not verified.allows(Scope("delete", "team/app"))
    assert not verified.allows(Scope("pull", "team/other"))
    assert not verified.allows(Scope("catalog"))


async def test_granted_is_the_intersection_of_asked_and_allowed() -> None:
    issuer = make_issuer(new_key())
    asked = parse_scopes(
        [
            "repository:team/app:pull,push,delete",  # alice may pull, push
            "repository:public/app:push",  # alice may only pull there
            "repository:secret/app:pull",  # nothing
            "registry:catalog:*",  # admin only
        ]
    )
    assert issuer.issue(Identity("alice"), asked).access == (
        ResourceScope("repository", "team/app", frozenset({"pull", "push"})),
    )
    admin = issuer.issue(Identity("admin"), asked).access
    assert ResourceScope("registry", "catalog", frozenset({"*"})) in admin
    assert ResourceScope("repository", "team/app", frozenset({"pull", "push", "delete"})) in admin
    # "*" asks for everything allowed, and gets exactly that.
    (everything,) = issuer.issue(Identity("admin"), parse_scopes(["repository:team/app:*"])).access
    assert everything.actions == {"pull", "push", "delete"}
    assert issuer.issue(Identity("alice"), parse_scopes(["repository:secret/app:*"])).access == ()
    anonymous = issuer.issue(ANONYMOUS, parse_scopes(["repository:public/app:pull,push"]))
    assert anonymous.access == (ResourceScope("repository", "public/app", frozenset({"pull"})),)
    assert issuer.issue(Identity("alice"), []).access == ()


async def test_anonymous_token_has_empty_subject() -> None:
    key = new_key()
    issued = make_issuer(key).issue(ANONYMOUS, parse_scopes(["repository:public/app:pull"]))
    assert jwt.decode(issued.token, options={"verify_signature": False})["sub"] == ""
    verified = await make_verifier(ring_of(key)).verify(issued.token)
    assert verified.identity == ANONYMOUS and verified.allows(Scope("pull", "public/app"))


async def test_expired_and_not_yet_valid_tokens_are_refused() -> None:
    key = new_key()
    verifier = make_verifier(ring_of(key))
    asked = parse_scopes(["repository:team/app:pull"])
    past = make_issuer(key, clock=lambda: time.time() - 1000).issue(Identity("alice"), asked)
    await refused(verifier, past.token, "expired")
    future = make_issuer(key, clock=lambda: time.time() + 1000).issue(Identity("alice"), asked)
    await refused(verifier, future.token, "not yet valid")


async def test_leeway_accepts_small_clock_skew() -> None:
    key = new_key()
    skewed = make_issuer(key, clock=lambda: time.time() - 310)  # expired 10 s ago
    token = skewed.issue(Identity("alice"), parse_scopes(["repository:team/app:pull"])).token
    await refused(make_verifier(ring_of(key)), token, "expired")
    assert (await make_verifier(ring_of(key), leeway=30).verify(token)).identity.name == "alice"


async def test_forged_signature_is_refused() -> None:
    key, forger = new_key(), new_key()
    verifier = make_verifier(ring_of(key))
    # The forger's key under the genuine key's id.
    forged = jwt.encode(claims(), forger.private, algorithm="ES256", headers={"kid": key.kid})
    await refused(verifier, forged, "signature")
    # A token signed right and altered after.
    head, body, signature = sign(key, claims()).split(".")
    other = sign(key, claims(sub="admin")).split(".")[1]
    await refused(verifier, f"{head}.{other}.{signature}", "signature")
    assert body != other


async def test_wrong_audience_and_issuer_are_refused() -> None:
    key = new_key()
    verifier = make_verifier(ring_of(key))
    await refused(verifier, sign(key, claims(aud="other-registry")), "audience")
    await refused(verifier, sign(key, claims(iss="someone-else")), "issuer")
    missing = claims()
    del missing["exp"]
    await refused(verifier, sign(key, missing), "exp")


async def test_alg_none_is_refused() -> None:
    key = new_key()
    token = unsigned_token({"alg": "none", "typ": "JWT", "kid": key.kid}, claims())
    await refused(make_verifier(ring_of(key)), token, "algorithm")
    # Even if someone configures it.
    await refused(make_verifier(ring_of(key), algorithms=["none", "ES256"]), token, "algorithm")


async def test_hs256_with_the_public_key_as_secret_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = SigningKey.from_private(private)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = hmac_token({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims(), public_pem)
    await refused(make_verifier(ring_of(key)), token, "algorithm")
    await refused(make_verifier(ring_of(key), algorithms=["HS256", "RS256"]), token, "algorithm")
    # An allowed algorithm that does not fit the key's type: ES256 header, RSA key.
    es = jwt.encode(claims(), new_key().private, algorithm="ES256", headers={"kid": key.kid})
    await refused(make_verifier(ring_of(key)), es, "does not fit")


async def test_unknown_kid_and_missing_kid_are_refused() -> None:
    key = new_key()
    verifier = make_verifier(ring_of(key))
    await refused(verifier, sign(new_key(), claims()), "unknown key id")
    no_kid = jwt.encode(claims(), key.private, algorithm="ES256")
    await refused(verifier, no_kid, "no key id")
    await refused(verifier, "not-a-token", "malformed")


async def test_embedded_jwk_is_not_trusted() -> None:
    attacker = new_key()
    token = sign(attacker, claims(), jwk=attacker.jwk)
    await refused(make_verifier(ring_of(new_key())), token, "unknown key id")


async def test_malformed_access_claim_is_refused() -> None:
    key = new_key()
    token = sign(key, claims(access=[{"type": "repository", "name": 3, "actions": ["pull"]}]))
    await refused(make_verifier(ring_of(key)), token, "access claim")


# -- x5c chains


def chain_token(leaf_key: ec.EllipticCurvePrivateKey, chain: list[str]) -> str:
    return jwt.encode(claims(), leaf_key, algorithm="ES256", headers={"x5c": chain})


async def test_x5c_chain_to_a_configured_root_is_accepted() -> None:
    root = certificate_authority("test root")
    middle = intermediate("test intermediate", root)
    signer = leaf("token signer", middle)
    verifier = make_verifier(KeyRing({}), roots=[root.certificate])
    token = chain_token(signer.key, [signer.der_b64(), middle.der_b64()])
    verified = await verifier.verify(token)
    assert verified.identity.name == "alice" and verified.allows(Scope("pull", "team/app"))


async def test_x5c_chain_refusals() -> None:
    root, stranger = certificate_authority("test root"), certificate_authority("stranger")
    middle = intermediate("intermediate", root)
    signer = leaf("token signer", middle)
    verifier = make_verifier(KeyRing({}), roots=[root.certificate])
    # Chains to a root that is not configured.
    untrusted = leaf("untrusted signer", stranger)
    await refused(verifier, chain_token(untrusted.key, [untrusted.der_b64()]), "trusted root")
    # The intermediate left out: no path to the root.
    await refused(verifier, chain_token(signer.key, [signer.der_b64()]), "trusted root")
    # Signed by another key than the leaf certificate's.
    other = ec.generate_private_key(ec.SECP256R1())
    await refused(verifier, chain_token(other, [signer.der_b64(), middle.der_b64()]), "signature")
    await refused(verifier, chain_token(signer.key, ["!!not base64"]), "malformed certificate")
    # No roots configured: the chain is ignored, and the token names no trusted key.
    plain = make_verifier(KeyRing({}))
    chained = chain_token(signer.key, [signer.der_b64(), middle.der_b64()])
    await refused(plain, chained, "no key id")


async def test_root_certificate_keys_by_libtrust_and_rfc7638_kid() -> None:
    """As distribution does with its rootcertbundle: a token signed by a root
    certificate's own key, named by kid in either form, without x5c."""
    root = certificate_authority("issuer")
    keys = certificate_keys([root.certificate])
    kid = libtrust_kid(root.key.public_key())
    assert len(kid) == 59 and kid.count(":") == 11 and kid in keys
    verifier = make_verifier(KeyRing(keys))
    for name in keys:
        token = jwt.encode(claims(), root.key, algorithm="ES256", headers={"kid": name})
        assert (await verifier.verify(token)).identity.name == "alice"
    stranger = certificate_authority("stranger")
    forged = jwt.encode(claims(), stranger.key, algorithm="ES256", headers={"kid": kid})
    await refused(verifier, forged, "signature")


# -- an external issuer's JWKS


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_jwks(path: Path, *keys: SigningKey) -> None:
    path.write_text(json.dumps({"keys": [k.jwk for k in keys]}))


async def test_jwks_is_refetched_on_unknown_kid_with_a_floor(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, old)
    clock = FakeClock()
    ring = KeyRing({}, JwksFile(str(jwks)), refresh=3600, min_interval=30, clock=clock)
    verifier = make_verifier(ring)
    assert (await verifier.verify(sign(old, claims()))).identity.name == "alice"
    assert ring.fetches == 1
    write_jwks(jwks, old, new)  # the issuer rotates in a new key
    clock.now += 5  # within the floor: no fetch, the new kid is unknown for now
    await refused(verifier, sign(new, claims()), "unknown key id")
    assert ring.fetches == 1
    clock.now += 30
    assert (await verifier.verify(sign(new, claims()))).identity.name == "alice"
    assert ring.fetches == 2
    # Made-up key ids do not cause a fetch each.
    for _ in range(5):
        await refused(verifier, sign(new_key(), claims()), "unknown key id")
    assert ring.fetches == 2


async def test_jwks_is_refreshed_periodically_and_survives_a_bad_read(tmp_path: Path) -> None:
    key = new_key()
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, key)
    clock = FakeClock()
    ring = KeyRing({}, JwksFile(str(jwks)), refresh=100, min_interval=10, clock=clock)
    verifier = make_verifier(ring)
    await verifier.verify(sign(key, claims()))
    jwks.write_text("{not json")
    clock.now += 101
    await verifier.verify(sign(key, claims()))  # the read failed: the known key stays
    assert ring.fetches == 2
    write_jwks(jwks)  # the issuer retired the key
    clock.now += 101
    await refused(verifier, sign(key, claims()), "unknown key id")


# -- refresh tokens


async def test_refresh_tokens_are_bound_to_the_user_and_not_access_tokens() -> None:
    key = new_key()
    issuer = make_issuer(key)
    verifier = make_verifier(ring_of(key))
    issued = issuer.issue(Identity("alice"), parse_scopes(["repository:team/app:pull"]), True)
    assert issued.refresh_token is not None
    assert await issuer.redeem(issued.refresh_token) == Identity("alice")
    # Neither kind passes for the other.
    await refused(verifier, issued.refresh_token, "audience")
    with pytest.raises(RefreshTokenInvalid):
        await issuer.redeem(issued.token)
    # A user removed since cannot refresh.
    gone = issuer.refresh_token("mallory")
    with pytest.raises(RefreshTokenInvalid, match="no longer exists"):
        await issuer.redeem(gone)
    # Another service's refresh token.
    other = TokenIssuer(
        key,
        issuer=ISSUER,
        service="elsewhere",
        expiry=300,
        refresh_expiry=3600,
        leeway=0,
        grant=grant,
        user_exists=user_exists,
    )
    with pytest.raises(RefreshTokenInvalid):
        await issuer.redeem(other.refresh_token("alice"))
    # Anonymous callers get none.
    assert issuer.issue(ANONYMOUS, [], offline=True).refresh_token is None


async def test_expired_refresh_token_is_refused() -> None:
    key = new_key()
    stale = TokenIssuer(
        key,
        issuer=ISSUER,
        service=SERVICE,
        expiry=300,
        refresh_expiry=60,
        leeway=0,
        grant=grant,
        user_exists=user_exists,
        clock=lambda: time.time() - 120,
    )
    token = stale.refresh_token("alice")
    with pytest.raises(RefreshTokenInvalid, match="expired"):
        await make_issuer(key).redeem(token)


# -- signing keys


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[SQLiteMeta, SQLiteMeta]]:
    """Two handles on one metadata store, as two workers (or instances) have."""
    first = SQLiteMeta(tmp_path / "shared.sqlite3")
    first.migrate()
    second = SQLiteMeta(tmp_path / "shared.sqlite3")
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def pem_of(private: ec.EllipticCurvePrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_generated_key_is_shared_through_the_store(
    tmp_path: Path, two_workers: tuple[SQLiteMeta, SQLiteMeta]
) -> None:
    first, second = two_workers
    # Each instance has its own data directory: the key must not come from disk.
    key = load_or_generate("", first.shared_secret, tmp_path / "a")
    assert key.algorithm == "ES256"
    assert load_or_generate("", second.shared_secret, tmp_path / "b").kid == key.kid
    assert load_or_generate("", first.shared_secret, tmp_path / "a").kid == key.kid  # restart
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_old_generated_key_file_is_adopted(
    tmp_path: Path, two_workers: tuple[SQLiteMeta, SQLiteMeta]
) -> None:
    first, second = two_workers
    old = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / LEGACY_KEY_FILE).write_bytes(pem_of(old))
    expected = SigningKey.from_private(old).kid
    assert load_or_generate("", first.shared_secret, tmp_path / "data").kid == expected
    # Another instance, whose data directory has no file (or another one), gets the same.
    assert load_or_generate("", second.shared_secret, tmp_path / "fresh").kid == expected
    (tmp_path / "other").mkdir()
    other = pem_of(ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "other" / LEGACY_KEY_FILE).write_bytes(other)
    assert load_or_generate("", second.shared_secret, tmp_path / "other").kid == expected


def test_an_unusable_old_key_file_is_replaced(
    tmp_path: Path, two_workers: tuple[SQLiteMeta, SQLiteMeta]
) -> None:
    first, _ = two_workers
    (tmp_path / LEGACY_KEY_FILE).write_bytes(b"not a key")
    key = load_or_generate("", first.shared_secret, tmp_path)
    assert key.algorithm == "ES256"
    assert first.shared_secret(GENERATED_KEY_NAME, b"ignored").startswith(b"-----BEGIN")


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 7638 section 3.1's example key and thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65"
        "YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt"
        "-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


async def test_configured_rsa_key_signs_rs256(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "signing.pem"
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    def no_store(name: str, candidate: bytes) -> bytes:
        raise AssertionError("a configured key is not stored")

    key = load_or_generate(str(pem), no_store, tmp_path / "data")
    assert key.algorithm == "RS256" and not (tmp_path / "data").exists()
    token = make_issuer(key).issue(Identity("alice"), []).token
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert (await make_verifier(ring_of(key)).verify(token)).identity.name == "alice"


def unused_store(name: str, candidate: bytes) -> bytes:
    return candidate


def test_bad_key_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyError_, match="not an unencrypted PEM private key"):
        load_or_generate(str(bad), unused_store, tmp_path)
    with pytest.raises(KeyError_, match="cannot read"):
        load_or_generate(str(tmp_path / "missing.pem"), unused_store, tmp_path)


# -- settings


def test_shipped_config_documents_every_token_key() -> None:
    doc = tomllib.loads((Path(__file__).parent.parent / "conf" / "dockyard.toml").read_text())
    assert set(doc["auth"]["token"]) == {f.name for f in dataclasses.fields(TokenSettings)}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DOCKYARD_AUTH_TOKEN_ALGORITHMS": "ES256,HS256"}, "asymmetric signatures only"),
        ({"DOCKYARD_AUTH_TOKEN_ALGORITHMS": "none"}, "asymmetric signatures only"),
        ({"DOCKYARD_AUTH_TOKEN_PATH": "/v2/token"}, "outside /v2"),
        ({"DOCKYARD_AUTH_TOKEN_PATH": "auth/token"}, "outside /v2"),
        ({"DOCKYARD_AUTH_TOKEN_PATH": "/healthz"}, "is taken"),
        ({"DOCKYARD_AUTH_TOKEN_PATH": "/auth/jwks.json"}, "is taken"),
        ({"DOCKYARD_AUTH_TOKEN_JWKS": "http://127.0.0.1/jwks.json"}, "https:// URL"),
        ({"DOCKYARD_AUTH_TOKEN_BUILTIN": "false"}, "set jwks or root_certificates"),
        ({"DOCKYARD_AUTH_TOKEN_EXPIRY": "0"}, "must be positive"),
        ({"DOCKYARD_AUTH_TOKEN_REALM": "ftp://x"}, "not an http(s) URL"),
        ({"DOCKYARD_AUTH_TOKEN_NOPE": "1"}, "unknown key auth.token.nope"),
    ],
)
def test_bad_token_settings_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(environ=environ)


def test_token_settings_from_file_and_environment(tmp_path: Path) -> None:
    conf = tmp_path / "dockyard.toml"
    conf.write_text('[auth.token]\nissuer = "idp"\nalgorithms = ["RS256"]\njwks = "keys.json"\n')
    token = load(conf, environ={"DOCKYARD_AUTH_TOKEN_LEEWAY": "5"}).auth.token
    assert (token.issuer, token.algorithms, token.jwks, token.leeway) == (
        "idp",
        ["RS256"],
        "keys.json",
        5,
    )
    env = {"DOCKYARD_AUTH_TOKEN_ALGORITHMS": "PS256, EdDSA", "DOCKYARD_AUTH_TOKEN_BUILTIN": "0"}
    env["DOCKYARD_AUTH_TOKEN_JWKS"] = "https://idp.invalid/jwks.json"
    token = load(environ=env).auth.token
    assert token.algorithms == ["PS256", "EdDSA"] and not token.builtin


async def test_jwks_from_an_https_url(tmp_path: Path) -> None:
    ca = certificate_authority("issuer tls ca")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem())
    old, new = new_key(), new_key()
    with JwksServer(server_certificate(ca), tmp_path) as server:
        server.document = {"keys": [old.jwk]}
        clock = FakeClock()
        ring = KeyRing({}, jwks_source(server.url, str(ca_file)), min_interval=30, clock=clock)
        verifier = make_verifier(ring)
        assert (await verifier.verify(sign(old, claims()))).identity.name == "alice"
        server.document = {"keys": [old.jwk, new.jwk]}
        clock.now += 31
        assert (await verifier.verify(sign(new, claims()))).identity.name == "alice"
        assert server.requests == 2
        # Without the issuer's CA the TLS handshake fails: no keys, nothing accepted.
        untrusting = make_verifier(KeyRing({}, jwks_source(server.url), clock=FakeClock()))
        await refused(untrusting, sign(old, claims()), "unknown key id")
        assert server.requests == 2


def test_rules_grant_asks_the_rules_per_resource_type() -> None:
    asked: list[tuple[str | None, str]] = []

    def allowed_actions(identity: Identity, repository: str) -> frozenset[str]:
        asked.append((identity.name, repository))
        return frozenset({"pull"}) if repository.startswith("team/") else frozenset()

    grant = rules_grant(allowed_actions, lambda identity: identity.name == "admin")
    issuer = TokenIssuer(
        new_key(),
        issuer=ISSUER,
        service=SERVICE,
        expiry=60,
        refresh_expiry=60,
        leeway=0,
        grant=grant,
        user_exists=user_exists,
    )
    scopes = parse_scopes(
        [
            "repository:team/app:pull,push",
            "repository(plugin):team/app:pull",
            "repository:other:pull",
            "registry:catalog:*",
        ]
    )
    assert [str(s) for s in issuer.issue(Identity("alice"), scopes).access] == [
        "repository:team/app:pull"
    ]
    assert asked == [("alice", "team/app"), ("alice", "other")]
    assert [str(s) for s in issuer.issue(Identity("admin"), scopes).access] == [
        "repository:team/app:pull",
        "registry:catalog:*",
    ]


async def test_a_verified_token_is_remembered_until_it_expires() -> None:
    """The verifier keeps what it verified (the signature check is the costly part), but
    never past the token's exp, nor past VERIFIED_SECONDS after a key leaves the ring."""
    key = new_key()
    ring = ring_of(key)
    now = [time.time()]
    verifier = TokenVerifier(
        issuer=ISSUER,
        audience=SERVICE,
        algorithms=["ES256"],
        leeway=0,
        keys=ring,
        clock=lambda: now[0],
    )
    asked = parse_scopes(["repository:team/app:pull"])
    token = make_issuer(key, expiry=300).issue(Identity("alice"), asked).token
    assert (await verifier.verify(token)).identity.name == "alice"
    # The key leaves the ring: the remembered answer stands for a while, then not.
    verifier.keys = ring_of()
    assert (await verifier.verify(token)).identity.name == "alice"
    now[0] += VERIFIED_SECONDS + 1
    await refused(verifier, token, "")
    # With the key back, an entry never outlives the token's exp.
    verifier.keys = ring
    now[0] = time.time()
    short = make_issuer(key, expiry=30).issue(Identity("bob"), asked).token
    assert (await verifier.verify(short)).identity.name == "bob"
    now[0] += 31
    verifier.keys = ring_of()
    await refused(verifier, short, "")
