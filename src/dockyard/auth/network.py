"""Client addresses: who the real client is behind trusted proxies, and CIDR allow/deny lists.

The real client address is the TCP peer, unless the peer is one of ``server.trusted_proxies``:
then it is the rightmost hop of ``Forwarded`` (RFC 7239), or else ``X-Forwarded-For``, that is
not itself a trusted proxy. Hops left of that one were written by the client (or by proxies
nobody vouches for) and are never believed, so a client cannot choose its own address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# One element's for= parameter: a token or a quoted string (RFC 7239 section 4).
_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)', re.IGNORECASE)


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or bare addresses) as networks; host bits set are tolerated (10.1.2.3/8)."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def parse_address(text: str) -> Address | None:
    """An IP address, IPv4-mapped IPv6 as IPv4; None for anything else."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: Address | None, networks: tuple[Network, ...]) -> bool:
    if address is None:
        return False
    # ``in`` across versions is simply False; no need to split the list by version.
    return any(address in network for network in networks)


def _node_address(node: str) -> str | None:
    """The address of a Forwarded node: 1.2.3.4, 1.2.3.4:80, "[2001:db8::1]:80"; None for
    "unknown", obfuscated names (_hidden) and anything malformed."""
    node = node.strip()
    if node.startswith('"') and node.endswith('"') and len(node) >= 2:
        node = node[1:-1].replace('\\"', '"')
    if node.startswith("["):
        end = node.find("]")
        return node[1:end] if end > 0 else None
    if node.count(":") == 1:  # IPv4 with a port
        node = node.split(":")[0]
    return node if parse_address(node) is not None else None


def forwarded_for(value: str) -> list[str | None]:
    """The for= node of each element of a Forwarded header, in order (None: not an address)."""
    hops: list[str | None] = []
    for element in _split_elements(value):
        match = _FOR.search(element)
        hops.append(_node_address(match[1]) if match else None)
    return hops


def _split_elements(value: str) -> list[str]:
    """Split on commas outside quoted strings."""
    elements: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append("".join(current))
            current = []
            continue
        current.append(char)
    elements.append("".join(current))
    return elements


def x_forwarded_for(value: str) -> list[str | None]:
    return [_node_address(hop) for hop in value.split(",")]


@dataclass(frozen=True)
class ProxyTrust:
    """Finds the real client address from the peer and the request headers."""

    trusted: tuple[Network, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> ProxyTrust:
        return cls(parse_networks(cidrs))

    def client_address(self, peer: str, headers: Mapping[str, str]) -> str:
        """``headers`` by lower-case name, repeated lines joined with ", "."""
        if not self.trusted or not in_networks(parse_address(peer), self.trusted):
            return peer
        if "forwarded" in headers:
            hops = forwarded_for(headers["forwarded"])
        elif "x-forwarded-for" in headers:
            hops = x_forwarded_for(headers["x-forwarded-for"])
        else:
            return peer
        client = peer
        for hop in reversed(hops):
            if hop is None:
                # A hop a trusted proxy could not name: the last address we can vouch for.
                return client
            client = str(parse_address(hop))
            if not in_networks(parse_address(hop), self.trusted):
                return client
        return client  # every hop is a trusted proxy: the leftmost is the best we know


@dataclass(frozen=True)
class NetworkRules:
    """Allow and deny lists of one action class: deny wins, an empty allow list allows all."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def from_cidrs(cls, allow: Iterable[str], deny: Iterable[str]) -> NetworkRules:
        return cls(parse_networks(allow), parse_networks(deny))

    def allows(self, client: str) -> bool:
        address = parse_address(client)
        if in_networks(address, self.deny):
            return False
        return not self.allow or in_networks(address, self.allow)


class NetworkPolicy:
    """``NetworkRules`` by action class (pull, push, delete, admin, metrics)."""

    def __init__(self, rules: Mapping[str, NetworkRules]) -> None:
        self._rules = dict(rules)

    def allows(self, action_class: str, client: str) -> bool:
        rules = self._rules.get(action_class)
        return rules is None or rules.allows(client)

    def restricts(self, action_class: str) -> bool:
        """Whether ``action_class`` has an allow or deny list (else ``allows`` is True)."""
        rules = self._rules.get(action_class)
        return rules is not None and bool(rules.allow or rules.deny)

    @property
    def unrestricted(self) -> bool:
        return not any(r.allow or r.deny for r in self._rules.values())
