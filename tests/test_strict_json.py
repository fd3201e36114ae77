"""Client JSON (manifests, subscribe messages) that is deep, ambiguous or not JSON: a 4xx."""

from __future__ import annotations

import httpx
import pytest

from dockyard.events.feed import BadSubscription, parse_subscribe_message
from dockyard.oci import strictjson
from tests.conftest import assert_error, put_manifest

HOSTILE = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="past-recursion-limit"),
    pytest.param(b'{"a":' * 65 + b"1" + b"}" * 65, id="just-too-deep"),
    pytest.param(b'{"schemaVersion": 2, "schemaVersion": 2}', id="duplicate-key"),
    pytest.param(b'{"schemaVersion": NaN}', id="nan"),
    pytest.param(b'{"schemaVersion": 2', id="truncated"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_strict_loads_refuses(payload: bytes) -> None:
    with pytest.raises(strictjson.StrictJSONError):
        strictjson.loads(payload)


def test_strict_loads_keeps_plain_json() -> None:
    nested: object = 1
    for _ in range(strictjson.MAX_DEPTH):
        nested = [nested]
    assert strictjson.loads(str(nested)) == nested
    assert strictjson.loads('{"a": {"b": [1, 2.5, "x", null]}}') == {
        "a": {"b": [1, 2.5, "x", None]}
    }


@pytest.mark.parametrize("payload", HOSTILE)
async def test_hostile_manifest_is_manifest_invalid(
    client: httpx.AsyncClient, payload: bytes
) -> None:
    r = await put_manifest(client, "hostile", "v1", payload)
    assert_error(r, 400, "MANIFEST_INVALID")
    # Nothing changed: no tag, no repository.
    assert (await client.get("/v2/hostile/manifests/v1")).status_code == 404


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_subscribe_message_is_refused(payload: bytes) -> None:
    text = payload.decode("utf-8", "replace")
    with pytest.raises(BadSubscription):
        parse_subscribe_message(text)


def test_subscribe_with_duplicate_type_is_refused() -> None:
    with pytest.raises(BadSubscription, match="duplicate"):
        parse_subscribe_message('{"type": "subscribe", "type": "subscribe"}')
    assert parse_subscribe_message('{"type": "subscribe"}') is not None
