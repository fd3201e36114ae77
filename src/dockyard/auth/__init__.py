"""Who is asking and what they may do.

Every route states the scope it needs and asks one ``Authorizer``. This issue ships
``AllowAll``; basic and token auth fill the same seam later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Action = Literal["pull", "push", "delete", "catalog"]


@dataclass(frozen=True, slots=True)
class Scope:
    """``repository`` is None for registry-wide scopes (catalog)."""

    action: Action
    repository: str | None = None

    def __str__(self) -> str:
        if self.repository is None:
            return "registry:catalog:*"
        return f"repository:{self.repository}:{self.action}"


@dataclass(frozen=True, slots=True)
class Identity:
    name: str | None  # None: anonymous


ANONYMOUS = Identity(None)


class Authorizer(Protocol):
    async def authenticate(self, headers: dict[str, str]) -> Identity:
        """Who sent these request headers (raises Denied for bad credentials)."""
        ...

    async def allowed(self, identity: Identity, scope: Scope) -> bool: ...


class AllowAll:
    """Everyone may do everything: the default until auth is configured."""

    async def authenticate(self, headers: dict[str, str]) -> Identity:
        return ANONYMOUS

    async def allowed(self, identity: Identity, scope: Scope) -> bool:
        return True
