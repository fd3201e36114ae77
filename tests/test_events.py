"""The live event feed, end to end in one process: a real hypercorn serving the registry
on loopback and real websocket clients.

What a subscriber sees for every action (the native JSON documented in
``events/schema.py`` and ``docs/events.md``), replay with ``since`` and its seam with live
events, a slow subscriber cut off with close code 4008, filters given as query
parameters or in a subscribe message, and close code 4400 for bad subscriptions.
Restarts and several worker processes are in ``tests/e2e/test_event_feed.py``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio_websocket

from dockyard.actions import ACTIONS
from dockyard.cli import main as cli_main
from dockyard.config import EventsSettings
from dockyard.events.feed import (
    CLOSE_BAD_REQUEST,
    CLOSE_DENIED,
    CLOSE_LAGGED,
    FEED_PATH,
    SUBSCRIPTION_KEYS,
)
from dockyard.events.hub import SubscriberLagged
from dockyard.events.schema import EventFilter, native
from dockyard.events.tail import FeedRejected, Tail, TailOptions, default_url, feed_url
from dockyard.meta.records import Event, StoredEvent
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.services import Services
from tests.conftest import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    fake_digest,
    image_manifest,
    make_settings,
    open_services,
    push_blob,
    push_image,
    put_manifest,
    random_blob,
    start_upload,
)
from tests.feedclient import Feed, LoopbackServer, open_feed, serve_app

# `dockyard events tail` is a command-line client on trio (trio-websocket, in its own
# process): its tests run only there.
TAIL_ON_TRIO = pytest.mark.parametrize("anyio_backend", ["trio"])

OCTET = "application/octet-stream"
USER_AGENT = "feed-tests/1.0"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
EVENT_KEYS = {"id", "timestamp", "action", "target", "request", "actor", "source"}


@pytest.fixture
async def server(services: Services) -> AsyncIterator[LoopbackServer]:
    async with serve_app(services.app) as s:
        yield s


def http_client(server: LoopbackServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=10, headers={"user-agent": USER_AGENT})


@pytest.fixture
async def http(server: LoopbackServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(server) as c:
        yield c


def logged(svc: Services, after: int = 0) -> list[dict[str, Any]]:
    """The durable log after ``after``, as the feed renders it."""
    return [native(e) for e in svc.meta.events_after(after, 1_000_000)]


def last_event_id(svc: Services) -> int:
    return svc.meta.last_event_id()


async def wait_logged(svc: Services, count: int, after: int = 0) -> list[dict[str, Any]]:
    """The log once it holds ``count`` events after ``after`` (pull events are batched)."""
    with anyio.fail_after(10):
        while True:
            found = logged(svc, after)
            if len(found) >= count:
                return found
            await anyio.sleep(0.01)


async def expect(
    feed: Feed, action: str, method: str, target: dict[str, Any], request_id: str | None = None
) -> dict[str, Any]:
    """The next event is exactly this one (every field of the native shape checked)."""
    event = await feed.event()
    assert set(event) == EVENT_KEYS, event
    assert isinstance(event["id"], int) and event["id"] > 0
    assert TIMESTAMP.fullmatch(event["timestamp"]), event["timestamp"]
    assert event["action"] == action, event
    assert event["target"] == target, event
    request = event["request"]
    assert set(request) == {"id", "addr", "useragent", "method"}, request
    assert (request["addr"], request["useragent"], request["method"]) == (
        "127.0.0.1",
        USER_AGENT,
        method,
    )
    if request_id is not None:
        assert request["id"] == request_id
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", request["id"]), request  # generated per request
    assert event["actor"] == {"name": None}  # until auth identifies callers
    assert event["source"] == {"instance": "test"}
    return event


def blob_target(repo: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "blob",
        "repository": repo,
        "digest": digest_of(data),
        "mediaType": OCTET,
        "size": len(data),
        **extra,
    }


def manifest_target(repo: str, payload: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "manifest",
        "repository": repo,
        "digest": digest_of(payload),
        "mediaType": OCI_MANIFEST,
        "size": len(payload),
        **extra,
    }


def pushed_image_target(repo: str, payload: bytes, **extra: Any) -> dict[str, Any]:
    # An OCI image without artifactType has its config's media type as artifact type
    # (image-spec; what the referrers API reports too).
    return manifest_target(repo, payload, artifactType=OCI_CONFIG, **extra)


# -- every action, exactly one event


async def test_every_action_makes_exactly_one_event(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    async with open_feed(server.port, {"since": 0}) as feed:
        assert feed.welcome["since"] == 0
        assert feed.welcome["filter"] == {"repository": [], "action": [], "mediaType": []}

        # A blob in one POST ?digest=.
        mono = random_blob(300)
        r = await http.post(
            "/v2/lib/app/blobs/uploads/",
            params={"digest": digest_of(mono)},
            content=mono,
            headers={"x-request-id": "mono-1"},
        )
        assert r.status_code == 201
        await expect(feed, "push", "POST", blob_target("lib/app", mono), "mono-1")

        # A chunked upload: the session and its chunks are no change; the PUT is.
        chunked = random_blob(3000)
        location = await start_upload(http, "lib/app")
        for part in (chunked[:1000], chunked[1000:2000]):
            assert (await http.patch(location, content=part)).status_code == 202
            location = (await http.get(location)).headers["location"]
        r = await http.put(location, params={"digest": digest_of(chunked)}, content=chunked[2000:])
        assert r.status_code == 201
        await expect(feed, "push", "PUT", blob_target("lib/app", chunked))

        # A cross-repository mount.
        r = await http.post(
            "/v2/lib/copy/blobs/uploads/", params={"mount": digest_of(mono), "from": "lib/app"}
        )
        assert r.status_code == 201
        await expect(feed, "mount", "POST", blob_target("lib/copy", mono, **{"from": "lib/app"}))

        # An image: its blobs, then the manifest by tag.
        config = b'{"architecture":"amd64","os":"linux"}'
        layer = random_blob(700)
        for blob in (config, layer):
            await push_blob(http, "lib/app", blob)
            await expect(feed, "push", "POST", blob_target("lib/app", blob))
        payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
        assert (await put_manifest(http, "lib/app", "v1", payload)).status_code == 201
        await expect(
            feed, "push", "PUT", pushed_image_target("lib/app", payload, tag="v1", tags=["v1"])
        )

        # The same manifest by digest with ?tag= twice: one event naming both tags.
        r = await put_manifest(
            http, "lib/app", digest_of(payload), payload, params={"tag": ["a", "b"]}
        )
        assert r.status_code == 201
        await expect(
            feed, "push", "PUT", pushed_image_target("lib/app", payload, tag="a", tags=["a", "b"])
        )

        # A referrer by digest: its subject and artifactType, no tag.
        await push_blob(http, "lib/app", b"{}")
        await expect(feed, "push", "POST", blob_target("lib/app", b"{}"))
        signature = image_manifest(
            descriptor("application/vnd.oci.empty.v1+json", b"{}"),
            [],
            artifactType="application/vnd.example.sig",
            subject=descriptor(OCI_MANIFEST, payload),
        )
        r = await put_manifest(http, "lib/app", digest_of(signature), signature)
        assert r.status_code == 201
        await expect(
            feed,
            "push",
            "PUT",
            manifest_target(
                "lib/app",
                signature,
                artifactType="application/vnd.example.sig",
                subject=digest_of(payload),
            ),
        )

        # Pulls (GETs; HEADs are not pulls), written in a batch, in order.
        assert (await http.head(f"/v2/lib/app/blobs/{digest_of(layer)}")).status_code == 200
        assert (await http.head("/v2/lib/app/manifests/v1")).status_code == 200
        assert (await http.get(f"/v2/lib/app/blobs/{digest_of(layer)}")).content == layer
        assert (await http.get("/v2/lib/app/manifests/v1")).content == payload
        r = await http.get(f"/v2/lib/app/manifests/{digest_of(payload)}")
        assert r.content == payload
        await expect(feed, "pull", "GET", blob_target("lib/app", layer))
        await expect(feed, "pull", "GET", manifest_target("lib/app", payload, tag="v1"))
        await expect(feed, "pull", "GET", manifest_target("lib/app", payload))

        # Deletes: a blob, a tag (untag), a manifest by digest.
        assert (await http.delete(f"/v2/lib/copy/blobs/{digest_of(mono)}")).status_code == 202
        await expect(feed, "delete", "DELETE", blob_target("lib/copy", mono))
        assert (await http.delete("/v2/lib/app/manifests/a")).status_code == 202
        await expect(feed, "untag", "DELETE", manifest_target("lib/app", payload, tag="a"))
        r = await http.delete(f"/v2/lib/app/manifests/{digest_of(payload)}")
        assert r.status_code == 202
        await expect(feed, "delete", "DELETE", manifest_target("lib/app", payload))

        assert await feed.quiet(0.3) == []
        # What the feed sent is the durable log, one event per action, nothing else.
        log = logged(services)
        assert len(log) == 15
        assert [e["id"] for e in log] == list(range(1, 16))


async def test_rejected_requests_make_no_event(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    image = await push_image(http, "app", "v1")
    data = random_blob(100)
    location = await start_upload(http, "app")
    assert (await http.patch(location, content=data[:50])).status_code == 202
    location = (await http.get(location)).headers["location"]
    async with open_feed(server.port, {"since": last_event_id(services)}) as feed:
        rejected = [
            await http.post(
                "/v2/app/blobs/uploads/", params={"digest": digest_of(data + b"!")}, content=data
            ),
            await http.patch(location, content=data, headers={"content-range": "10-109"}),
            await http.put(location, params={"digest": fake_digest()}, content=data[50:]),
            await put_manifest(http, "app", "v2", b"{not json"),
            await put_manifest(http, "app", fake_digest(), image.payload),
            await http.delete(f"/v2/app/blobs/{fake_digest()}"),
            await http.delete(f"/v2/app/manifests/{fake_digest()}"),
            await http.delete("/v2/app/manifests/nope"),
            await http.get(f"/v2/app/blobs/{fake_digest()}"),
            await http.get("/v2/app/manifests/nope"),
            await http.get(f"/v2/other/blobs/{digest_of(image.config)}"),
        ]
        for r in rejected:
            assert 400 <= r.status_code < 500, (r.request.method, r.request.url, r.text)
        # Pull events are written in order: a good pull after the rejected ones is next.
        assert (await http.get(f"/v2/app/blobs/{digest_of(image.config)}")).status_code == 200
        event = await feed.event()
        assert (event["action"], event["target"]["digest"]) == ("pull", digest_of(image.config))
        sentinel = await push_blob(http, "app", b"sentinel")
        event = await feed.event()
        assert (event["action"], event["target"]["digest"]) == ("push", sentinel)


async def test_pull_events_can_be_turned_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_EVENTS_RECORD_PULLS="false")
    async with (
        open_services(settings) as svc,
        serve_app(svc.app) as server,
        http_client(server) as http,
    ):
        image = await push_image(http, "app", "v1")
        async with open_feed(server.port, {"since": last_event_id(svc)}) as feed:
            assert (await http.get(f"/v2/app/blobs/{digest_of(image.config)}")).status_code == 200
            assert (await http.get("/v2/app/manifests/v1")).status_code == 200
            await anyio.sleep(0.1)  # several flush intervals of the (off) pull writer
            sentinel = await push_blob(http, "app", b"sentinel")
            event = await feed.event()
            assert (event["action"], event["target"]["digest"]) == ("push", sentinel)
        assert svc.pulls.statistics().written == 0


# -- replay and the seam with live events


async def test_since_replays_what_follows_then_continues_live(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    digests = [await push_blob(http, "r", random_blob(10)) for _ in range(5)]
    async with open_feed(server.port, {"since": 2}) as feed:
        assert feed.welcome["since"] == 2
        assert feed.welcome["last_id"] <= 5  # what this process's hub has seen
        replayed = await feed.events(3)
        assert [(e["id"], e["target"]["digest"]) for e in replayed] == list(
            zip([3, 4, 5], digests[2:], strict=True)
        )
        live = await push_blob(http, "r", random_blob(10))
        assert [(e["id"], e["target"]["digest"]) for e in await feed.events(1)] == [(6, live)]
    # Without since: from now on, nothing replayed.
    async with open_feed(server.port, {"action": "push"}) as feed:
        assert feed.welcome["since"] == 6
        later = await push_blob(http, "r", random_blob(10))
        assert (await feed.event())["target"]["digest"] == later


async def test_seam_between_replay_and_live_has_no_gap_and_no_duplicate(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    # A backlog of several pages (the hub replays 500 rows at a time), written as pull
    # events are, then pushes that keep landing while the subscriber replays, crosses
    # into live events, and reads on.
    backlog = 1200
    await services.db.run(
        services.meta.append_events,
        [Event("pull", f"old/{i % 7}", fake_digest(), OCTET, i) for i in range(backlog)],
    )
    received: list[dict[str, Any]] = []
    pushed: list[str] = []
    some_pushed = anyio.Event()
    live_for_a_while = anyio.Event()

    async def pusher() -> None:
        while not (live_for_a_while.is_set() and len(pushed) >= 30):
            pushed.append(await push_blob(http, "new", random_blob(32)))
            if len(pushed) == 5:
                some_pushed.set()

    async with open_feed(server.port, {"since": 0}) as feed:
        assert feed.welcome["since"] == 0
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(pusher)
            while not live_for_a_while.is_set():
                received.append(await feed.event())
                if received[-1]["id"] == backlog // 2:
                    # Mid-replay: let pushes land behind the replay position first.
                    await some_pushed.wait()
                if received[-1]["id"] > backlog + 10:
                    live_for_a_while.set()
        total = last_event_id(services)
        received += await feed.events(total - len(received))
        assert await feed.quiet(0.2) == []
        assert services.hub.statistics().subscribers == 1  # it did go live

    assert [e["id"] for e in received] == list(range(1, total + 1))
    assert [e["target"]["digest"] for e in received[backlog:]] == pushed
    assert received == logged(services)


# -- slow subscribers


async def test_slow_subscriber_is_cut_off_with_its_last_id(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_EVENTS_FEED_BUFFER="8")
    async with (
        open_services(settings) as svc,
        serve_app(svc.app) as server,
        http_client(server) as http,
    ):
        fast_got: list[dict[str, Any]] = []
        # The slow subscriber reads its welcome, then nothing: with a small socket receive
        # buffer the server's sends to it soon block and its 8-event buffer fills.
        async with (
            open_feed(server.port, {"since": 0}) as fast,
            open_feed(server.port, {"since": 0}, receive_buffer=2048) as slow,
        ):

            async def read_fast(count: int) -> None:
                while len(fast_got) < count:
                    fast_got.append(await fast.event())

            pushed = 0
            with anyio.fail_after(40):
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(read_fast, 10**9)
                    while svc.hub.statistics().lagged == 0:
                        await push_blob(http, "busy", random_blob(64))
                        pushed += 1
                        assert pushed < 5000, "the stalled subscriber was never cut off"
                    # The registry and the fast subscriber carry on.
                    for _ in range(5):
                        await push_blob(http, "busy", random_blob(64))
                    total = last_event_id(svc)
                    assert total == pushed + 5
                    while True:
                        if len(fast_got) >= total:
                            break
                        await anyio.sleep(0.01)
                    nursery.cancel_scope.cancel()
            assert [e["id"] for e in fast_got] == list(range(1, total + 1))
            stats = svc.hub.statistics()
            assert (stats.subscribers, stats.lagged) == (1, 1)  # only the fast one is left

            # When the slow one reads again: events in order, then "lagged" with the id of
            # the last event it got, then close code 4008.
            close, before = await slow.closed(timeout=20)
            assert close.code == 4008
            got = [m["event"] for m in before[:-1]]
            assert all(m["type"] == "event" for m in before[:-1])
            assert [e["id"] for e in got] == list(range(1, len(got) + 1))
            assert len(got) < total
            last = got[-1]["id"]
            assert before[-1] == {"type": "lagged", "last_id": last}
            assert close.reason is not None and f"since={last}" in close.reason

        # Resuming with since=last gets the rest: nothing lost, nothing twice.
        async with open_feed(server.port, {"since": last}) as again:
            rest = await again.events(total - last)
            assert [e["id"] for e in rest] == list(range(last + 1, total + 1))
            assert got + rest == logged(svc)


# -- filters


def team_repos(e: dict[str, Any]) -> bool:
    return str(e["target"]["repository"]).startswith("team/")


def changes(e: dict[str, Any]) -> bool:
    return str(e["action"]) in ("push", "delete", "untag")


def oci_manifests(e: dict[str, Any]) -> bool:
    return bool(e["target"].get("mediaType") == OCI_MANIFEST)


def other_applications(e: dict[str, Any]) -> bool:
    media_type = str(e["target"].get("mediaType", ""))
    return e["target"]["repository"] == "other" and media_type.startswith("application/")


FILTERS: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
    ({"repository": "team/*"}, team_repos),
    ({"action": ["push,delete", "untag"]}, changes),
    ({"mediaType": OCI_MANIFEST}, oci_manifests),
    ({"repository": ["other", "nothing/*"], "mediaType": "application/*"}, other_applications),
]


@pytest.mark.parametrize("given_as", ["query", "message"])
async def test_filters(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient, given_as: str
) -> None:
    async def workload(tag: str) -> None:
        image = await push_image(http, "team/a", tag)
        await push_image(http, "other", tag)
        await push_blob(http, "team/b", random_blob(20))
        assert (await http.get(f"/v2/team/a/blobs/{digest_of(image.config)}")).status_code == 200
        assert (await http.get(f"/v2/other/manifests/{tag}")).status_code == 200
        assert (await http.delete(f"/v2/other/manifests/{tag}")).status_code == 202
        r = await http.delete(f"/v2/team/a/blobs/{digest_of(image.layers[0])}")
        assert r.status_code == 202

    per_workload = 4 + 4 + 1 + 2 + 2
    await workload("before")
    await wait_logged(services, per_workload)
    middle = last_event_id(services)

    def subscribe(params: dict[str, Any]) -> AbstractAsyncContextManager[Feed]:
        if given_as == "query":
            return open_feed(server.port, params)
        return open_feed(server.port, None, subscribe=params)

    async with (
        subscribe(FILTERS[0][0]) as team,
        subscribe(FILTERS[1][0]) as changed,
        subscribe(FILTERS[2][0]) as manifests,
        subscribe(FILTERS[3][0]) as other,
        subscribe({**FILTERS[0][0], "since": middle // 2}) as team_since,
    ):
        feeds = [team, changed, manifests, other]
        for feed, (params, _) in zip(feeds, FILTERS, strict=True):
            expected: dict[str, list[str]] = {"repository": [], "action": [], "mediaType": []}
            for key, value in params.items():
                values = value if isinstance(value, list) else [value]
                expected[key] = sorted(",".join(values).split(","))
            welcome_filter = {k: sorted(v) for k, v in feed.welcome["filter"].items()}
            assert welcome_filter == expected
        await workload("after")
        log = await wait_logged(services, 2 * per_workload)
        checks = [(f, wanted) for f, (_, wanted) in zip(feeds, FILTERS, strict=True)]
        for feed, wanted in [*checks, (team_since, team_repos)]:
            after = feed.welcome["since"]
            expected_events = [e for e in log if e["id"] > after and wanted(e)]
            assert expected_events, "the workload has events for every filter"
            assert await feed.events(len(expected_events)) == expected_events
            assert await feed.quiet(0.1) == []


@pytest.mark.parametrize(
    ("query", "message", "reason"),
    [
        ({"action": "fetch"}, None, "unknown action 'fetch'"),
        ({"since": "abc"}, None, "since must be an event id"),
        ({"since": "-1"}, None, "since must be an event id"),
        ({"since": "²"}, None, "since must be an event id"),
        ({"since": str(2**63)}, None, "since must be an event id"),
        ({"since": ["1", "2"]}, None, "since given more than once"),
        ({"repo": "team/*"}, None, "unknown parameter 'repo'"),
        (None, "not json", "JSON subscribe message"),
        (None, json.dumps({"type": "hello"}), '"type": "subscribe"'),
        (None, json.dumps({"type": "subscribe", "since": "5"}), "since must be an event id"),
        (None, json.dumps({"type": "subscribe", "since": -3}), "since must be an event id"),
        (None, json.dumps({"type": "subscribe", "since": 2**70}), "since must be an event id"),
        (None, json.dumps({"type": "subscribe", "since": True}), "since must be an event id"),
        (None, json.dumps({"type": "subscribe", "repository": 5}), "repository must be"),
        (None, json.dumps({"type": "subscribe", "action": ["pull", "x"]}), "unknown action"),
        (None, json.dumps({"type": "subscribe", "repo": "a"}), "unknown key 'repo'"),
    ],
)
async def test_bad_subscriptions_close_with_4400(
    services: Services,
    server: LoopbackServer,
    http: httpx.AsyncClient,
    query: dict[str, Any] | None,
    message: str | None,
    reason: str,
) -> None:
    async with open_feed(server.port, query, welcome=False) as feed:
        if message is not None:
            await feed.ws.send_message(message)
        close, before = await feed.closed()
    assert before == []
    assert close.code == 4400
    assert close.reason is not None and reason in close.reason, close.reason
    # Nothing was subscribed, and the feed still serves good subscriptions.
    assert services.hub.statistics().subscribers == 0
    async with open_feed(server.port, {"since": 0}) as feed:
        digest = await push_blob(http, "still", b"works")
        assert (await feed.event())["target"]["digest"] == digest


async def test_without_a_subscription_everything_after_a_short_wait(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    with anyio.fail_after(5):
        async with open_feed(server.port) as feed:
            assert feed.welcome["filter"] == {"repository": [], "action": [], "mediaType": []}
            digest = await push_blob(http, "any", b"thing")
            assert (await feed.event())["target"]["digest"] == digest


async def test_unknown_feed_path_is_refused(server: LoopbackServer) -> None:
    # Closed before the handshake is accepted: hypercorn answers the upgrade with 403.
    refused: list[trio_websocket.ConnectionRejected] = []
    try:
        async with open_feed(server.port, path="/v2/_dockyard/nope"):
            pass
    except* trio_websocket.ConnectionRejected as group:
        refused += [e for e in group.exceptions if isinstance(e, trio_websocket.ConnectionRejected)]
    assert [e.status_code for e in refused] == [403]


async def test_heartbeats_carry_the_last_id(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_EVENTS_HEARTBEAT="0.2")
    async with (
        open_services(settings) as svc,
        serve_app(svc.app) as server,
        http_client(server) as http,
    ):
        async with open_feed(server.port, {"action": "push"}) as feed:
            assert feed.welcome["heartbeat"] == 0.2
            assert await feed.message() == {"type": "heartbeat", "last_id": 0}
            await push_blob(http, "beat", b"one")
            event = await feed.event()
            assert event["id"] == 1
            while (doc := await feed.message())["type"] != "heartbeat":
                pass
            assert doc == {"type": "heartbeat", "last_id": 1}
        assert last_event_id(svc) == 1


async def test_feed_closes_cleanly_when_the_client_leaves(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    for _ in range(3):
        async with open_feed(server.port, {"since": 0}):
            await push_blob(http, "leave", random_blob(10))
    with anyio.fail_after(5):
        while True:
            if services.hub.statistics().subscribers == 0:
                break
            await anyio.sleep(0.01)


def test_the_user_documentation_covers_the_protocol() -> None:
    """docs/events.md names every action, subscription key, message type, close code
    and [events] setting the code has (it is the users' reference)."""
    doc = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    words = [
        *ACTIONS,
        *SUBSCRIPTION_KEYS,
        "welcome",
        "event",
        "heartbeat",
        "lagged",
        "subscribe",
        *(
            f.name
            for f in dataclasses.fields(EventsSettings)
            if not f.name.startswith("webhook")  # docs/webhooks.md
        ),
    ]
    for word in words:
        assert f"`{word}" in doc or f'"{word}"' in doc, word
    for code in (CLOSE_LAGGED, CLOSE_BAD_REQUEST, CLOSE_DENIED):
        assert f"| {code} |" in doc, code
    assert FEED_PATH in doc


async def test_feed_survives_a_failing_read_of_the_log(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    first = await push_blob(http, "sturdy", random_blob(10))
    async with open_feed(server.port, {"since": 0}) as feed:
        assert (await feed.event())["target"]["digest"] == first
        # The event log becomes unreadable for a while (a real SQLite error in the hub's
        # polls: "no such table"), then comes back.
        other = sqlite3.connect(services.settings.database_path, isolation_level=None)
        try:
            other.execute("ALTER TABLE events RENAME TO events_away")
            with anyio.fail_after(5):
                while True:
                    if services.hub.statistics().read_failures:
                        break
                    await anyio.sleep(0.01)
            other.execute("ALTER TABLE events_away RENAME TO events")
        finally:
            other.close()
        later = await push_blob(http, "sturdy", random_blob(10))
        assert (await feed.event())["target"]["digest"] == later


# -- dockyard events tail (in process; as a subprocess in tests/e2e/test_event_feed.py)


async def run_tail(tail: Tail, until: Callable[[], bool]) -> None:
    with anyio.fail_after(20):
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(tail.run)
            while True:
                if until():
                    break
                await anyio.sleep(0.01)
            nursery.cancel_scope.cancel()


@TAIL_ON_TRIO
async def test_tail_resumes_after_being_cut_off_as_lagged(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_EVENTS_FEED_BUFFER="8")
    async with (
        open_services(settings) as svc,
        serve_app(svc.app) as server,
        http_client(server) as http,
    ):
        printed: list[str] = []
        news: list[str] = []
        tail = Tail(TailOptions(server.url, json_output=True), printed.append, news.append)
        first = await push_blob(http, "t", b"before the tail")  # not printed: from now on

        async def burst() -> None:
            # Wait for the tail's subscription, then far more events at once than its
            # 8-event buffer holds (as another worker's batch of pull events would come).
            with anyio.fail_after(10):
                while True:
                    if svc.hub.statistics().subscribers:
                        break
                    await anyio.sleep(0.01)
            await svc.db.run(
                svc.meta.append_events,
                [Event("pull", "t", fake_digest(), OCTET, 5) for _ in range(1200)],
            )
            await push_blob(http, "t", b"after the burst")

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(burst)
            await run_tail(tail, lambda: len(printed) >= 1201)
        assert svc.hub.statistics().lagged >= 1
        assert any("4008" in line and "resuming after event" in line for line in news), news
        ids = [json.loads(line)["id"] for line in printed]
        assert ids == list(range(2, 1203))  # every event after the first, once, in order
        assert [json.loads(line) for line in printed] == logged(svc, after=1)
        assert json.loads(printed[-1])["target"]["digest"] == digest_of(b"after the burst")
        assert first == digest_of(b"before the tail")


@TAIL_ON_TRIO
async def test_tail_prints_readable_lines(
    services: Services, server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    image = await push_image(http, "team/app", "v1")
    printed: list[str] = []
    tail = Tail(
        TailOptions(server.url, since=0, event_filter=EventFilter(actions=frozenset({"push"}))),
        printed.append,
        lambda _: None,
    )
    await run_tail(tail, lambda: len(printed) >= 4)
    assert re.match(r"\S+  #1  push    blob      team/app@sha256:[0-9a-f]{64}  ", printed[0])
    line = printed[3]
    assert f"team/app:v1@{image.digest}" in line
    assert OCI_MANIFEST in line and f"{len(image.payload)} B" in line
    assert "by 127.0.0.1" in line
    assert TIMESTAMP.match(line)


@TAIL_ON_TRIO
async def test_tail_stops_when_the_subscription_is_refused(server: LoopbackServer) -> None:
    tail = Tail(
        TailOptions(server.url, event_filter=EventFilter(actions=frozenset({"fetch"}))),
        lambda _: None,
        lambda _: None,
    )
    with pytest.raises(FeedRejected) as refused, anyio.fail_after(10):
        await tail.run()
    assert refused.value.code == 4400
    assert "unknown action 'fetch'" in refused.value.reason


def test_tail_urls() -> None:
    assert feed_url("http://127.0.0.1:5000") == "ws://127.0.0.1:5000/v2/_dockyard/events"
    assert feed_url("https://reg.example/") == "wss://reg.example/v2/_dockyard/events"
    assert feed_url("localhost:5000") == "ws://localhost:5000/v2/_dockyard/events"
    assert feed_url("ws://h:1/v2/_dockyard/events") == "ws://h:1/v2/_dockyard/events"
    with pytest.raises(ValueError, match="not a registry URL"):
        feed_url("ftp://h/")
    assert default_url("0.0.0.0", 5000) == "ws://127.0.0.1:5000/v2/_dockyard/events"
    assert default_url("::", 5000) == "ws://[::1]:5000/v2/_dockyard/events"
    assert default_url("10.0.0.2", 80) == "ws://10.0.0.2:80/v2/_dockyard/events"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--action", "fetch"], "unknown action 'fetch'"),
        (["--since", "-1"], "--since must be an event id"),
        (["--url", "ftp://x/"], "not a registry URL"),
    ],
)
def test_tail_bad_arguments_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["events", "tail", *args]) == 2
    assert message in capsys.readouterr().err


