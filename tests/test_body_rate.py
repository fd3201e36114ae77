"""The pace checks on request bodies (http/bodyrate.py), on trio's virtual clock: a body
is late only for the time the app waits for it, by the rate over a window or by one wait."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dockyard.http.bodyrate import BodyPace, BodyTooSlow, PacedReceive
from dockyard.http.request import Message


class Client:
    """Sends body chunks into a channel the paced receive reads, on a schedule."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Message](100)

    async def trickle(self, size: int, gap: float, count: int) -> None:
        for _ in range(count):
            await trio.sleep(gap)
            await self.send.send({"type": "http.request", "body": b"x" * size, "more_body": True})


async def read_all(paced: PacedReceive, count: int) -> int:
    total = 0
    for _ in range(count):
        total += len((await paced())["body"])
    return total


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    """Trio only: its virtual clock jumps ahead whenever every task waits, so minutes of
    pacing take milliseconds (asyncio has no such clock; the code is the same on both)."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


@pytest.fixture
def clock(anyio_backend: tuple[str, dict[str, trio.testing.MockClock]]) -> trio.testing.MockClock:
    return anyio_backend[1]["clock"]


async def test_a_body_at_the_rate_is_never_cut(clock: trio.testing.MockClock) -> None:
    client = Client()
    paced = PacedReceive(client.receive.receive, BodyPace(min_rate=100, window=10, idle=5))
    async with trio.open_nursery() as nursery:
        # 110 bytes/s in pieces 4 s apart, for a minute: above the rate, under the idle.
        nursery.start_soon(client.trickle, 440, 4.0, 15)
        assert await read_all(paced, 15) == 440 * 15
    assert trio.current_time() >= 60


async def test_a_trickle_under_the_rate_is_cut_after_one_window(
    clock: trio.testing.MockClock,
) -> None:
    client = Client()
    paced = PacedReceive(client.receive.receive, BodyPace(min_rate=100, window=10, idle=5))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.trickle, 10, 1.0, 100)  # 10 bytes/s, never idle
        with pytest.raises(BodyTooSlow, match="under the minimum of 100 bytes/s over 10 s"):
            await read_all(paced, 100)
        nursery.cancel_scope.cancel()
    assert 10 <= trio.current_time() < 12  # 1000 bytes of credit, 90 bytes/s short
    assert paced.tripped


async def test_a_stall_is_cut_after_the_idle_limit(clock: trio.testing.MockClock) -> None:
    client = Client()
    paced = PacedReceive(client.receive.receive, BodyPace(min_rate=0, idle=5))
    await client.trickle(1000, 0, 1)
    assert len((await paced())["body"]) == 1000
    with pytest.raises(BodyTooSlow, match="no body bytes for 5 s"):
        await paced()
    assert trio.current_time() == pytest.approx(5)
    # Tripped: what is left is passed through unchecked (drained while the 408 goes out).
    await client.trickle(1, 60, 1)
    assert len((await paced())["body"]) == 1


async def test_a_burst_buys_at_most_one_window(clock: trio.testing.MockClock) -> None:
    """Bytes sent ahead count up to a window's worth: a megabyte and then silence is cut
    one window later, as any stop is."""
    client = Client()
    paced = PacedReceive(client.receive.receive, BodyPace(min_rate=100, window=10))
    await client.trickle(1_000_000, 0, 1)
    await paced()
    with pytest.raises(BodyTooSlow):
        await paced()
    assert trio.current_time() == pytest.approx(10)


async def test_time_the_app_is_busy_does_not_count(clock: trio.testing.MockClock) -> None:
    client = Client()
    paced = PacedReceive(client.receive.receive, BodyPace(min_rate=100, window=10, idle=5))
    await client.trickle(100, 0, 20)  # all there at once
    for _ in range(20):
        await paced()
        await trio.sleep(30)  # writing to slow storage between chunks: not the client's fault
    assert trio.current_time() >= 600


async def test_off_is_off(clock: trio.testing.MockClock) -> None:
    client = Client()
    paced = PacedReceive(client.receive.receive, BodyPace(min_rate=0, idle=0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.trickle, 1, 3600.0, 2)
        assert await read_all(paced, 2) == 2
