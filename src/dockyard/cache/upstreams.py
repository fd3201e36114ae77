"""Which ``[[upstreams]]`` registry a repository belongs to, and containerd's ``ns=``.

Local repository ``<prefix>/<path>`` is the upstream's ``<path>`` (prefixes are validated
not to nest: ``config/validate_upstreams.py``). The namespace is what containerd sends
as ``?ns=`` when dockyard is its mirror for that registry: ``namespace`` when set, else
the url's ``host[:port]``, and ``docker.io`` for Docker Hub's ``registry-1.docker.io``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from dockyard.config import UpstreamSettings
from dockyard.upstream.client import RegistryClient

# Docker Hub's API host, and the name images on it go by.
DOCKER_HUB_HOSTS = ("registry-1.docker.io", "index.docker.io", "docker.io")
DOCKER_HUB = "docker.io"


def namespace_of(up: UpstreamSettings) -> str:
    if up.namespace:
        return up.namespace
    url = urlsplit(up.url)
    host = url.hostname or ""
    if host in DOCKER_HUB_HOSTS:
        return DOCKER_HUB
    return f"{host}:{url.port}" if url.port is not None else host


@dataclass(frozen=True, slots=True)
class Upstream:
    settings: UpstreamSettings
    client: RegistryClient

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def prefix(self) -> str:
        return self.settings.prefix


@dataclass(frozen=True, slots=True)
class Route:
    """A cached repository: its upstream and the upstream's name for it."""

    upstream: Upstream
    remote: str


class UpstreamMap:
    """The configured upstreams, looked up by local repository name or by namespace."""

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = list(upstreams)
        self._by_prefix = [(u.prefix + "/", u) for u in self.upstreams]
        self.namespaces = {namespace_of(u.settings): u.prefix for u in self.upstreams}

    def __bool__(self) -> bool:
        return bool(self.upstreams)

    def route(self, repository: str) -> Route | None:
        """The upstream ``repository`` is cached from, or None (an ordinary repository)."""
        for head, up in self._by_prefix:
            if repository.startswith(head):
                return Route(up, repository[len(head) :])
        return None

    def with_namespace(self, namespace: str, name: str) -> str:
        """``name`` as containerd asked for it with ``?ns=namespace``: under that
        upstream's prefix, or unchanged when no upstream has the namespace."""
        prefix = self.namespaces.get(namespace)
        return name if prefix is None else f"{prefix}/{name}"

    async def aclose(self) -> None:
        for up in self.upstreams:
            await up.client.aclose()
