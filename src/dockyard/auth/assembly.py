"""The authorizer of each ``auth.mode``, assembled from settings: the users file, the
``[[access]]`` rules and, for ``"token"``, the verifier (and built-in issuer) of bearer
tokens. The composition root (``services.py``) calls ``build_authorizer`` once per process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dockyard.auth import (
    AllowAll,
    Authorizer,
    Caller,
    Forbidden,
    Identity,
    Scope,
    SharedSecret,
    Unauthenticated,
)
from dockyard.auth.authorizer import AccessAuthorizer, basic_challenge
from dockyard.auth.bearer import INSUFFICIENT_SCOPE, INVALID_TOKEN
from dockyard.auth.htpasswd import Users
from dockyard.auth.issuer import Grant, TokenIssuer, UserExists
from dockyard.auth.jwks import KeyRing, jwks_source
from dockyard.auth.keys import certificate_keys, load_or_generate
from dockyard.auth.limits import LoginLimiter
from dockyard.auth.robots import ROBOT_PREFIX, RobotIdentity, RobotTokens
from dockyard.auth.rules import AccessRule, AccessRules
from dockyard.auth.scopes import ResourceScope
from dockyard.auth.tokens import TokenAuth, rules_grant
from dockyard.auth.verifier import TokenInvalid, TokenVerifier, load_roots
from dockyard.config import Settings


def build_authorizer(
    settings: Settings,
    shared_secret: SharedSecret,
    logins: LoginLimiter | None = None,
    robots: RobotTokens | None = None,
) -> Authorizer:
    """``AllowAll`` for ``auth.mode = "none"``, else the users file and the rules, and for
    ``"token"`` the bearer tokens of the built-in service or an external issuer
    (``shared_secret`` keeps the generated signing key, see ``keys.load_or_generate``).

    ``robots``: robot tokens (``robot$<name>`` users limited to their scopes), or None.

    Raises ``HtpasswdError`` if the users file is unusable (start-up stops)."""
    auth = settings.auth
    if auth.mode == "none":
        return AllowAll()
    rules = AccessRules(
        [AccessRule.of(r.users, r.repositories, r.actions) for r in settings.access]
    )
    users = Users(auth.htpasswd, auth.cache_seconds) if auth.htpasswd else None
    if auth.mode != "token":
        return AccessAuthorizer(
            rules,
            users=users,
            challenge=basic_challenge(auth.realm),
            logins=logins,
            robots=robots,
        )

    async def user_exists(user: str) -> bool:
        return users is not None and users.exists(user)

    by_rules = rules_grant(rules.allowed_actions, lambda i: rules.allows(i, None, "pull"))

    def grant(identity: Identity, scope: ResourceScope) -> frozenset[str]:
        # A robot's scopes are its rules: requested ∩ its scopes, nothing else.
        if isinstance(identity, RobotIdentity):
            return identity.grant(scope)
        return by_rules(identity, scope)

    tokens = build_token_auth(
        settings,
        grant=grant,
        user_exists=user_exists,
        shared_secret=shared_secret,
    )

    async def bearer(token: str) -> Identity:
        try:
            verified = await tokens.verify(token)
        except TokenInvalid as e:
            raise Unauthenticated(str(e), tokens.challenge(error=INVALID_TOKEN)) from None
        identity = verified.bearer
        name = identity.name or ""
        robot = robots is not None and tokens.issuer is not None and name.startswith(ROBOT_PREFIX)
        # A revoked or expired robot's tokens stop working too (within seconds).
        if robot and robots is not None and not await robots.active(name):
            message = f"{name} is revoked or expired"
            raise Unauthenticated(message, tokens.challenge(error=INVALID_TOKEN))
        return identity

    return TokenAccessAuthorizer(
        rules,
        users=users,
        challenge=lambda scope: tokens.challenge([scope]),
        bearer=bearer,
        logins=logins,
        tokens=tokens,
        robots=robots,
    )


class TokenAccessAuthorizer(AccessAuthorizer):
    """The rules with bearer tokens: a token without the scope asked for gets 401 with
    ``error="insufficient_scope"`` (not 403), so the client fetches one that has it, as
    distribution answers."""

    def __init__(self, *args: Any, tokens: TokenAuth, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens = tokens

    async def authorize(self, caller: Caller, identity: Identity, scope: Scope) -> None:
        try:
            await super().authorize(caller, identity, scope)
        except Forbidden:
            if identity.method != "token":
                raise
            # Not "alice may not push": the rules may allow it, only this token lacks it.
            missing = f"the token does not grant {scope.action} {scope.repository or ''}"
            raise Unauthenticated(
                missing.strip(), self.tokens.challenge([scope], INSUFFICIENT_SCOPE)
            ) from None


def build_token_auth(
    settings: Settings,
    *,
    grant: Grant,
    user_exists: UserExists,
    shared_secret: SharedSecret,
    clock: Callable[[], float] = time.time,
) -> TokenAuth:
    """The token verifier and, with ``auth.token.builtin``, the issuer, from settings.

    ``grant`` (what the access rules allow an identity on one resource) and
    ``user_exists`` come from the access rules and the users file; ``shared_secret`` keeps
    the generated signing key.
    """
    t = settings.auth.token
    key = None
    if t.builtin:
        key = load_or_generate(t.key, shared_secret, Path(settings.storage.root))
    roots = load_roots(t.root_certificates) if t.root_certificates else []
    static = certificate_keys(roots)
    if key is not None:
        static[key.kid] = key.private.public_key()
    ring = KeyRing(
        static,
        jwks_source(t.jwks, t.jwks_ca) if t.jwks else None,
        refresh=t.jwks_refresh,
        min_interval=t.jwks_min_interval,
    )
    verifier = TokenVerifier(
        issuer=t.issuer,
        audience=t.audience,
        algorithms=[*t.algorithms, *([key.algorithm] if key else [])],
        leeway=t.leeway,
        keys=ring,
        roots=roots or None,
        clock=clock,
    )
    issuer = None
    if key is not None:
        issuer = TokenIssuer(
            key,
            issuer=t.issuer,
            service=t.audience,
            expiry=t.expiry,
            refresh_expiry=t.refresh_expiry,
            leeway=t.leeway,
            grant=grant,
            user_exists=user_exists,
            clock=clock,
        )
    realm = t.realm or settings.base_url + t.path
    return TokenAuth(verifier, issuer, realm, t.audience, key)
