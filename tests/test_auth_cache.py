"""The caches of the per-request auth path (perf/profile_auth.py measures what they save):
each must give the answers of no cache, and drop or outlive nothing it should not.

- the verified-token cache (auth/verifier.py) and the Identity built once per token
  (``VerifiedToken.bearer``): a cached token is refused once exp (plus leeway) passes;
- the allowed actions per (user name, repository) of ``AccessRules``: the same answers
  as the rules themselves, bounded, and gone with the rules they came from;
- the guard's classes without lists or limits (skipped) and with them (checked);
- ``RequestInfo.with_actor``, the fast ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import time
from fnmatch import fnmatchcase
from pathlib import Path

import anyio
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dockyard.auth.rules as rules_module
from dockyard.auth import Caller, Forbidden, Identity, Scope, Unauthenticated
from dockyard.auth.authorizer import AccessAuthorizer, basic_challenge
from dockyard.auth.htpasswd import Users
from dockyard.auth.rules import AccessRule, AccessRules
from dockyard.auth.scopes import ResourceScope, parse_scopes
from dockyard.auth.verifier import VerifiedToken
from dockyard.config.model import ACTION_CLASSES
from dockyard.core import errors as err
from dockyard.core.common import RequestInfo
from dockyard.http.guard import build_guard
from tests.authfixtures import PASSWORDS, basic, write_htpasswd
from tests.conftest import make_settings
from tests.test_tokens import make_issuer, make_verifier, new_key, refused, ring_of

# -- the verified-token cache


async def test_a_remembered_token_is_refused_once_exp_and_leeway_pass() -> None:
    """Real time on both sides (PyJWT reads the clock itself): the token is verified once
    and then answered from the cache, until exp + leeway, and refused right after."""
    key = new_key()
    verifier = make_verifier(ring_of(key), leeway=2)
    token = make_issuer(key, expiry=1).issue(Identity("alice"), []).token
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    first = await verifier.verify(token)
    assert first.identity.name == "alice"
    assert await verifier.verify(token) is first  # remembered, not verified again
    await anyio.sleep(max(exp + 0.5 - time.time(), 0))
    assert await verifier.verify(token) is first  # past exp, within the leeway
    await anyio.sleep(max(exp + 2.05 - time.time(), 0))  # past exp + leeway
    await refused(verifier, token, "expired")


async def test_the_bearer_identity_is_built_once_per_token() -> None:
    key = new_key()
    verifier = make_verifier(ring_of(key))
    asked = parse_scopes(["repository:team/app:pull,push", "registry:catalog:*"])
    token = make_issuer(key).issue(Identity("alice"), asked).token
    identity = (await verifier.verify(token)).bearer
    assert identity == Identity("alice", "token", (("team/app", frozenset({"pull", "push"})),))
    assert (await verifier.verify(token)).bearer is identity


def token_authorizer() -> AccessAuthorizer:
    return AccessAuthorizer(AccessRules([]), users=None, challenge=basic_challenge("t"))


@pytest.mark.parametrize(
    ("granted", "repository", "allowed"),
    [
        ("team/app", "team/app", True),
        ("team/app", "team/app2", False),
        # Token grants name repositories, never globs: an external issuer's glob grants
        # nothing (docs/security.md, An external token issuer).
        ("team/*", "team/app", False),
        ("*", "any/thing", False),
    ],
)
def test_token_grants_match_names_exactly(granted: str, repository: str, allowed: bool) -> None:
    identity = Identity("alice", "token", ((granted, frozenset({"pull"})),))
    authorizer = token_authorizer()
    assert authorizer.may(identity, repository, "pull") is allowed
    assert not authorizer.may(identity, repository, "push")
    assert authorizer.may(identity, None, "pull")


def test_verified_token_bearer_keeps_repository_and_registry_grants() -> None:
    access = (
        ResourceScope("repository", "a", frozenset({"pull"})),
        ResourceScope("registry", "catalog", frozenset({"*"})),
    )
    identity = VerifiedToken(Identity(None), access).bearer
    assert identity.name is None and identity.method == "token"
    assert identity.granted == (("a", frozenset({"pull"})),)
    assert identity.registry == frozenset({"catalog"})


# -- allowed actions per (user, repository)

RULES = [
    AccessRule.of(["alice"], ["team/*"], ["pull", "push"]),
    AccessRule.of(["*"], ["public/*", "library"], ["pull"]),
    AccessRule.of(["anonymous"], ["open"], ["pull"]),
    AccessRule.of(["bob"], ["*/base"], ["*"]),
]
NAMES = [None, "alice", "bob", "carol"]
REPOSITORIES = ["team/app", "public/x", "library", "open", "a/base", "other"]


def uncached_allows(rules: list[AccessRule], identity: Identity, repository: str) -> set[str]:
    """The rules' answer worked out afresh (the definition the cache must keep)."""
    allowed: set[str] = set()
    for rule in rules:
        if rule.names(identity) and any(fnmatchcase(repository, p) for p in rule.repositories):
            allowed |= rule.actions
    return allowed


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(NAMES),
            st.sampled_from(REPOSITORIES),
            st.sampled_from(["pull", "push", "delete", "admin"]),
        ),
        max_size=40,
    )
)
def test_cached_answers_are_the_rules_answers(
    questions: list[tuple[str | None, str, str]],
) -> None:
    """Any sequence of questions to one AccessRules gets the rules' own answer to each
    (the cache key must hold both the user name and the repository)."""
    rules = AccessRules(RULES)
    for name, repository, action in questions:
        identity = Identity(name, "basic" if name else "anonymous")
        expected = uncached_allows(RULES, identity, repository)
        assert rules.allows(identity, repository, action) == (action in expected)
        assert rules.allowed_actions(identity, repository) == expected


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules_module, "ALLOWED_ENTRIES", 8)
    rules = AccessRules(RULES)
    alice = Identity("alice", "basic")
    for i in range(50):
        assert rules.allows(alice, f"team/app{i}", "push")
        assert len(rules._allowed) <= 8
    assert rules.allows(alice, "team/app0", "push")  # dropped and worked out again


