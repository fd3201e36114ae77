"""Robot tokens below HTTP: the grammar (names, scopes, durations), the rows on SQLite and
PostgreSQL (one conformance class, both stores), and ``RobotTokens`` over a real SQLite
database: logging in, expiry, revocation seen by another worker's instance, scanners'
pull credentials, and the token issuer's grant for a robot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.auth.robots import (
    InvalidDuration,
    InvalidRobotName,
    InvalidRobotScope,
    RobotExists,
    RobotIdentity,
    RobotScope,
    RobotTokens,
    check_name,
    hash_secret,
    new_robot,
    parse_duration,
    parse_robot_scope,
    parse_robot_scopes,
)
from dockyard.auth.scopes import ResourceScope
from dockyard.meta.postgres import PostgresMeta
from dockyard.meta.robots import RobotToken
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.meta.store import Database, MetadataStore
from tests.meta_conformance import T0, Clock, MakeStore
from tests.pgserver import PostgresServer

# -- grammar


def test_names() -> None:
    assert check_name("ci") == "ci"
    assert check_name("robot$ci.build-1_x") == "ci.build-1_x"
    for bad in ("", "CI", "a b", "x" * 65, "robot$", "a/b", "ci$"):
        with pytest.raises(InvalidRobotName):
            check_name(bad)


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("90m") == 90 * 60
    assert parse_duration("45s") == 45
    assert parse_duration("0") is None
    assert parse_duration("never") is None
    for bad in ("", "30", "d", "-1d", "1.5h", "1w", "0d"):
        with pytest.raises(InvalidDuration):
            parse_duration(bad)


def test_scopes() -> None:
    scope = parse_robot_scope("repository:team/*:push,pull")
    assert scope == RobotScope("team/*", frozenset({"pull", "push"}))
    assert str(scope) == "repository:team/*:pull,push"
    assert parse_robot_scope("repository:*:*").actions == {"pull", "push", "delete"}
    assert len(parse_robot_scopes(["repository:a:pull repository:b/c:delete"])) == 2
    for bad in (
        "repository:team/*:admin",
        "registry:catalog:*",
        "repository::pull",
        "repository:Team/App:pull",
        "repository:team/app",
        "team/app:pull",
    ):
        with pytest.raises(InvalidRobotScope):
            parse_robot_scope(bad)
    with pytest.raises(InvalidRobotScope):
        parse_robot_scopes([])


def test_identity_and_grant() -> None:
    robot = RobotIdentity(
        "robot$ci",
        "robot",
        scopes=(
            parse_robot_scope("repository:team/*:push,pull"),
            parse_robot_scope("repository:base:pull"),
        ),
    )
    assert robot.may("team/app", "push") and robot.may("team/a/b", "pull")
    assert not robot.may("team/app", "delete")
    assert not robot.may("other", "pull") and not robot.may("teamx", "pull")
    assert robot.may("base", "pull") and not robot.may("base", "push")
    assert robot.may(None, "pull") and not robot.may(None, "admin")
    asked = ResourceScope("repository", "team/app", frozenset({"pull", "push", "delete"}))
    assert robot.grant(asked) == {"pull", "push"}
    assert robot.grant(ResourceScope("registry", "catalog", frozenset({"*"}))) == frozenset()
    plugin = ResourceScope("repository", "team/app", frozenset({"pull"}), "plugin")
    assert robot.grant(plugin) == frozenset()


def test_new_robot_keeps_only_a_hash() -> None:
    row, secret = new_robot("ci", [parse_robot_scope("repository:a:pull")], 60, T0)
    assert len(secret) >= 43 and secret not in repr(row)
    assert row.secret_hash == hash_secret(secret) and row.expires == T0 + 60
    assert json.loads(row.scopes) == ["repository:a:pull"]


# -- the rows, on both stores


def row(name: str, expires: float | None = None, now: float = T0) -> RobotToken:
    return RobotToken(name, hash_secret(name), '["repository:a:pull"]', now, expires)


class RobotRecordsConformance:
    @pytest.fixture
    def clock(self) -> Clock:
        return Clock()

    @pytest.fixture
    def store(self, make_store: MakeStore, clock: Clock) -> Iterator[MetadataStore]:
        s = make_store(clock)
        s.migrate()
        yield s
        s.close()

    def test_create_get_list(self, store: MetadataStore) -> None:
        assert store.robot_get("ci") is None and store.robot_list() == []
        assert store.robot_create(row("ci", T0 + 100))
        assert store.robot_create(row("build"))
        assert store.robot_get("ci") == row("ci", T0 + 100)
        assert [r.name for r in store.robot_list()] == ["build", "ci"]

    def test_a_live_name_is_taken(self, store: MetadataStore, clock: Clock) -> None:
        assert store.robot_create(row("ci", T0 + 100))
        other = RobotToken("ci", "sha256:other", "[]", T0 + 1, None)
        assert not store.robot_create(other)
        assert store.robot_get("ci") == row("ci", T0 + 100)
        clock.now = T0 + 100  # expired: the name may be given again
        assert store.robot_create(other)
        assert store.robot_get("ci") == other

    def test_revoke(self, store: MetadataStore, clock: Clock) -> None:
        assert not store.robot_revoke("ci")
        store.robot_create(row("ci"))
        clock.now = T0 + 5
        assert store.robot_revoke("ci")
        clock.now = T0 + 9
        assert store.robot_revoke("ci")  # again: the first time stays
        got = store.robot_get("ci")
        assert got is not None and got.revoked == T0 + 5
        fresh = RobotToken("ci", "sha256:new", "[]", T0 + 9, None)
        assert store.robot_create(fresh)  # a revoked robot's name is free again
        assert store.robot_get("ci") == fresh

    def test_touch_at_most_once_per_interval(self, store: MetadataStore, clock: Clock) -> None:
        store.robot_create(row("ci"))
        clock.now = T0 + 1
        store.robot_touch("ci", 60)
        clock.now = T0 + 30
        store.robot_touch("ci", 60)
        got = store.robot_get("ci")
        assert got is not None and got.last_used == T0 + 1
        clock.now = T0 + 61
        store.robot_touch("ci", 60)
        got = store.robot_get("ci")
        assert got is not None and got.last_used == T0 + 61

    def test_delete_expired_by_prefix(self, store: MetadataStore, clock: Clock) -> None:
        store.robot_create(row("scan-old", T0 + 10))
        store.robot_create(row("scan-new", T0 + 100))
        store.robot_create(row("scanner", T0 + 10))  # not the prefix "scan-"
        store.robot_create(row("ci", T0 + 10))
        clock.now = T0 + 50
        assert store.robot_delete_expired("scan-") == 1
        assert [r.name for r in store.robot_list()] == ["ci", "scan-new", "scanner"]
        with pytest.raises(ValueError):
            store.robot_delete_expired("%")


class TestSQLiteRobots(RobotRecordsConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> MakeStore:
        return lambda clock: SQLiteMeta(tmp_path / "meta.sqlite3", clock=clock)


class TestPostgresRobots(RobotRecordsConformance):
    @pytest.fixture
    def make_store(self, postgres_server: PostgresServer) -> MakeStore:
        url = postgres_server.new_database()
        return lambda clock: PostgresMeta(url, clock=clock)


# -- RobotTokens on a real SQLite database


class Times:
    """Wall clock (expiry) and monotonic clock (the row cache), both settable."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0


