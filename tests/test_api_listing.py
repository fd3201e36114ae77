"""Tag lists and the catalog: lexical order, n/last, Link pagination."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.authfixtures import client_logged_in, settings_with_and_without_auth  # noqa: F401
from tests.conftest import (
    assert_bare,
    assert_error,
    make_client,
    make_settings,
    open_services,
    parse_link,
    push_blob,
    push_image,
    put_manifest,
)

# Deliberately out of order, with digits, upper case, "_", "." and "-" (ASCII order).
TAGS = ["v1", "V2", "a", "_x", "10", "9", "latest", "B", "a.b", "a-b", "a_b", "Z"]


async def push_tags(client: httpx.AsyncClient, repo: str, tags: list[str]) -> None:
    image = await push_image(client, repo)
    for tag in tags:
        r = await put_manifest(client, repo, tag, image.payload)
        assert r.status_code == 201, r.text


async def walk(client: httpx.AsyncClient, url: str, key: str) -> tuple[list[list[str]], list[str]]:
    """Follow Link headers from ``url``; returns the pages and the Link URLs followed."""
    pages: list[list[str]] = []
    links: list[str] = []
    next_url: str | None = url
    while next_url is not None:
        r = await client.get(next_url)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        pages.append(r.json()[key])
        link = r.headers.get("link")
        next_url = parse_link(link) if link is not None else None
        if next_url is not None:
            links.append(next_url)
        assert len(pages) < 100, "pagination does not end"
    return pages, links


async def test_tags_list(client: httpx.AsyncClient) -> None:
    await push_tags(client, "lib/app", TAGS)
    r = await client.get("/v2/lib/app/tags/list")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert "link" not in r.headers
    assert r.json() == {"name": "lib/app", "tags": sorted(TAGS)}
    assert sorted(TAGS)[:4] == ["10", "9", "B", "V2"]  # byte order, as Go's sort.Strings


@pytest.mark.parametrize("n", [1, 3, 5, 6, 11])
async def test_tags_pagination(client: httpx.AsyncClient, n: int) -> None:
    await push_tags(client, "lib/app", TAGS)
    expected = sorted(TAGS)
    pages, links = await walk(client, f"/v2/lib/app/tags/list?n={n}", "tags")
    assert [t for page in pages for t in page] == expected
    assert all(len(page) == n for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= n
    for i, link in enumerate(links):
        parts = urlsplit(link)
        assert parts.path == "/v2/lib/app/tags/list"
        assert parse_qs(parts.query) == {"n": [str(n)], "last": [pages[i][-1]]}


async def test_tags_pagination_exact_multiple_has_no_dangling_link(
    client: httpx.AsyncClient,
) -> None:
    await push_tags(client, "repo", ["a", "b", "c", "d"])
    r = await client.get("/v2/repo/tags/list", params={"n": "2"})
    assert r.json()["tags"] == ["a", "b"]
    assert parse_link(r.headers["link"]) == "/v2/repo/tags/list?n=2&last=b"
    r = await client.get("/v2/repo/tags/list", params={"n": "2", "last": "b"})
    assert r.json()["tags"] == ["c", "d"]
    assert "link" not in r.headers


async def test_tags_last_and_n_zero(client: httpx.AsyncClient) -> None:
    await push_tags(client, "repo", TAGS)
    expected = sorted(TAGS)
    r = await client.get("/v2/repo/tags/list", params={"last": "B"})
    assert r.json() == {"name": "repo", "tags": expected[expected.index("B") + 1 :]}
    assert "link" not in r.headers
    # last need not be an existing tag: the list continues after it.
    r = await client.get("/v2/repo/tags/list", params={"last": "a0", "n": "2"})
    assert r.json()["tags"] == ["a_b", "latest"]
    r = await client.get("/v2/repo/tags/list", params={"last": "zzz"})
    assert r.json() == {"name": "repo", "tags": []}
    r = await client.get("/v2/repo/tags/list", params={"n": "0"})
    assert r.status_code == 200
    assert r.json() == {"name": "repo", "tags": []}
    assert "link" not in r.headers


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "0x10", "²", "١٢"])
async def test_tags_invalid_n(client: httpx.AsyncClient, n: str) -> None:
    await push_tags(client, "repo", ["a"])
    r = await client.get("/v2/repo/tags/list", params={"n": n})
    assert_bare(r, 400)
    assert_bare(await client.get("/v2/_catalog", params={"n": n}), 400)


@pytest.mark.parametrize("n", ["18446744073709551616", "9" * 5000])
async def test_huge_n_is_clamped_to_the_page_limit(client: httpx.AsyncClient, n: str) -> None:
    await push_tags(client, "repo", ["a", "b"])
    r = await client.get("/v2/repo/tags/list", params={"n": n})
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == ["a", "b"]
    r = await client.get("/v2/_catalog", params={"n": n})
    assert r.status_code == 200 and r.json()["repositories"] == ["repo"]


async def test_tags_of_repository_without_tags(client: httpx.AsyncClient) -> None:
    await push_blob(client, "blobs/only", b"data")
    r = await client.get("/v2/blobs/only/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": "blobs/only", "tags": []}


async def test_tags_after_deletes(client: httpx.AsyncClient) -> None:
    await push_tags(client, "repo", ["a", "b", "c"])
    assert (await client.delete("/v2/repo/manifests/b")).status_code == 202
    r = await client.get("/v2/repo/tags/list")
    assert r.json()["tags"] == ["a", "c"]


async def test_tags_unknown_repository(client: httpx.AsyncClient) -> None:
    await push_tags(client, "known", ["a"])
    assert_error(await client.get("/v2/unknown/tags/list"), 404, "NAME_UNKNOWN")
    assert_error(await client.get("/v2/known/sub/tags/list"), 404, "NAME_UNKNOWN")


async def test_tags_are_per_repository(client: httpx.AsyncClient) -> None:
    await push_tags(client, "one", ["a", "b"])
    await push_tags(client, "one/two", ["c"])
    assert (await client.get("/v2/one/tags/list")).json()["tags"] == ["a", "b"]
    assert (await client.get("/v2/one/two/tags/list")).json()["tags"] == ["c"]


async def test_page_size_default_and_maximum(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        DOCKYARD_LIMITS_DEFAULT_PAGE_SIZE="2",
        DOCKYARD_LIMITS_MAX_PAGE_SIZE="3",
    )
    async with open_services(settings) as svc, make_client(svc) as client:
        await push_tags(client, "repo", ["a", "b", "c", "d", "e"])
        r = await client.get("/v2/repo/tags/list")
        assert r.json()["tags"] == ["a", "b"]
        assert parse_link(r.headers["link"]) == "/v2/repo/tags/list?n=2&last=b"
        r = await client.get("/v2/repo/tags/list", params={"n": "1000"})
        assert r.json()["tags"] == ["a", "b", "c"]
        assert parse_link(r.headers["link"]) == "/v2/repo/tags/list?n=3&last=c"
        pages, _ = await walk(client, "/v2/repo/tags/list", "tags")
        assert pages == [["a", "b"], ["c", "d"], ["e"]]


# -- catalog

REPOS = ["zeta", "alpha/one", "alpha", "alpha/two/deep", "beta-1", "beta.2", "beta_3", "0numeric"]


async def test_catalog(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/_catalog")
    assert r.status_code == 200
    assert r.json() == {"repositories": []}
    assert "link" not in r.headers
    for repo in REPOS:
        await push_blob(client, repo, repo.encode())
    r = await client.get("/v2/_catalog")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"repositories": sorted(REPOS)}


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 50])
async def test_catalog_pagination(client: httpx.AsyncClient, n: int) -> None:
    for repo in REPOS:
        await push_blob(client, repo, repo.encode())
    pages, links = await walk(client, f"/v2/_catalog?n={n}", "repositories")
    assert [r for page in pages for r in page] == sorted(REPOS)
    assert all(len(page) == n for page in pages[:-1])
    for i, link in enumerate(links):
        parts = urlsplit(link)
        assert parts.path == "/v2/_catalog"
        assert parse_qs(parts.query) == {"n": [str(n)], "last": [pages[i][-1]]}


async def test_catalog_last_and_n_zero(client: httpx.AsyncClient) -> None:
    for repo in REPOS:
        await push_blob(client, repo, repo.encode())
    r = await client.get("/v2/_catalog", params={"last": "alpha/one"})
    assert r.json()["repositories"] == sorted(REPOS)[sorted(REPOS).index("alpha/one") + 1 :]
    r = await client.get("/v2/_catalog", params={"n": "0"})
    assert r.json() == {"repositories": []}
    assert "link" not in r.headers
