"""Resource scopes of the distribution token protocol, and how they meet ``Scope``.

A scope string is ``type[(class)]:name:action[,action...]``, for example
``repository:team/app:pull,push``, ``repository(plugin):team/app:pull`` or
``registry:catalog:*``. Clients send several (repeated ``scope=`` parameters, or
space-separated in one value); a token's ``access`` claim lists the granted ones as
``{"type", "name", "actions"}`` objects. A malformed scope is ignored, as the reference
token server does: the client simply gets no access for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from dockyard.auth import Scope
from dockyard.oci.names import is_valid_name

_TYPE = re.compile(r"([a-z0-9]+)(?:\(([a-z0-9]+)\))?")
_ACTION = re.compile(r"[a-z]{1,32}|\*")
# A request asking for more than this many resources is refused, not served slowly.
MAX_SCOPES = 64


class TooManyScopes(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ResourceScope:
    type: str
    name: str
    actions: frozenset[str]
    resource_class: str = ""

    def __str__(self) -> str:
        kind = f"{self.type}({self.resource_class})" if self.resource_class else self.type
        return f"{kind}:{self.name}:{','.join(sorted(self.actions))}"

    def claim(self) -> dict[str, object]:
        """The entry of a token's ``access`` claim."""
        entry: dict[str, object] = {"type": self.type, "name": self.name}
        if self.resource_class:
            entry["class"] = self.resource_class
        entry["actions"] = sorted(self.actions)
        return entry

    def with_actions(self, actions: frozenset[str]) -> ResourceScope:
        return ResourceScope(self.type, self.name, actions, self.resource_class)


def parse_scope(text: str) -> ResourceScope | None:
    """One scope string; None when it is malformed."""
    kind, _, rest = text.partition(":")
    # The name may hold a host:port, so the actions are after the last colon.
    name, sep, actions_text = rest.rpartition(":")
    type_match = _TYPE.fullmatch(kind)
    if not sep or type_match is None or not name:
        return None
    actions = frozenset(actions_text.split(","))
    if not all(_ACTION.fullmatch(a) for a in actions):
        return None
    resource_type, resource_class = type_match[1], type_match[2] or ""
    if resource_type == "repository" and not is_valid_name(name):
        return None
    if resource_type == "registry" and name != "catalog":
        return None
    if len(name) > 512:
        return None
    return ResourceScope(resource_type, name, actions, resource_class)


def parse_scopes(values: Iterable[str]) -> list[ResourceScope]:
    """Every well-formed scope in ``values`` (each may hold several, space-separated), with
    the actions of repeated resources merged, in the order first asked."""
    merged: dict[tuple[str, str, str], frozenset[str]] = {}
    for value in values:
        for text in value.split():
            scope = parse_scope(text)
            if scope is None:
                continue
            key = (scope.type, scope.resource_class, scope.name)
            merged[key] = merged.get(key, frozenset()) | scope.actions
            if len(merged) > MAX_SCOPES:
                raise TooManyScopes(f"at most {MAX_SCOPES} resources per token")
    return [ResourceScope(t, n, a, c) for (t, c, n), a in merged.items()]


def parse_access_claim(claim: object) -> tuple[ResourceScope, ...] | None:
    """A token's ``access`` claim; None when it is not a list of well-formed entries."""
    if claim is None:
        return ()
    if not isinstance(claim, list):
        return None
    out: list[ResourceScope] = []
    for entry in claim:
        if not isinstance(entry, dict):
            return None
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        resource_class = entry.get("class", "")
        if not (isinstance(kind, str) and isinstance(name, str) and isinstance(actions, list)):
            return None
        if not all(isinstance(a, str) for a in actions) or not isinstance(resource_class, str):
            return None
        out.append(ResourceScope(kind, name, frozenset(actions), resource_class))
    return tuple(out)


def covers(access: Iterable[ResourceScope], scope: Scope) -> bool:
    """Does a token's granted ``access`` include the route's ``scope``?"""
    for granted in access:
        if "*" in granted.actions or scope.action in granted.actions:
            if scope.repository is None:
                if granted.type == "registry" and granted.name == "catalog":
                    return True
            elif granted.type == "repository" and granted.name == scope.repository:
                return True
    return False


def scope_string(scope: Scope) -> str | None:
    """What a client should ask the token service for to be allowed ``scope``; None for
    a scope no token names (the bare ``/v2/`` login probe asks for none).

    A push asks for ``pull,push`` as distribution does: clients pushing also read (blob
    existence checks, mounts), and one token then serves the whole push.
    """
    if scope.repository is None:
        return "registry:catalog:*" if scope.action == "catalog" else None
    actions = "pull,push" if scope.action == "push" else scope.action
    return f"repository:{scope.repository}:{actions}"
