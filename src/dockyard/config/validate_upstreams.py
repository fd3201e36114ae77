"""Checks of the ``[[upstreams]]`` settings (the pull-through cache, docs/proxy.md)."""

from __future__ import annotations

import math
import os
from urllib.parse import urlsplit

from dockyard.config.model import ConfigError, UpstreamSettings
from dockyard.oci.names import is_valid_name


def validate_upstreams(upstreams: list[UpstreamSettings]) -> None:
    names: set[str] = set()
    prefixes: list[str] = []
    for i, up in enumerate(upstreams):
        key = f"upstreams[{i}]"
        if not up.name:
            raise ConfigError(f"{key}.name: every [[upstreams]] registry needs a name")
        if up.name in names:
            raise ConfigError(f"{key}.name: duplicate upstream name {up.name!r}")
        names.add(up.name)
        key = f"{key} ({up.name})"
        if not up.url:
            raise ConfigError(f"{key}.url: every [[upstreams]] registry needs a url")
        try:
            url = urlsplit(up.url)
            url.port  # noqa: B018 (raises ValueError for a port out of range)
        except ValueError:
            raise ConfigError(f"{key}.url: not a URL") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            # Not echoed back: it may carry credentials.
            raise ConfigError(f"{key}.url: must be an http:// or https:// URL with a host")
        if not up.prefix:
            raise ConfigError(
                f'{key}.prefix: every [[upstreams]] registry needs a prefix (e.g. "hub")'
            )
        if not is_valid_name(up.prefix):
            raise ConfigError(
                f"{key}.prefix: {up.prefix!r} is not a repository name path (lower-case"
                " components separated by '/', no leading or trailing slash)"
            )
        for other in prefixes:
            if up.prefix == other:
                raise ConfigError(f"{key}.prefix: duplicate prefix {up.prefix!r}")
            if up.prefix.startswith(other + "/") or other.startswith(up.prefix + "/"):
                raise ConfigError(
                    f"{key}.prefix: {up.prefix!r} and {other!r} are inside one another"
                )
        prefixes.append(up.prefix)
        if not (math.isfinite(up.tag_ttl) and up.tag_ttl >= 0):
            raise ConfigError(f"{key}.tag_ttl: must be 0 or more seconds")
        if not (math.isfinite(up.timeout) and up.timeout > 0):
            raise ConfigError(f"{key}.timeout: must be more than 0 seconds")
        if up.ca_bundle and not os.path.isfile(up.ca_bundle):
            raise ConfigError(f"{key}.ca_bundle: {up.ca_bundle!r} is not a file")
        if bool(up.username) != bool(up.password):
            raise ConfigError(f"{key}: username and password go together (both or neither)")
