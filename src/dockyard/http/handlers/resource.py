"""The base of the per-resource handler classes: the authorize step every route takes."""

from __future__ import annotations

from dockyard.auth import Authorizer, Scope
from dockyard.core import errors as err
from dockyard.http.guard import Guard, action_class, open_guard
from dockyard.http.request import Request


class Resource:
    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer
        # Network lists and rate limits; RegistryApp puts the configured one here.
        self.guard: Guard = open_guard()

    async def authorize(self, req: Request, scope: Scope) -> None:
        """Raise ``Denied`` unless the caller (authenticated once per request) has ``scope``."""
        if req.identity is None:
            req.identity = await self.authorizer.authenticate(req.headers)
        self.guard.check(req.client, req.identity, action_class(scope))
        if not await self.authorizer.allowed(req.identity, scope):
            raise err.Denied(f"access to {scope} denied")
