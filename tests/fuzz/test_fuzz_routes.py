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
        params = {"digest": KNOWN}
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
KNOWN = digest_of(b"fuzz")
SEGMENT = st.text(max_size=60).map(lambda s: quote(s, safe="/:@")) | st.sampled_from(
    ["known", "a/b", "A", "a..b", "-x", "a" * 300, DIGEST, "sha256:", "sha512:00", "latest"]
)
BIG = st.integers(min_value=-(2**70), max_value=2**70).map(str)
# Digits int() or str.isdigit() take but no client means: superscripts, Arabic-Indic,
# Extended Arabic-Indic, full-width.
OTHER_DIGITS = "\u00b2\u00b3\u00b9\u0660\u0663\u0669\u06f0\u06f5\uff10\uff11\uff19"
DIGITS = st.text(alphabet="0123456789" + OTHER_DIGITS, min_size=1, max_size=12)
NUMBER = st.one_of(
    BIG,
    st.text(alphabet="0123456789-+ ,", max_size=30),
    # A sign or whitespace around digits of any script.
    st.builds(
        "{0}{1}{2}{0}".format,
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(["", "+", "-"]),
        DIGITS,
    ),
    # Thousands of digits (int() refuses more than 4300).
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
)
# Header values a client can send at all (httpx encodes them as ASCII).
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
RANGE = st.builds(lambda a, b: f"bytes={a}-{b}", NUMBER, NUMBER) | HEADER_TEXT
CONTENT_RANGE = st.builds(lambda a, b: f"{a}-{b}", NUMBER, NUMBER) | NUMBER


def raw_header(value: str) -> bytes:
    """The bytes a client sends: latin-1 where it can (the server decodes headers as
    latin-1, so "\u00b2" arrives as itself), UTF-8 for the rest."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


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
        SEGMENT | NUMBER,
        max_size=3,
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "range": RANGE,
            "content-range": CONTENT_RANGE,
            "content-length": NUMBER,
            "content-type": HEADER_TEXT,
            "accept": HEADER_TEXT,
        },
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
    raw = {name: raw_header(value) for name, value in headers.items()}
    check(app.request(method, url, params=params, headers=raw, content=content))


@given(
    st.sampled_from(["range", "content-range", "content-length", "post-length", "pages", "stats"]),
    NUMBER,
    NUMBER,
)
def test_numbers(app: App, where: str, a: str, b: str) -> None:
    """Every number a client gives, where the request gets far enough to read it."""
    if where == "range":
        headers = {"range": raw_header(f"bytes={a}-{b}")}
        check(app.request("GET", f"/v2/known/blobs/{KNOWN}", headers=headers))
    elif where in ("content-range", "content-length"):
        r = app.request("POST", "/v2/known/blobs/uploads/")
        assert r.status_code == 202, r.text
        value = f"{a}-{b}" if where == "content-range" else a
        headers = {where: raw_header(value)}
        check(app.request("PATCH", r.headers["location"], headers=headers, content=b"fuzz"))
    elif where == "post-length":
        headers = {"content-length": raw_header(a)}
        params = {"digest": KNOWN}
        url = "/v2/known/blobs/uploads/"
        check(app.request("POST", url, params=params, headers=headers, content=b"fuzz"))
    elif where == "pages":
        for url in ("/v2/known/tags/list", "/v2/_catalog", f"/v2/known/referrers/{KNOWN}"):
            check(app.request("GET", url, params={"n": a, "last": b}))
    else:
        params = {"window": a, "bucket": b, "repositories": a}
        check(app.request("GET", "/v2/_dockyard/stats", params=params))


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
