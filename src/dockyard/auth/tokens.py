"""Token auth as one piece for the Authorizer: the verifier, the built-in issuer (if on)
and the challenge that sends clients to the token service.

The parts live beside this module: ``keys`` (signing key, kid, JWKS), ``issuer``
(access and refresh tokens), ``verifier`` and ``jwks`` (verifying, trusted keys),
``scopes`` (the scope grammar) and ``bearer`` (the challenge header).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dockyard.auth import Identity, Scope
from dockyard.auth.bearer import bearer_challenge, bearer_token
from dockyard.auth.issuer import Grant, TokenIssuer
from dockyard.auth.keys import SigningKey, jwks_document
from dockyard.auth.scopes import ResourceScope
from dockyard.auth.verifier import TokenInvalid, TokenVerifier, VerifiedToken

__all__ = ["TokenAuth", "TokenInvalid", "VerifiedToken", "rules_grant"]


def rules_grant(
    allowed_actions: Callable[[Identity, str], frozenset[str]],
    may_list_catalog: Callable[[Identity], bool],
) -> Grant:
    """The issuer's ``grant`` from the access rules' two answers: the actions allowed on a
    repository, and whether the catalog may be listed. Other resource types and classes
    (``repository(plugin)``) get nothing."""

    def grant(identity: Identity, scope: ResourceScope) -> frozenset[str]:
        if scope.type == "repository" and not scope.resource_class:
            return allowed_actions(identity, scope.name)
        if scope.type == "registry" and scope.name == "catalog" and may_list_catalog(identity):
            return frozenset({"*"})
        return frozenset()

    return grant


@dataclass
class TokenAuth:
    verifier: TokenVerifier
    # None when only an external issuer's tokens are accepted (auth.token.builtin = false).
    issuer: TokenIssuer | None
    realm: str
    service: str
    signing_key: SigningKey | None

    async def verify(self, token: str) -> VerifiedToken:
        """Raises TokenInvalid."""
        return await self.verifier.verify(token)

    async def from_headers(self, headers: Mapping[str, str]) -> VerifiedToken | None:
        """The request's bearer token, verified; None when it sent none (anonymous).
        Raises TokenInvalid for a bad one (answer 401 with ``error="invalid_token"``)."""
        token = bearer_token(headers.get("authorization"))
        return None if token is None else await self.verifier.verify(token)

    def challenge(self, scopes: Sequence[Scope] = (), error: str | None = None) -> str:
        """The ``WWW-Authenticate`` value of a 401 for a request needing ``scopes``."""
        return bearer_challenge(self.realm, self.service, scopes, error)

    def jwks(self) -> dict[str, Any]:
        return jwks_document([self.signing_key] if self.signing_key else [])
