"""Authorization of a request: the one place the HTTP layer asks the Authorizer.

The router calls ``authorize`` with the scope its route table names for the route before
the handler runs; handlers that need a second scope (a mount's source) ask ``may``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from dockyard.auth import (
    AuthError,
    Authorizer,
    Caller,
    Forbidden,
    Identity,
    Scope,
    Throttled,
    Unauthenticated,
)
from dockyard.core import errors as err
from dockyard.http.guard import Guard, action_class, open_guard
from dockyard.http.request import Request


def caller_of(req: Request) -> Caller:
    return Caller(req.headers, req.client)


async def check(
    authorizer: Authorizer, caller: Caller, identity: Identity | None, scope: Scope
) -> Identity:
    """Authenticate (unless ``identity`` is known) and authorize; core errors on refusal."""
    try:
        if identity is None:
            identity = await authorizer.authenticate(caller)
        await authorizer.authorize(caller, identity, scope)
    except Unauthenticated as e:
        raise err.Unauthorized(str(e), e.challenge) from None
    except Forbidden as e:
        raise err.Denied(str(e)) from None
    except Throttled as e:
        raise err.TooManyRequests(str(e), e.retry_after) from None
    except AuthError as e:  # a check's own refusal without an answer of its own: 403
        raise err.Denied(str(e) or "denied") from None
    return identity


def pull_filter(authorizer: Authorizer, identity: Identity) -> Callable[[str], bool] | None:
    """What listings of many repositories show ``identity``: None when it may pull every
    repository (nothing to filter), else the test of a repository name. A token that
    grants the catalog lists what the rules let its holder pull (its repository grants
    name only the few repositories it was asked for)."""
    if "catalog" in identity.registry:
        identity = Identity(identity.name, identity.method)
    if authorizer.sees_everything(identity):
        return None
    return lambda repository: authorizer.may(identity, repository, "pull")


class Resource:
    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer
        # Network lists and rate limits; RegistryApp puts the configured one here.
        self.guard: Guard = open_guard()

    async def authorize(self, req: Request, scope: Scope) -> None:
        """Raise ``Unauthorized`` or ``Denied`` unless the caller (authenticated once per
        request) has ``scope``."""
        known = req.identity
        req.identity = await check(self.authorizer, caller_of(req), known, scope)
        self.guard.check(req.client, req.identity, action_class(scope))
        if known is None and req.identity.name is not None:
            # Events name who caused them (the actor of docs/events.md).
            req.info = dataclasses.replace(req.info, actor=req.identity.name)

    def pull_filter(self, req: Request) -> Callable[[str], bool] | None:
        """After ``authorize``: ``pull_filter`` of the caller."""
        assert req.identity is not None, "authorize first"
        return pull_filter(self.authorizer, req.identity)

    def may(self, req: Request, repository: str | None, action: str) -> bool:
        """After ``authorize``: whether the caller may also do ``action`` there."""
        assert req.identity is not None, "authorize first"
        return self.authorizer.may(req.identity, repository, action)
