"""The API with ``auth.mode = "basic"``: challenges, 401 and 403, filtered listings,
mounts, statistics and the event feed, and the scope every route names."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from dockyard.auth import PUBLIC, Scope
from dockyard.config import Settings
from dockyard.events.feed import CLOSE_DENIED
from dockyard.events.tail import FeedRejected, Tail, TailOptions
from dockyard.http.web import WEB_SCOPES
from dockyard.services import Services
from tests.authfixtures import ROOT_RULE, auth_settings, basic
from tests.conftest import (
    assert_error,
    digest_of,
    make_client,
    open_services,
    parse_link,
    push_blob,
    push_image,
    random_blob,
)
from tests.feedclient import open_feed, serve_app
from tests.test_events import run_tail

RULES = [
    ROOT_RULE,
    {"users": ["alice"], "repositories": ["team/*"], "actions": ["pull", "push"]},
    {"users": ["bob"], "repositories": ["team/*"], "actions": ["pull"]},
    {"users": ["carol"], "repositories": ["*"], "actions": ["admin"]},
    {"users": ["carol"], "repositories": ["team/*"], "actions": ["pull"]},
    {"users": ["anonymous"], "repositories": ["public/*"], "actions": ["pull"]},
    {"users": ["*"], "repositories": ["library"], "actions": ["pull"]},
]
CHALLENGE = 'Basic realm="dockyard", charset="UTF-8"'


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return auth_settings(tmp_path / "data", RULES)


@pytest.fixture
async def root(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(services, basic("root")) as c:
        yield c


@pytest.fixture
async def alice(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(services, basic("alice")) as c:
        yield c


@pytest.fixture
async def anonymous(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(services) as c:
        yield c


def as_user(services: Services, name: str) -> httpx.AsyncClient:
    return make_client(services, basic(name))


def assert_challenge(r: httpx.Response) -> None:
    assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"] == CHALLENGE


async def test_base_asks_anonymous_callers_to_log_in(
    anonymous: httpx.AsyncClient, alice: httpx.AsyncClient
) -> None:
    for method in ("GET", "HEAD"):
        r = await anonymous.request(method, "/v2/")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == CHALLENGE
    assert_challenge(await anonymous.get("/v2/"))
    r = await alice.get("/v2/")
    assert r.status_code == 200 and r.json() == {}
    assert (await anonymous.get("/healthz")).status_code == 200
    assert (await anonymous.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic",
        "Basic ",
        "Basic !!!!",
        "Basic YWxpY2U=",  # "alice", no colon
        "Basic OnB3",  # ":pw", no user
        "Basic /////w==",  # not UTF-8
        "Basic " + "QUFB" * 5000,  # huge
        "basic YWxpY2U6d3Jvbmc=",  # alice:wrong, scheme in lower case
        "Bearer abc.def.ghi",  # no token service in basic mode
        "Negotiate abc",
        "\t",
    ],
)
async def test_bad_authorization_headers_get_401(
    anonymous: httpx.AsyncClient, authorization: str
) -> None:
    # Even on a path anonymous may pull: bad credentials are refused, not ignored.
    r = await anonymous.get("/v2/public/x/tags/list", headers={"authorization": authorization})
    assert_challenge(r)


async def test_rules_decide_push_pull_delete(
    services: Services,
    root: httpx.AsyncClient,
    alice: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
) -> None:
    image = await push_image(alice, "team/app", "v1")  # alice may push team/*
    assert (await alice.get(f"/v2/team/app/manifests/{image.digest}")).status_code == 200
    async with as_user(services, "bob") as bob:
        assert (await bob.get("/v2/team/app/manifests/v1")).status_code == 200
        data = random_blob()
        r = await bob.post(
            "/v2/team/app/blobs/uploads/", params={"digest": digest_of(data)}, content=data
        )
        assert_error(r, 403, "DENIED")
        assert_error(await bob.delete(f"/v2/team/app/manifests/{image.digest}"), 403, "DENIED")
    assert_error(await alice.delete(f"/v2/team/app/manifests/{image.digest}"), 403, "DENIED")
    assert_error(await alice.get("/v2/other/manifests/v1"), 403, "DENIED")
    assert_challenge(await anonymous.get("/v2/team/app/manifests/v1"))
    assert_challenge(await anonymous.post("/v2/public/x/blobs/uploads/"))
    # Anonymous pull where a rule allows it.
    public = await push_image(root, "public/tools", "latest")
    r = await anonymous.get("/v2/public/tools/manifests/latest")
    assert r.status_code == 200 and r.content == public.payload
    r = await anonymous.get(f"/v2/public/tools/blobs/{digest_of(public.config)}")
    assert r.status_code == 200 and r.content == public.config
    # The refusals changed nothing.
    assert (await root.get("/v2/team/app/manifests/v1")).status_code == 200


def flat(pages: list[list[str]]) -> list[str]:
    return [name for page in pages for name in page]


async def catalog_pages(client: httpx.AsyncClient, n: int) -> list[list[str]]:
    pages: list[list[str]] = []
    url: str | None = f"/v2/_catalog?n={n}"
    while url is not None:
        r = await client.get(url)
        assert r.status_code == 200, r.text
        pages.append(r.json()["repositories"])
        url = parse_link(r.headers["link"]) if "link" in r.headers else None
        assert len(pages) < 50
    return pages


async def test_catalog_lists_only_what_the_caller_may_pull(
    services: Services, root: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    data = random_blob(64)
    names = [f"a{i:02}" for i in range(7)] + [f"team/t{i:02}" for i in range(5)]
    names += [f"z{i:02}" for i in range(7)] + ["library", "public/p"]
    for name in names:
        await push_blob(root, name, data)
    assert flat(await catalog_pages(root, 1000)) == sorted(names)
    async with as_user(services, "bob") as bob:
        pages = await catalog_pages(bob, 2)
    # team/* by rule, library as any user, public/* as anybody (the anonymous rule).
    visible = sorted([n for n in names if n.startswith("team/")] + ["library", "public/p"])
    assert flat(pages) == visible
    # Every page is full but the last: the filter runs inside the paging loop.
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert flat(await catalog_pages(anonymous, 1)) == ["public/p"]
    async with as_user(services, "carol") as carol:  # admin everywhere, pull in team/*
        assert flat(await catalog_pages(carol, 3)) == visible


async def test_catalog_needs_some_pull(services: Services) -> None:
    nobody = auth_settings(Path(services.settings.storage.root).parent / "d2", [ROOT_RULE])
    async with open_services(nobody) as svc, make_client(svc) as anonymous:
        assert_challenge(await anonymous.get("/v2/_catalog"))
        async with make_client(svc, basic("alice")) as alice:
            assert_error(await alice.get("/v2/_catalog"), 403, "DENIED")


async def test_mount_needs_pull_on_the_source(
    services: Services,
    root: httpx.AsyncClient,
    alice: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Candidates of a mount without from= are read two at a time here: the unreadable
    # secret/* ones fill the first pages, and must not hide team/src behind them.
    monkeypatch.setattr("dockyard.core.blobs.MOUNT_CANDIDATES", 2)
    secret = random_blob()
    for name in ("secret/y", "secret/z"):
        await push_blob(root, name, secret)
    digest = await push_blob(root, "secret/x", secret)
    unknown = digest_of(random_blob())
    # From a repository alice may not pull: a plain upload, as for a blob nobody has.
    for mount, source in ((digest, "secret/x"), (unknown, "secret/x"), (digest, None)):
        params = {"mount": mount, **({"from": source} if source else {})}
        r = await alice.post("/v2/team/app/blobs/uploads/", params=params)
        assert r.status_code == 202, r.text
        assert r.headers["location"].startswith("/v2/team/app/blobs/uploads/")
    assert_error(await alice.get(f"/v2/team/app/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    # Once a repository alice may pull holds it, the mount works, from there only.
    await push_blob(root, "team/src", secret)
    r = await alice.post("/v2/team/app/blobs/uploads/", params={"mount": digest})
    assert r.status_code == 201, r.text
    assert (await alice.get(f"/v2/team/app/blobs/{digest}")).content == secret
    mounts = [e for e in services.meta.events_after(0, 1000) if e.action == "mount"]
    assert [(m.repository, m.body["target"]["from"]) for m in mounts] == [("team/app", "team/src")]
    assert mounts[0].body["actor"] == {"name": "alice"}  # events name the user
    # Push on the target is needed as ever.
    async with as_user(services, "bob") as bob:
        r = await bob.post(
            "/v2/team/other/blobs/uploads/", params={"mount": digest, "from": "team/src"}
        )
        assert_error(r, 403, "DENIED")


async def test_stats_need_admin_and_show_what_may_be_pulled(
    services: Services, root: httpx.AsyncClient, alice: httpx.AsyncClient
) -> None:
    shared = random_blob()
    for name in ("team/a", "team/b", "secret/c"):
        await push_image(root, name, "v1")
        await push_blob(root, name, shared)
    assert_error(await alice.get("/v2/_dockyard/stats"), 403, "DENIED")
    r = await root.get("/v2/_dockyard/stats")
    assert r.status_code == 200
    assert sorted(x["name"] for x in r.json()["repositories"]) == ["secret/c", "team/a", "team/b"]
    async with as_user(services, "carol") as carol:
        r = await carol.get("/v2/_dockyard/stats")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert sorted(x["name"] for x in doc["repositories"]) == ["team/a", "team/b"]
    assert doc["totals"]["repositories"] == 2 and doc["totals"]["tags"] == 2
    # Blobs too: theirs only, each once (3 per image, and one shared by all three).
    root_totals = (await root.get("/v2/_dockyard/stats")).json()["totals"]
    assert (root_totals["blobs"], doc["totals"]["blobs"]) == (10, 7)
    assert 0 < doc["totals"]["blob_bytes"] < root_totals["blob_bytes"]
    assert {t["repository"] for t in doc["activity"]["top"]} == {"team/a", "team/b"}
    # The activity counts their events only: 2 repositories of 5 pushes (config, 2 layers,
    # manifest, the shared blob) and their bytes, where root sees 3.
    everything = (await root.get("/v2/_dockyard/stats")).json()["activity"]
    assert everything["actions"]["push"] == 15
    assert doc["activity"]["actions"]["push"] == 10
    assert sum(b["push"] for b in doc["activity"]["buckets"]) == 10
    assert 0 < doc["activity"]["bytes_in"] < everything["bytes_in"]
    assert sum(b["bytes_in"] for b in doc["activity"]["buckets"]) == doc["activity"]["bytes_in"]


async def test_feed_needs_admin_and_sends_only_pullable_events(
    services: Services, root: httpx.AsyncClient
) -> None:
    async with serve_app(services.app) as server:
        for who in (None, "alice"):
            headers = basic(who) if who else None
            async with open_feed(server.port, welcome=False, headers=headers) as feed:
                closed, _ = await feed.closed()
                assert closed.code == CLOSE_DENIED, closed
        async with as_user(services, "carol") as carol:
            r = await carol.get("/v2/_dockyard/ticket")
            assert r.status_code == 200, r.text
            ticket = r.json()["ticket"]
        # The browser's way in: a ticket in the query instead of a header.
        async with open_feed(server.port, {"ticket": ticket, "action": "push"}) as feed:
            await push_blob(root, "secret/s", random_blob())
            seen = await push_blob(root, "team/t", random_blob())
            event = await feed.event()
            assert (event["target"]["repository"], event["target"]["digest"]) == ("team/t", seen)
            assert await feed.quiet(0.3) == []
        # A ticket is good once.
        async with open_feed(server.port, {"ticket": ticket}, welcome=False) as feed:
            closed, _ = await feed.closed()
            assert closed.code == CLOSE_DENIED
        async with open_feed(server.port, headers=basic("root")) as feed:
            await push_blob(root, "secret/s", random_blob())
            assert (await feed.event())["target"]["repository"] == "secret/s"


async def test_every_route_names_its_scope(services: Services) -> None:
    """Every method of every route, the websocket feed and every web path has a scope;
    the ones anybody may use are exactly the health checks and the dashboard's files."""
    public: set[str] = set()
    for pattern, methods, _kind in services.app.router.routes:
        assert methods, pattern.pattern
        for method, (_handler, need) in methods.items():
            scope = need.scope({"name": "some/repo"})
            assert isinstance(scope, Scope), (pattern.pattern, method)
            if scope == PUBLIC:
                public.add(pattern.pattern)
            elif scope.repository is not None:
                assert "(?P<name>" in pattern.pattern, (pattern.pattern, method)
    assert public == {"/healthz", "/readyz"}
    assert services.app.websockets, "the feed is registered"
    for path, handler in services.app.websockets.items():
        assert getattr(handler, "scope", None) == Scope("admin"), path
    web_app = services.app.web
    assert web_app is not None
    rules = {rule.rule for rule in web_app.app.url_map.iter_rules()}  # type: ignore[attr-defined]
    assert rules == set(WEB_SCOPES), "every web path is listed in WEB_SCOPES"
    assert all(scope == PUBLIC for scope in WEB_SCOPES.values())
    assert not any(re.search("stats|events|ticket", rule) for rule in rules)