async def test_new_rules_take_effect_at_once(tmp_path: Path) -> None:
    """The remembered answers belong to the rules they came from: an authorizer given new
    rules (what a restart with a changed config file builds) answers by those."""
    users = Users(write_htpasswd(tmp_path / "htpasswd"))
    authorizer = AccessAuthorizer(
        AccessRules([AccessRule.of(["alice"], ["team/*"], ["pull"])]),
        users=users,
        challenge=basic_challenge("t"),
    )
    caller = Caller(basic("alice"), "127.0.0.1")
    alice = await authorizer.authenticate(caller)
    await authorizer.authorize(caller, alice, Scope("pull", "team/app"))
    authorizer.rules = AccessRules([AccessRule.of(["alice"], ["other/*"], ["pull"])])
    with pytest.raises(Forbidden):
        await authorizer.authorize(caller, alice, Scope("pull", "team/app"))
    await authorizer.authorize(caller, alice, Scope("pull", "other/app"))


async def test_a_removed_user_is_refused_though_its_answers_are_remembered(
    tmp_path: Path,
) -> None:
    """Remembered rule answers never stand in for logging in: the users file is still
    asked on every request, so a user taken out of it is refused at once."""
    path = write_htpasswd(tmp_path / "htpasswd")
    users = Users(path)
    authorizer = AccessAuthorizer(
        AccessRules([AccessRule.of(["alice"], ["*"], ["pull"])]),
        users=users,
        challenge=basic_challenge("t"),
    )
    caller = Caller(basic("alice"), "127.0.0.1")
    for _ in range(2):
        identity = await authorizer.authenticate(caller)
        await authorizer.authorize(caller, identity, Scope("pull", "team/app"))
    without_alice = {name: pw for name, pw in PASSWORDS.items() if name != "alice"}
    write_htpasswd(tmp_path / "htpasswd.new", without_alice).replace(path)
    with pytest.raises(Unauthenticated):
        await authorizer.authenticate(caller)


# -- the guard


@pytest.mark.parametrize("restricted", ACTION_CLASSES)
def test_only_classes_with_a_list_are_checked(tmp_path: Path, restricted: str) -> None:
    env = {f"DOCKYARD_NETWORK_{restricted.upper()}_DENY": "192.0.2.0/24"}
    guard = build_guard(make_settings(tmp_path, **env))
    for action in ACTION_CLASSES:
        if action == restricted:
            with pytest.raises(err.Denied):
                guard.check("192.0.2.7", None, action)
            guard.check("198.51.100.7", None, action)
        else:
            guard.check("192.0.2.7", None, action)


@pytest.mark.parametrize("limited", ACTION_CLASSES)
def test_only_classes_with_a_limit_are_limited(tmp_path: Path, limited: str) -> None:
    env = {
        f"DOCKYARD_RATE_LIMITS_{limited.upper()}_RATE": "0.01",
        f"DOCKYARD_RATE_LIMITS_{limited.upper()}_BURST": "1",
    }
    guard = build_guard(make_settings(tmp_path, **env))
    for action in ACTION_CLASSES:
        guard.check("192.0.2.7", None, action)
        if action == limited:
            with pytest.raises(err.TooManyRequests):
                guard.check("192.0.2.7", None, action)
        else:
            for _ in range(5):
                guard.check("192.0.2.7", None, action)


# -- the request's actor


def test_with_actor_keeps_every_other_field() -> None:
    values = {f.name: f"value of {f.name}" for f in dataclasses.fields(RequestInfo)}
    info = RequestInfo(**values)
    assert info.with_actor("alice") == dataclasses.replace(info, actor="alice")
