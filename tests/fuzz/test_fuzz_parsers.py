"""Every parser of client input, fed random input: it answers or refuses, never crashes.

A refusal is the parser's own ValueError subclass (or a core RegistryError, which the
HTTP layer maps to a 4xx); anything else escaping is a bug (a 500 on the wire).
Bearer tokens and the token endpoint are fuzzed through the app in test_fuzz_tokens.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dockyard.auth.authorizer import parse_basic
from dockyard.auth.htpasswd import HtpasswdError, parse_htpasswd, valid_user_name
from dockyard.config import load
from dockyard.config.model import ConfigError
from dockyard.core.errors import RegistryError
from dockyard.events.feed import BadSubscription, parse_query, parse_subscribe_message
from dockyard.http.request import parse_content_range, parse_range
from dockyard.oci import strictjson
from dockyard.oci.digest import Digest, DigestError
from dockyard.oci.manifest import ManifestError, parse_manifest
from dockyard.oci.names import ReferenceError_, is_valid_name, parse_reference

BIG = st.integers(min_value=-(2**70), max_value=2**70)
NUMBERISH = st.one_of(BIG.map(str), st.text(alphabet="0123456789-+ ,*/=bytes", max_size=40))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | BIG | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@given(st.text(max_size=300))
def test_names(text: str) -> None:
    assert isinstance(is_valid_name(text), bool)


@given(st.text(max_size=200) | st.from_regex(r"sha(256|512):[0-9a-fA-F]{0,130}", fullmatch=True))
def test_digests_and_references(text: str) -> None:
    with contextlib.suppress(DigestError):
        Digest.parse(text)
    with contextlib.suppress(ReferenceError_, DigestError):
        parse_reference(text)


@given(st.builds(lambda a, b: f"bytes={a}-{b}", NUMBERISH, NUMBERISH) | NUMBERISH, BIG)
def test_range(value: str, size: int) -> None:
    try:
        parsed = parse_range(value, max(size, 0))
    except RegistryError:
        return
    if parsed is not None:
        start, length = parsed  # inside the blob, whatever the numbers asked for
        assert start >= 0 and length > 0 and start + length <= size


@given(st.builds(lambda a, b: f"{a}-{b}", NUMBERISH, NUMBERISH) | NUMBERISH | st.none())
def test_content_range(value: str | None) -> None:
    with contextlib.suppress(RegistryError):
        parse_content_range(value)


@given(
    JSON_VALUES.map(lambda doc: json.dumps(doc).encode()) | st.binary(max_size=300),
    st.sampled_from([None, "application/vnd.oci.image.manifest.v1+json", "text/plain"]),
)
def test_manifests(payload: bytes, content_type: str | None) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(payload, content_type)


@given(
    JSON_VALUES.map(json.dumps)
    | st.text(max_size=300)
    | st.builds(
        lambda d: json.dumps({"type": "subscribe", **d}),
        st.dictionaries(
            st.sampled_from(["repository", "action", "mediaType", "since", "x"]),
            JSON_VALUES,
            max_size=4,
        ),
    )
)
def test_subscribe_messages(text: str) -> None:
    with contextlib.suppress(BadSubscription):
        parse_subscribe_message(text)


@given(st.text(max_size=200))
def test_subscribe_queries(query: str) -> None:
    with contextlib.suppress(BadSubscription):
        parse_query(query)


@given(st.binary(max_size=2000))
def test_strict_json(data: bytes) -> None:
    with contextlib.suppress(strictjson.StrictJSONError):
        strictjson.loads(data)


TOML_SCALARS = st.one_of(
    BIG, st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


@given(
    st.dictionaries(
        st.sampled_from(["server", "storage", "limits", "events", "uploads", "auth", "tls", "x"]),
        st.dictionaries(st.from_regex(r"[a-z_]{1,20}", fullmatch=True), TOML_SCALARS, max_size=4),
        max_size=3,
    )
)
def test_config_loader(doc: dict[str, dict[str, object]]) -> None:
    text = "".join(
        f"[{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
        for section, values in doc.items()
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dockyard.toml"
        path.write_text(text)
        with contextlib.suppress(ConfigError):
            load(path, environ={})


HTPASSWD_LINE = st.text(max_size=120) | st.builds(
    lambda name, scheme, rest: f"{name}:{scheme}{rest}",
    st.text(max_size=20),
    st.sampled_from(["$2y$", "$2b$", "$2a$", "$apr1$", "{SHA}", "$5$", ""]),
    st.text(max_size=70),
)


@given(st.lists(HTPASSWD_LINE, max_size=6))
def test_htpasswd_files_parse_or_name_the_line(lines: list[str]) -> None:
    try:
        users = parse_htpasswd("\n".join(lines), "fuzz")
    except HtpasswdError as e:
        assert str(e).startswith("fuzz")
        return
    for name, hashed in users.items():
        assert valid_user_name(name) and hashed.startswith((b"$2y$", b"$2b$", b"$2a$"))


@given(st.text(max_size=200) | st.binary(max_size=150).map(lambda b: base64.b64encode(b).decode()))
def test_basic_credentials_parse_or_refuse(value: str) -> None:
    parsed = parse_basic(value)
    assert parsed is None or all(isinstance(part, str) for part in parsed)