async def test_a_lagged_subscription_is_told_at_once(services: Services) -> None:
    """Cut off, a subscriber hears so right after the last event it took: the events
    queued for it are dropped (it resumes after that id), not sent first at its pace."""

    def burst(n: int) -> list[Event]:
        return [Event("pull", "hub", fake_digest(), OCTET, 1) for _ in range(n)]

    async with services.hub.subscribe(EventFilter(), buffer=4) as sub:
        events = sub.events()
        taken: list[StoredEvent] = []

        async def take_one() -> None:
            taken.append(await events.__anext__())

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(take_one)
            with anyio.fail_after(5):
                while True:  # it has replayed (nothing) and is live
                    if services.hub.statistics().subscribers == 1:
                        break
                    await anyio.sleep(0.01)
            await services.db.run(services.meta.append_events, burst(1))
        await services.db.run(services.meta.append_events, burst(20))
        with anyio.fail_after(5):
            while True:
                if services.hub.statistics().lagged == 1:
                    break
                await anyio.sleep(0.01)
        with pytest.raises(SubscriberLagged) as lagged:
            await events.__anext__()
        assert lagged.value.last_id == taken[0].id == 1
        await events.aclose()


@TAIL_ON_TRIO
async def test_tail_stops_when_its_output_is_gone(
    server: LoopbackServer, http: httpx.AsyncClient
) -> None:
    # `dockyard events tail | head -1`: once head has gone, a write fails with EPIPE; the
    # tail must stop, not take it for a lost connection and reconnect forever.
    def out(line: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    await push_blob(http, "pipe", b"one")
    tail = Tail(TailOptions(server.url, since=0), out, lambda _: None)
    with pytest.raises(BrokenPipeError), anyio.fail_after(10):
        await tail.run()


async def test_from_now_on_means_after_every_committed_event(tmp_path: Path) -> None:
    # Another worker's event, committed but not yet seen by this worker's hub (it polls
    # every 5 s here): a subscriber asking for events from now on must not get it.
    settings = make_settings(tmp_path / "data", DOCKYARD_EVENTS_POLL_INTERVAL="5")
    async with open_services(settings) as svc, serve_app(svc.app) as server:
        other_worker = SQLiteMeta(svc.settings.database_path)
        try:
            other_worker.append_events([Event("pull", "elsewhere", fake_digest(), OCTET, 1)])
        finally:
            other_worker.close()
        assert svc.hub.statistics().cursor == 0
        async with open_feed(server.port, {"action": "pull"}) as feed:
            assert feed.welcome["since"] == 1
            assert await feed.quiet(0.3) == []
