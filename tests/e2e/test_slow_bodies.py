"""Request bodies that arrive too slowly, against a real ``dockyard serve`` over raw sockets.

A body under ``server.min_body_rate`` (averaged over ``body_rate_window``) or one that
stalls for ``body_timeout`` gets 408 and its connection closed; the upload it was part of
stays where it was and can be finished. An honest slow client, and an event-feed
websocket that sends nothing, are left alone. See docs/security.md "The HTTP edge".
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.conftest import serving
from tests.feedclient import open_feed
from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e

RATE, WINDOW, IDLE = 2000, 2.0, 1.5


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    env = {
        "DOCKYARD_SERVER_MIN_BODY_RATE": str(RATE),
        "DOCKYARD_SERVER_BODY_RATE_WINDOW": str(WINDOW),
        "DOCKYARD_SERVER_BODY_TIMEOUT": str(IDLE),
    }
    root: Path = tmp_path_factory.mktemp("paced") / "data"
    yield from serving(DockyardServer(root, env=env))


def start_upload(server: DockyardServer, repo: str) -> str:
    r = httpx.post(f"{server.url}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    return r.headers["location"]


def trickle(
    server: DockyardServer, head: bytes, pieces: list[bytes], gap: float, then_wait: float = 10
) -> tuple[bytes, float]:
    """Send ``head``, then ``pieces`` ``gap`` seconds apart (stopping if the server closes),
    then read the answer; the answer and the seconds until the server closed."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)
        sock.settimeout(gap or 0.01)
        for piece in pieces:
            try:
                sock.sendall(piece)
                answer += sock.recv(65536)  # an early answer ends the trickle
                break
            except TimeoutError:
                continue  # nothing yet: the gap went by
            except OSError:
                break  # the server closed the connection under us
        sock.settimeout(then_wait)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, time.monotonic() - started


def patch_head(location: str, length: int) -> bytes:
    return (
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def assert_offset(server: DockyardServer, location: str, offset: int) -> None:
    r = httpx.get(f"{server.url}{location}")
    assert r.status_code == 204, r.text
    assert r.headers["range"] == f"0-{max(offset - 1, 0)}"


def finish(server: DockyardServer, location: str, before: bytes, rest: bytes) -> None:
    """The upload still works: it holds ``before``; send ``rest`` and close it."""
    digest = "sha256:" + hashlib.sha256(before + rest).hexdigest()
    r = httpx.put(f"{server.url}{location}", params={"digest": digest}, content=rest)
    assert r.status_code == 201, r.text
    assert httpx.get(f"{server.url}{r.headers['location']}").content == before + rest


def test_trickled_body_is_cut_off_and_the_upload_is_kept(paced: DockyardServer) -> None:
    """10 bytes every 0.2 s (50 bytes/s): each gap is short, the rate far too low."""
    first = b"a" * 1000
    location = start_upload(paced, "slow/trickle")
    r = httpx.patch(f"{paced.url}{location}", content=first)
    assert r.status_code == 202, r.text
    answer, took = trickle(paced, patch_head(location, 100_000), [b"b" * 10] * 100, gap=0.2)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert WINDOW <= took < WINDOW + 4, f"cut off after {took:.1f} s"
    assert_offset(paced, location, len(first))  # the trickled bytes are not in it
    finish(paced, location, first, b"the rest")
    assert "request body too slow" in paced.log()
    assert "under the minimum" in paced.log()


def test_stalled_body_is_cut_off(paced: DockyardServer) -> None:
    location = start_upload(paced, "slow/stall")
    answer, took = trickle(paced, patch_head(location, 1000) + b"x" * 100, [], gap=0)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert IDLE <= took < IDLE + 3, f"cut off after {took:.1f} s"
    assert_offset(paced, location, 0)
    assert f"no body bytes for {IDLE:g} s" in paced.log()
    finish(paced, location, b"", b"after the stall")


def test_whole_blob_post_trickled_is_cut_off(paced: DockyardServer) -> None:
    data = b"c" * 5000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    head = (
        f"POST /v2/slow/mono/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    answer, _ = trickle(paced, head, [data[i : i + 10] for i in range(0, 5000, 10)], gap=0.2)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert httpx.head(f"{paced.url}/v2/slow/mono/blobs/{digest}").status_code == 404


def test_slow_but_honest_body_is_served(paced: DockyardServer) -> None:
    """Twice the minimum rate for twice the window, in pieces under the idle limit."""
    data = b"d" * int(RATE * 2 * WINDOW * 2)
    pieces = [data[i : i + 800] for i in range(0, len(data), 800)]
    location = start_upload(paced, "slow/honest")
    answer, _ = trickle(paced, patch_head(location, len(data)), pieces, gap=0.2, then_wait=3)
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:200]
    assert_offset(paced, location, len(data))


async def test_quiet_feed_websocket_is_not_cut_off(paced: DockyardServer) -> None:
    """A feed subscriber sends nothing after subscribing; body limits do not apply."""
    async with open_feed(paced.port, {"repository": "slow/feed"}) as feed:
        await trio.sleep(IDLE + WINDOW + 0.5)
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"{paced.url}/v2/slow/feed/blobs/uploads/",
                params={"digest": "sha256:" + hashlib.sha256(b"feed").hexdigest()},
                content=b"feed",
            )
        assert r.status_code == 201, r.text
        event = await feed.event(timeout=10)
        assert event["target"]["repository"] == "slow/feed"
