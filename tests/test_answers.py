"""Manifest answers kept in memory (http/answers.py): given again only while the database
is unchanged, whoever changed it; the pull events of GETs still recorded; off wherever
something about the caller could change an answer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from dockyard.config import Settings
from dockyard.http.answers import Answer, AnswerCache
from dockyard.services import Services
from tests.authfixtures import ROOT_RULE, auth_settings
from tests.conftest import (
    OCI_MANIFEST,
    last_event_id,
    make_client,
    make_settings,
    open_services,
    push_image,
)
from tests.test_api_events import events_before_a_sentinel_pull


def kept(services: Services) -> AnswerCache:
    answers = services.app.answers
    assert answers is not None, "the default settings keep answers"
    return answers


async def test_an_answer_is_given_again_as_first_given(
    services: Services, client: httpx.AsyncClient
) -> None:
    image = await push_image(client, "app", "v1")
    first = await client.get("/v2/app/manifests/v1", headers={"accept": OCI_MANIFEST})
    hits = kept(services).hits
    again = await client.get("/v2/app/manifests/v1", headers={"accept": OCI_MANIFEST})
    assert kept(services).hits == hits + 1
    assert again.status_code == first.status_code == 200
    assert again.content == first.content == image.payload
    assert first.headers["x-request-id"] != again.headers["x-request-id"]
    strip = {"x-request-id", "date"}
    assert [h for h in again.headers.items() if h[0] not in strip] == [
        h for h in first.headers.items() if h[0] not in strip
    ]
    head = await client.head("/v2/app/manifests/v1", headers={"accept": OCI_MANIFEST})
    head_again = await client.head("/v2/app/manifests/v1", headers={"accept": OCI_MANIFEST})
    assert head_again.content == b""
    assert head_again.headers["content-length"] == str(len(image.payload))
    assert head_again.headers["docker-content-digest"] == head.headers["docker-content-digest"]


async def test_the_accept_header_is_part_of_the_question(
    services: Services, client: httpx.AsyncClient
) -> None:
    await push_image(client, "app", "v1")
    assert (await client.get("/v2/app/manifests/v1", headers={"accept": OCI_MANIFEST})).is_success
    # The same path asked by a client that does not take the manifest's type: 404, not the
    # answer kept for the other Accept header.
    refused = await client.get(
        "/v2/app/manifests/v1",
        headers={"accept": "application/vnd.docker.distribution.manifest.v1+json"},
    )
    assert refused.status_code == 404


async def test_a_push_elsewhere_is_seen_at_once(settings: Settings) -> None:
    """Two workers on one database: a tag moved by one is what the other answers next."""
    async with (
        open_services(settings) as one,
        open_services(settings) as two,
        make_client(one) as a,
        make_client(two) as b,
    ):
        old = await push_image(a, "app", "v1")
        for _ in range(2):  # the second from memory
            assert (await b.get("/v2/app/manifests/v1")).content == old.payload
        assert kept(two).hits >= 1
        new = await push_image(a, "app", "v1")
        assert new.digest != old.digest
        r = await b.get("/v2/app/manifests/v1")
        assert r.headers["docker-content-digest"] == new.digest
        assert r.content == new.payload


async def test_any_commit_to_the_database_forgets(
    services: Services, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Whatever commits (here a plain sqlite3 connection, as another process would), the
    next answer comes from the database."""
    await push_image(client, "app", "v1")
    for _ in range(2):
        assert (await client.get("/v2/app/manifests/v1")).status_code == 200
    other = sqlite3.connect(settings.database_path, isolation_level=None)
    try:
        other.execute("DELETE FROM tags WHERE name = 'v1'")
    finally:
        other.close()
    assert (await client.get("/v2/app/manifests/v1")).status_code == 404
    assert (await client.head("/v2/app/manifests/v1")).status_code == 404


async def test_gets_given_again_record_their_pulls(
    services: Services, client: httpx.AsyncClient
) -> None:
    image = await push_image(client, "app", "v1")
    after = last_event_id(services)
    hits = kept(services).hits
    for _ in range(5):
        r = await client.get("/v2/app/manifests/v1", headers={"user-agent": "tests/answers"})
        assert r.status_code == 200
    assert kept(services).hits > hits
    found = await events_before_a_sentinel_pull(services, client, after)
    assert [(e.action, e.digest, e.tag) for e in found] == [("pull", image.digest, "v1")] * 5
    assert {e.body["request"]["useragent"] for e in found} == {"tests/answers"}


async def test_no_answers_kept_where_the_caller_matters(tmp_path: Path) -> None:
    turned_off = make_settings(tmp_path / "off", DOCKYARD_SERVER_ANSWER_CACHE="false")
    with_auth = auth_settings(tmp_path / "auth" / "data", [ROOT_RULE])
    limited = make_settings(
        tmp_path / "limited",
        DOCKYARD_RATE_LIMITS_PULL_RATE="10",
        DOCKYARD_RATE_LIMITS_PULL_BURST="10",
    )
    for settings in (turned_off, with_auth, limited):
        async with open_services(settings) as svc:
            assert svc.app.answers is None


def answer(body: bytes) -> Answer:
    return Answer(200, [], body, "manifests", "app", "v1", None)


def test_an_answer_made_before_a_change_is_not_kept() -> None:
    marker = [1]
    cache = AnswerCache(lambda: marker[0])
    key = ("GET", "/v2/app/manifests/v1", b"", None)
    made_under = cache.marker()
    marker[0] = 2  # a commit while the answer was being made
    assert cache.marker() == 2
    cache.keep(key, made_under, answer(b"old"))
    assert cache.get(key) is None
    cache.keep(key, 2, answer(b"new"))
    got = cache.get(key)
    assert got is not None and got.body == b"new"
    marker[0] = 3
    assert cache.get(key) is None


def test_kept_answers_are_bounded() -> None:
    cache = AnswerCache(lambda: 1, max_answers=2, max_bytes=10)
    made_under = cache.marker()
    keys = [("GET", f"/v2/app/manifests/{n}", b"", None) for n in range(3)]
    for key in keys:
        cache.keep(key, made_under, answer(b"1234"))
    assert cache.get(keys[0]) is None  # the oldest made room
    assert cache.get(keys[1]) is not None and cache.get(keys[2]) is not None
    cache.keep(("GET", "/big", b"", None), made_under, answer(b"x" * 11))
    assert cache.get(("GET", "/big", b"", None)) is None
