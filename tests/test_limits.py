"""Token buckets with an injected clock, the failed-login limiter, and 429 from the app."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.auth.limits import Buckets, LoginLimiter, RateLimiter
from dockyard.config import ConfigError
from tests.conftest import assert_error, make_client, make_settings, open_services


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate() -> None:
    clock = Clock()
    buckets = Buckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [None, None, None]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") is None  # another key has its own bucket
    clock.now += 0.5
    assert buckets.take("a") is None
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 100  # refills to burst, no more
    assert [buckets.take("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_refused_requests_take_nothing() -> None:
    clock = Clock()
    buckets = Buckets(rate=1.0, burst=1, clock=clock)
    assert buckets.take("a") is None
    for _ in range(10):
        assert buckets.take("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert buckets.take("a") is None


def test_full_buckets_are_forgotten() -> None:
    clock = Clock()
    buckets = Buckets(rate=1.0, burst=2, clock=clock)
    for i in range(100):
        buckets.take(f"client{i}")
    assert len(buckets) == 100
    clock.now += 0.5  # each got half a token back; none is full yet
    buckets.take("another")
    assert len(buckets) == 101
    clock.now += 0.5  # now all but "another" are full again
    buckets.take("late")
    assert len(buckets) == 2


def test_bucket_count_is_bounded() -> None:
    clock = Clock()
    buckets = Buckets(rate=0.001, burst=5, clock=clock, max_buckets=10)
    for i in range(50):
        buckets.take(f"client{i}")
        assert len(buckets) <= 11
    # The most recent keys are the ones kept.
    assert buckets.wait("client49") is None and buckets.take("client49") is None
    assert len(buckets) <= 11


def test_rate_limiter_by_class() -> None:
    clock = Clock()
    limiter = RateLimiter({"push": Buckets(1.0, 1, clock)})
    assert limiter.take("push", "k") is None
    assert limiter.take("push", "k") == pytest.approx(1.0)
    assert all(limiter.take("pull", "k") is None for _ in range(100))


def test_login_limiter_per_address_and_user() -> None:
    clock = Clock()
    logins = LoginLimiter(rate=0.1, burst=3, user_rate=1.0, user_burst=10, clock=clock)
    assert logins.check("192.0.2.1", "alice") is None
    for _ in range(3):
        logins.failed("192.0.2.1", "alice")
    wait = logins.check("192.0.2.1", "alice")
    assert wait == pytest.approx(10.0)
    # The same user from elsewhere, and another user from the same address, may try.
    assert logins.check("198.51.100.1", "alice") is None
    assert logins.check("192.0.2.1", "bob") is None
    clock.now += 10.0
    assert logins.check("192.0.2.1", "alice") is None


def test_login_limiter_slows_a_spread_attack_without_locking_out() -> None:
    clock = Clock()
    logins = LoginLimiter(rate=0.1, burst=3, user_rate=1.0, user_burst=10, clock=clock)
    for i in range(10):  # ten addresses, one guess each
        address = f"203.0.113.{i}"
        assert logins.check(address, "alice") is None
        logins.failed(address, "alice")
    # The eleventh address waits, but only until one per-user token is back (1 s).
    wait = logins.check("198.51.100.1", "alice")
    assert wait is not None and 0 < wait <= 1.0
    clock.now += wait
    assert logins.check("198.51.100.1", "alice") is None


def test_rate_limit_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rate_limits\.push"):
        make_settings(
            tmp_path, DOCKYARD_RATE_LIMITS_PUSH_RATE="1", DOCKYARD_RATE_LIMITS_PUSH_BURST="0"
        )
    with pytest.raises(ConfigError, match=r"rate_limits\.login"):
        make_settings(tmp_path, DOCKYARD_RATE_LIMITS_LOGIN_USER_RATE="0")


async def test_app_answers_429_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data",
        DOCKYARD_RATE_LIMITS_PULL_RATE="0.25",
        DOCKYARD_RATE_LIMITS_PULL_BURST="2",
    )
    async with open_services(settings) as svc, make_client(svc) as client:
        for _ in range(2):
            assert_error(await client.get("/v2/lim/a/tags/list"), 404, "NAME_UNKNOWN")
        r = await client.get("/v2/lim/a/tags/list")
        assert_error(r, 429, "TOOMANYREQUESTS")
        assert r.headers["retry-after"] == "4"
        # Other classes are not limited.
        assert (await client.post("/v2/lim/a/blobs/uploads/")).status_code == 202
