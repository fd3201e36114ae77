"""[[access]] rules (auth/rules.py), the AccessAuthorizer's answers and feed tickets."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest

from dockyard.auth import Caller, Forbidden, Identity, Scope, Unauthenticated
from dockyard.auth.authorizer import AccessAuthorizer, basic_challenge, parse_basic
from dockyard.auth.htpasswd import Users
from dockyard.auth.rules import AccessRule, AccessRules
from dockyard.auth.tickets import LEGACY_KEY_FILE, FeedTickets, shared_ticket_key
from dockyard.config import ConfigError
from dockyard.meta.sqlite import SQLiteMeta
from tests.authfixtures import PASSWORDS, auth_settings, basic, write_htpasswd

ALICE = Identity("alice", "basic")
BOB = Identity("bob", "basic")
ANON = Identity(None)

RULES = AccessRules(
    [
        AccessRule.of(["alice"], ["team/*"], ["pull", "push"]),
        AccessRule.of(["*"], ["public/*", "library"], ["pull"]),
        AccessRule.of(["anonymous"], ["public/*", "open"], ["pull"]),
        AccessRule.of(["bob"], ["*/base"], ["*"]),
    ]
)


@pytest.mark.parametrize(
    ("identity", "repository", "actions"),
    [
        (ALICE, "team/app", {"pull", "push"}),
        (ALICE, "team/tools/deep", {"pull", "push"}),  # * matches / too
        (ALICE, "teamx/app", set()),
        (ALICE, "team", set()),
        (ALICE, "public/x", {"pull"}),  # "*": any authenticated user
        (ALICE, "library", {"pull"}),
        (ALICE, "library/sub", set()),
        (BOB, "a/b/base", {"pull", "push", "delete", "admin", "metrics"}),  # "*" = every action
        (BOB, "team/app", set()),
        (ANON, "public/x", {"pull"}),
        (ANON, "library", set()),  # "*" does not include anonymous
        (ANON, "open", {"pull"}),
        (ALICE, "open", {"pull"}),  # but what anonymous may do, everybody may
        (ANON, "team/app", set()),
    ],
)
def test_allowed_actions(identity: Identity, repository: str, actions: set[str]) -> None:
    assert RULES.allowed_actions(identity, repository) == frozenset(actions)
    for action in ("pull", "push", "delete", "admin"):
        assert RULES.allows(identity, repository, action) == (action in actions)


def test_registry_wide_questions() -> None:
    assert RULES.allows(ALICE, None, "push")  # somewhere
    assert not RULES.allows(ALICE, None, "admin")
    assert RULES.allows(BOB, None, "admin")
    assert not RULES.allows(ANON, None, "push")
    assert not RULES.covers_all(ALICE, "pull")
    everything = AccessRules([AccessRule.of(["root"], ["*"], ["pull"])])
    assert everything.covers_all(Identity("root", "basic"), "pull")


def test_no_rules_deny_everything() -> None:
    rules = AccessRules([])
    assert rules.allowed_actions(ALICE, "x") == frozenset()
    assert not rules.allows(ANON, None, "pull")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (base64.b64encode(b"alice:pw").decode(), ("alice", "pw")),
        (base64.b64encode(b"alice:p:w:").decode(), ("alice", "p:w:")),
        (base64.b64encode("ünï:pw".encode()).decode(), ("ünï", "pw")),
        (base64.b64encode(b"alice:").decode(), ("alice", "")),
        (base64.b64encode(b"nocolon").decode(), None),
        (base64.b64encode(b":pw").decode(), None),
        (base64.b64encode(b":").decode(), ("", "")),
        ("!!!not base64!!!", None),
        ("YWxpY2U6cHc", None),  # missing padding
        (base64.b64encode(b"\xff\xfe:pw").decode(), None),  # not UTF-8
        ("", None),
    ],
)
def test_parse_basic(value: str, parsed: tuple[str, str] | None) -> None:
    assert parse_basic(value) == parsed


@pytest.fixture
def authorizer(tmp_path: Path) -> AccessAuthorizer:
    users = Users(write_htpasswd(tmp_path / "htpasswd"))
    return AccessAuthorizer(RULES, users=users, challenge=basic_challenge("my registry"))


CHALLENGE = 'Basic realm="my registry", charset="UTF-8"'


async def test_authenticate(authorizer: AccessAuthorizer) -> None:
    assert await authorizer.authenticate(Caller({})) == ANON
    # Empty credentials are how skopeo and podman say they have none.
    assert await authorizer.authenticate(Caller({"authorization": "Basic Og=="})) == ANON
    alice = await authorizer.authenticate(Caller(basic("alice")))
    assert alice == ALICE
    for headers in (
        basic("alice", "wrong"),
        basic("nobody", "x"),
        {"authorization": "Basic"},
        {"authorization": "Basic %%%"},
        {"authorization": "Digest username=alice"},
        {"authorization": "Bearer abc"},  # no token authenticator in basic mode
        {"authorization": "Basic " + "A" * 10000},
    ):
        with pytest.raises(Unauthenticated) as e:
            await authorizer.authenticate(Caller(headers))
        assert e.value.challenge == CHALLENGE


async def test_authorize_401_for_anonymous_403_for_known(authorizer: AccessAuthorizer) -> None:
    caller = Caller({})
    await authorizer.authorize(caller, ALICE, Scope("push", "team/app"))
    await authorizer.authorize(caller, ANON, Scope("pull", "public/a"))
    await authorizer.authorize(caller, ANON, Scope("public"))
    await authorizer.authorize(caller, ANON, Scope("catalog"))  # may pull public/*
    with pytest.raises(Unauthenticated):
        await authorizer.authorize(caller, ANON, Scope("pull", "team/app"))
    with pytest.raises(Unauthenticated):
        await authorizer.authorize(caller, ANON, Scope("login"))
    with pytest.raises(Forbidden):
        await authorizer.authorize(caller, ALICE, Scope("delete", "team/app"))
    with pytest.raises(Forbidden):
        await authorizer.authorize(caller, ALICE, Scope("admin"))
    await authorizer.authorize(caller, BOB, Scope("admin"))


async def test_checks_run_before_the_rules(authorizer: AccessAuthorizer) -> None:
    seen: list[Scope] = []

    async def refuse_deletes(caller: Caller, identity: Identity, scope: Scope) -> None:
        seen.append(scope)
        if scope.action == "delete":
            raise Forbidden("no deletes from here")

    authorizer.checks.append(refuse_deletes)
    await authorizer.authorize(Caller({}), BOB, Scope("pull", "x/base"))
    with pytest.raises(Forbidden, match="no deletes"):
        await authorizer.authorize(Caller({}), BOB, Scope("delete", "x/base"))
    assert seen == [Scope("pull", "x/base"), Scope("delete", "x/base")]


def test_token_grants_replace_the_rules(authorizer: AccessAuthorizer) -> None:
    token = Identity("alice", "token", (("team/app", frozenset({"pull"})),))
    assert authorizer.may(token, "team/app", "pull")
    assert not authorizer.may(token, "team/app", "push")  # the rules would allow it
    assert not authorizer.may(token, "team/other", "pull")
    # An (external) issuer's access names are repository names, not globs.
    wide = Identity("alice", "token", (("team/*", frozenset({"pull"})), ("*", frozenset({"pull"}))))
    assert not authorizer.may(wide, "team/app", "pull")
    assert not authorizer.sees_everything(wide)


def test_ticket_key_is_shared_through_the_store(tmp_path: Path) -> None:
    first = SQLiteMeta(tmp_path / "shared.sqlite3")
    first.migrate()
    second = SQLiteMeta(tmp_path / "shared.sqlite3")  # another worker or instance
    try:
        key = shared_ticket_key(first.shared_secret, tmp_path / "a")
        assert len(key) == 32
        assert shared_ticket_key(second.shared_secret, tmp_path / "b") == key
        assert not (tmp_path / "a").exists()  # nothing on the instance's disk
    finally:
        first.close()
        second.close()


def test_an_old_ticket_key_file_is_adopted(tmp_path: Path) -> None:
    old = bytes(range(32))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / LEGACY_KEY_FILE).write_bytes(old)
    store = SQLiteMeta(tmp_path / "shared.sqlite3")
    store.migrate()
    try:
        assert shared_ticket_key(store.shared_secret, tmp_path / "data") == old
        assert shared_ticket_key(store.shared_secret, tmp_path / "elsewhere") == old
    finally:
        store.close()


def test_tickets() -> None:
    key = secrets.token_bytes(32)
    now = [1000.0]
    tickets = FeedTickets(key, lifetime=30, clock=lambda: now[0])
    other_worker = FeedTickets(key, lifetime=30, clock=lambda: now[0])
    ticket = tickets.issue(ALICE)
    assert other_worker.redeem(ticket) == ALICE
    assert other_worker.redeem(ticket) is None  # once per worker
    late = tickets.issue(BOB)
    now[0] += 31
    assert tickets.redeem(late) is None  # expired
    forged = FeedTickets(b"k" * 32, clock=lambda: now[0]).issue(BOB)
    assert tickets.redeem(forged) is None
    fresh = tickets.issue(BOB)
    body, _, signature = fresh.partition(".")
    assert tickets.redeem(body[:-2] + "xx." + signature) is None
    assert tickets.redeem("garbage") is None
    assert tickets.redeem("a.b.c") is None


# -- configuration


def test_config_needs_a_users_file_and_known_actions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.htpasswd"):
        auth_settings(tmp_path / "d1", [], DOCKYARD_AUTH_HTPASSWD="")
    with pytest.raises(ConfigError, match="unknown action 'write'"):
        auth_settings(
            tmp_path / "d2", [{"users": ["a"], "repositories": ["*"], "actions": ["write"]}]
        )
    with pytest.raises(ConfigError, match="needs users, repositories and actions"):
        auth_settings(tmp_path / "d3", [{"users": ["a"], "actions": ["pull"]}])
    with pytest.raises(ConfigError, match=r'auth\.mode is "none"'):
        auth_settings(
            tmp_path / "d4",
            [{"users": ["a"], "repositories": ["*"], "actions": ["*"]}],
            DOCKYARD_AUTH_MODE="none",
        )
    with pytest.raises(ConfigError, match="choose one of"):
        auth_settings(tmp_path / "d6", [], DOCKYARD_AUTH_MODE="ldap")
    s = auth_settings(tmp_path / "d7", [{"users": ["*"], "repositories": ["*"], "actions": ["*"]}])
    assert s.auth.mode == "basic" and s.access[0].actions == ["*"]
    assert set(PASSWORDS) <= set(Users(s.auth.htpasswd).names())