# Trio only: `dockyard events tail` (events/tail.py) is a trio program (trio-websocket).
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_events_tail_logs_in(services: Services, root: httpx.AsyncClient) -> None:
    await push_blob(root, "team/t", random_blob())
    async with serve_app(services.app) as server:
        printed: list[str] = []
        tail = Tail(
            TailOptions(server.url, since=0, authorization=basic("carol")["authorization"]),
            printed.append,
            lambda _: None,
        )
        await run_tail(tail, lambda: len(printed) >= 1)
        assert "team/t@sha256:" in printed[0]
        refused = Tail(TailOptions(server.url), lambda _: None, lambda _: None)
        with pytest.raises(FeedRejected) as e, anyio.fail_after(10):
            await refused.run()
        assert e.value.code == CLOSE_DENIED


async def test_catalog_with_tokens_lists_what_the_rules_let_the_holder_pull(
    tmp_path: Path, root: httpx.AsyncClient
) -> None:
    """A token granting registry:catalog:* lists what its holder may pull by the rules (its
    repository grants name only what it asked for); a token without it gets 401
    insufficient_scope, naming the catalog scope."""
    for name in ("team/a", "team/b", "secret/c"):
        await push_image(root, name, "v1")
    settings = auth_settings(tmp_path / "data", RULES, mode="token")
    async with open_services(settings) as svc, make_client(svc) as client:

        async def token(user: str, scope: str) -> dict[str, str]:
            params = {"service": "dockyard", "scope": scope}
            r = await client.get("/auth/token", params=params, headers=basic(user))
            assert r.status_code == 200, r.text
            return {"authorization": f"Bearer {r.json()['token']}"}

        r = await client.get("/v2/_catalog", headers=await token("bob", "registry:catalog:*"))
        assert r.status_code == 200, r.text
        assert r.json()["repositories"] == ["team/a", "team/b"]
        r = await client.get("/v2/_catalog", headers=await token("root", "registry:catalog:*"))
        assert r.json()["repositories"] == ["secret/c", "team/a", "team/b"]
        r = await client.get("/v2/_catalog", headers=await token("bob", "repository:team/a:pull"))
        assert_error(r, 401, "UNAUTHORIZED")
        assert 'scope="registry:catalog:*"' in r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
