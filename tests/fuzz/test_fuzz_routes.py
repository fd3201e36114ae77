"""Every route's inputs, fuzzed through the in-process ASGI app: never a 500, and every
4xx body carries only codes of the OCI spec's error-code table.

The app runs with its background tasks in a trio thread for the module (tests/fuzz/app.py);
hypothesis drives requests from the test thread (it cannot drive trio tests directly).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import OCI_ERROR_CODES, digest_of, make_settings
from tests.fuzz.app import App


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with App(make_settings(tmp_path_factory.mktemp("fuzz") / "data")) as running:
        # Something to find: a repository with a blob, so routes get past "unknown".
        params = {"digest": digest_of(b"fuzz")}
        r = running.request("POST", "/v2/known/blobs/uploads/", params=params, content=b"fuzz")
        assert r.status_code == 201, r.text
        yield running


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text)
    if r.status_code >= 400 and r.content and r.request.method != "HEAD":
        doc = json.loads(r.content)
        codes = {entry["code"] for entry in doc["errors"]}
        assert codes <= OCI_ERROR_CODES, (r.request.url, doc)


DIGEST = "sha256:" + "0" * 64
SEGMENT = st.text(max_size=60).map(lambda s: quote(s, safe="/:@")) | st.sampled_from(
    ["known", "a/b", "A", "a..b", "-x", "a" * 300, DIGEST, "sha256:", "sha512:00", "latest"]
)
BIG = st.integers(min_value=-(2**70), max_value=2**70).map(str)
NUMBER = BIG | st.text(alphabet="0123456789-+ ,", max_size=30)
# Header values a client can send at all (httpx encodes them as ASCII).
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
RANGE = st.builds(lambda a, b: f"bytes={a}-{b}", NUMBER, NUMBER) | HEADER_TEXT


@given(
    st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "PATCH", "POST"]),
    st.sampled_from(
        [
            "/v2/{n}/manifests/{r}",
            "/v2/{n}/blobs/{r}",
            "/v2/{n}/tags/list",
            "/v2/{n}/referrers/{r}",
            "/v2/{n}/blobs/uploads/",
            "/v2/{n}/blobs/uploads/{r}",
            "/v2/_catalog",
            "/v2/_dockyard/stats",
            "/{n}",
        ]
    ),
    SEGMENT,
    SEGMENT,
    st.dictionaries(
        st.sampled_from(["n", "last", "digest", "mount", "from", "tag", "artifactType", "window"]),
        SEGMENT | BIG,
        max_size=3,
    ),
    st.dictionaries(
        st.sampled_from(["range", "content-range", "content-type", "accept"]),
        RANGE | HEADER_TEXT,
        max_size=3,
    ),
    st.binary(max_size=200),
)
def test_routes(
    app: App,
    method: str,
    template: str,
    name: str,
    reference: str,
    params: dict[str, str],
    headers: dict[str, str],
    body: bytes,
) -> None:
    url = template.format(n=name, r=reference)
    content = body if method in ("PUT", "PATCH", "POST") else None
    check(app.request(method, url, params=params, headers=headers, content=content))


JSON_DOCS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=30,
)


@given(
    st.one_of(
        JSON_DOCS.map(lambda d: json.dumps(d).encode()),
        st.builds(
            lambda extra: json.dumps(
                {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
                | extra
            ).encode(),
            st.dictionaries(st.sampled_from(["config", "layers", "subject"]), JSON_DOCS),
        ),
        st.integers(min_value=1, max_value=200).map(lambda n: b"[" * n * 10 + b"]" * n * 10),
    ),
    st.sampled_from(
        [None, "application/vnd.oci.image.manifest.v1+json", "application/json", "x/y"]
    ),
)
def test_manifest_bodies(app: App, payload: bytes, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    check(app.request("PUT", "/v2/known/manifests/fuzz", headers=headers, content=payload))