@pytest.fixture
def times() -> Times:
    return Times()


@pytest.fixture
def databases(tmp_path: Path, times: Times) -> Iterator[tuple[Database, Database]]:
    """Two handles on one database, as two workers have."""
    first = SQLiteMeta(tmp_path / "meta.sqlite3", clock=lambda: times.wall)
    first.migrate()
    second = SQLiteMeta(tmp_path / "meta.sqlite3", clock=lambda: times.wall)
    yield Database(first, 2), Database(second, 2)
    first.close()
    second.close()


def robots_on(db: Database, times: Times) -> RobotTokens:
    robots = RobotTokens(db, clock=lambda: times.wall)
    robots._monotonic = lambda: times.mono
    return robots


async def test_login_expiry_and_revocation_across_workers(
    databases: tuple[Database, Database], times: Times
) -> None:
    one, two = robots_on(databases[0], times), robots_on(databases[1], times)
    secret = await one.create("ci", parse_robot_scopes(["repository:team/*:push,pull"]), 3600)
    robot = await two.authenticate("robot$ci", secret)
    assert robot is not None and robot.name == "robot$ci" and robot.method == "robot"
    assert robot.may("team/app", "push") and not robot.may("other", "pull")
    for user, password in (("robot$ci", secret + "x"), ("ci", secret), ("robot$cd", secret)):
        assert await two.authenticate(user, password) is None
    with pytest.raises(RobotExists):
        await one.create("ci", parse_robot_scopes(["repository:a:pull"]), None)
    row = await databases[0].run(databases[0].meta.robot_get, "ci")
    assert row is not None and row.last_used == T0  # the login was recorded

    # Revoked through the other handle: seen once the cached row is older than allowed.
    assert await databases[0].run(databases[0].meta.robot_revoke, "ci")
    times.mono += two.verified_seconds
    assert await two.authenticate("robot$ci", secret) is None
    assert not await two.active("robot$ci")


async def test_expiry(databases: tuple[Database, Database], times: Times) -> None:
    robots = robots_on(databases[0], times)
    secret = await robots.create("ci", parse_robot_scopes(["repository:a:pull"]), 60)
    assert await robots.authenticate("robot$ci", secret) is not None
    times.wall += 60  # no cache stands in the way of expiry
    assert await robots.authenticate("robot$ci", secret) is None
    assert not await robots.active("robot$ci")


async def test_pull_credentials(databases: tuple[Database, Database], times: Times) -> None:
    robots = robots_on(databases[0], times)
    creds = await robots.pull_credentials("team/app", 30)
    assert creds is not None
    user, secret = creds
    assert user.startswith("robot$scan-")
    robot = await robots.authenticate(user, secret)
    assert robot is not None and robot.may("team/app", "pull")
    assert not robot.may("team/app", "push") and not robot.may("team/app2", "pull")
    times.wall += 30
    assert await robots.authenticate(user, secret) is None
    # Making another one removes the expired one's row.
    assert await robots.pull_credentials("team/app", 30) is not None
    names = [r.name for r in await databases[0].run(databases[0].meta.robot_list)]
    assert len(names) == 1 and user != f"robot${names[0]}"
    with pytest.raises(InvalidRobotScope):
        await robots.pull_credentials("team/*", 30)


async def test_a_new_robot_works_at_once(
    databases: tuple[Database, Database], times: Times
) -> None:
    one, two = robots_on(databases[0], times), robots_on(databases[1], times)
    assert await two.authenticate("robot$late", "guess") is None  # not remembered
    secret = await one.create("late", parse_robot_scopes(["repository:a:pull"]), None)
    assert await two.authenticate("robot$late", secret) is not None
