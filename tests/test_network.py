"""Client addresses behind trusted proxies, CIDR lists, and their use by the HTTP app."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dockyard.auth import Scope
from dockyard.auth.network import (
    NetworkPolicy,
    NetworkRules,
    ProxyTrust,
    forwarded_for,
    parse_address,
    parse_networks,
)
from dockyard.config import ConfigError, load
from dockyard.http.guard import action_class
from tests.conftest import BASE_URL, ASGITransport, assert_error, make_settings, open_services
from tests.feedclient import open_feed, serve_app

# -- parsing


def test_parse_networks_accepts_addresses_cidrs_and_host_bits() -> None:
    nets = parse_networks(["10.1.2.3/8", "192.0.2.7", "2001:db8::/32", " ::1 "])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128"]
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])
    with pytest.raises(ValueError):
        parse_networks(["example.com"])


def test_ipv4_mapped_ipv6_is_treated_as_ipv4() -> None:
    assert str(parse_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert parse_address("not an address") is None
    assert parse_address("") is None


def test_forwarded_header_forms() -> None:
    value = (
        'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711",'
        ' for=unknown, for=_hidden, for="198.51.100.2:8080", proto=https'
    )
    assert forwarded_for(value) == [
        "192.0.2.60",
        "2001:db8:cafe::17",
        None,
        None,
        "198.51.100.2",
        None,  # an element without for=
    ]
    # A comma inside a quoted value does not split elements.
    assert forwarded_for('for="10.0.0.1";ext="a,b", for=10.0.0.2') == ["10.0.0.1", "10.0.0.2"]


# -- the client address


PROXIES = ProxyTrust.from_cidrs(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    spoofed = {"x-forwarded-for": "1.1.1.1", "forwarded": "for=2.2.2.2"}
    assert PROXIES.client_address("203.0.113.9", spoofed) == "203.0.113.9"
    assert ProxyTrust().client_address("127.0.0.1", spoofed) == "127.0.0.1"


def test_trusted_peer_without_headers_is_the_client() -> None:
    assert PROXIES.client_address("127.0.0.1", {}) == "127.0.0.1"


def test_rightmost_untrusted_hop_of_x_forwarded_for() -> None:
    # The client wrote 6.6.6.6 itself; the proxy 10.0.0.5 appended the real 198.51.100.7.
    headers = {"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.0.0.5"}
    assert PROXIES.client_address("127.0.0.1", headers) == "198.51.100.7"


def test_forwarded_wins_over_x_forwarded_for() -> None:
    headers = {"forwarded": "for=198.51.100.8", "x-forwarded-for": "198.51.100.9"}
    assert PROXIES.client_address("10.1.1.1", headers) == "198.51.100.8"


def test_ipv6_hops_and_peers() -> None:
    headers = {"forwarded": 'for="[2001:db8::42]:5000", for="[fd00::1]"'}
    assert PROXIES.client_address("fd00::2", headers) == "2001:db8::42"
    assert PROXIES.client_address("::ffff:127.0.0.1", {"x-forwarded-for": "2001:db8::9"}) == (
        "2001:db8::9"
    )


def test_unnamed_hop_stops_at_the_last_vouched_address() -> None:
    # The proxy at 10.0.0.5 could not name its client: that proxy is the best we know.
    headers = {"x-forwarded-for": "198.51.100.7, garbage, 10.0.0.5"}
    assert PROXIES.client_address("127.0.0.1", headers) == "10.0.0.5"
    assert PROXIES.client_address("127.0.0.1", {"forwarded": "for=unknown"}) == "127.0.0.1"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    headers = {"x-forwarded-for": "10.0.0.1, 10.0.0.2"}
    assert PROXIES.client_address("127.0.0.1", headers) == "10.0.0.1"


# -- allow and deny lists


def test_deny_wins_and_empty_allow_allows_all() -> None:
    rules = NetworkRules.from_cidrs(allow=["10.0.0.0/8", "2001:db8::/32"], deny=["10.9.0.0/16"])
    assert rules.allows("10.1.2.3")
    assert not rules.allows("10.9.2.3")
    assert rules.allows("2001:db8::1")
    assert not rules.allows("2001:db9::1")
    assert not rules.allows("192.0.2.1")
    assert not rules.allows("")  # no address cannot be in an allow list
    open_rules = NetworkRules.from_cidrs(allow=[], deny=["192.0.2.0/24"])
    assert open_rules.allows("198.51.100.1") and open_rules.allows("")
    assert not open_rules.allows("::ffff:192.0.2.1")


def test_policy_by_action_class() -> None:
    policy = NetworkPolicy({"push": NetworkRules.from_cidrs(["127.0.0.0/8"], [])})
    assert policy.allows("push", "127.0.0.1")
    assert not policy.allows("push", "192.0.2.1")
    assert policy.allows("pull", "192.0.2.1")
    assert not policy.unrestricted


def test_action_classes_of_scopes() -> None:
    assert action_class(Scope("pull", "a")) == "pull"
    assert action_class(Scope("push", "a")) == "push"
    assert action_class(Scope("delete", "a")) == "delete"
    assert action_class(Scope("catalog")) == "pull"


def test_bad_cidrs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"network\.push\.deny: 'nope'"):
        make_settings(tmp_path, DOCKYARD_NETWORK_PUSH_DENY="10.0.0.0/8,nope")
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies"):
        make_settings(tmp_path, DOCKYARD_SERVER_TRUSTED_PROXIES="300.1.1.1")


# -- through the HTTP app


async def test_push_refused_outside_the_allow_list_via_trusted_proxy(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data",
        DOCKYARD_SERVER_TRUSTED_PROXIES="127.0.0.1",
        DOCKYARD_NETWORK_PUSH_ALLOW="192.0.2.0/24",
    )
    async with open_services(settings) as svc:
        app = svc.app
        proxy = httpx.AsyncClient(transport=ASGITransport(app), base_url=BASE_URL)
        outsider = httpx.AsyncClient(
            transport=ASGITransport(app, ("203.0.113.5", 4000)), base_url=BASE_URL
        )
        async with proxy, outsider:
            url = "/v2/net/a/blobs/uploads/"
            inside = {"x-forwarded-for": "192.0.2.10"}
            r = await proxy.post(url, headers=inside)
            assert r.status_code == 202, r.text
            r = await proxy.post(url, headers={"x-forwarded-for": "198.51.100.1"})
            error = assert_error(r, 403, "DENIED")
            assert "198.51.100.1" in error["message"]
            # A peer that is no proxy cannot borrow an allowed address.
            assert_error(await outsider.post(url, headers=inside), 403, "DENIED")
            # Pulls are not restricted.
            assert_error(await outsider.get("/v2/net/a/tags/list"), 404, "NAME_UNKNOWN")
            # Nothing was created by the refused requests.
            r = await proxy.get("/v2/_catalog")
            assert r.json() == {"repositories": []}


async def test_event_feed_refused_by_the_network_list(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_NETWORK_ADMIN_DENY="127.0.0.0/8")
    async with open_services(settings) as svc, serve_app(svc.app) as server:
        async with open_feed(server.port, {"since": 0}, welcome=False) as feed:
            close, before = await feed.closed()
        assert before == []
        assert close.code == 4403
        assert close.reason is not None and "admin is not allowed from 127.0.0.1" in close.reason
        assert svc.hub.statistics().subscribers == 0


def test_network_and_limits_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "dockyard.toml"
    path.write_text(
        "[server]\ntrusted_proxies = ['10.0.0.0/8']\n"
        "[network.delete]\nallow = ['192.0.2.0/24']\ndeny = ['192.0.2.9']\n"
        "[rate_limits.push]\nrate = 2\nburst = 10\n"
        "[rate_limits.login]\nuser_burst = 9\n"
    )
    settings = load(path, environ={"DOCKYARD_NETWORK_DELETE_DENY": "192.0.2.8, 192.0.2.7"})
    assert settings.server.trusted_proxies == ["10.0.0.0/8"]
    assert settings.network.delete.allow == ["192.0.2.0/24"]
    assert settings.network.delete.deny == ["192.0.2.8", "192.0.2.7"]  # the environment wins
    assert settings.network.pull.allow == []
    assert (settings.rate_limits.push.rate, settings.rate_limits.push.burst) == (2.0, 10)
    assert settings.rate_limits.login.user_burst == 9
    assert settings.rate_limits.login.burst == 5  # the default stays
    for text, message in (
        ("[network.pull]\nallow = '10.0.0.0/8'\n", r"network\.pull\.allow: expected a list"),
        ("[network.pull]\npermit = []\n", r"unknown key network\.pull\.permit"),
        ("[network]\npull = 5\n", r"network\.pull: expected a \[network\.pull\] table"),
        ("[rate_limits.pull]\nrate = 'fast'\n", r"rate_limits\.pull\.rate: expected float"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load(path, environ={})
