"""The built-in token service's issuing side: access tokens and refresh tokens.

An access token is a JWT as the distribution token spec has it (iss, sub, aud = the
service, exp, nbf, iat, jti, and ``access``: the granted resources). What it grants is
the intersection of what the client asked for and what the access rules allow the
identity (``grant``, the rules' answer for one resource; ``*`` asks for all of it);
nothing asked, nothing granted.

A refresh token (asked for with ``offline_token=true`` or ``access_type=offline``) is a
JWT signed with the same key but for another audience (``<service>#refresh``), so it can
never be used as an access token, nor an access token as a refresh token. Redeeming one
re-checks that its user still exists; the grant is computed afresh at every issue, so
rules changed since apply at once.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import jwt

from dockyard.auth import Identity
from dockyard.auth.keys import SigningKey
from dockyard.auth.scopes import ResourceScope

# What the access rules allow ``identity`` on one resource (of the actions it names).
Grant = Callable[[Identity, ResourceScope], frozenset[str]]
UserExists = Callable[[str], Awaitable[bool]]


class RefreshTokenInvalid(Exception):
    """A refresh token that is forged, expired, for another service or for a gone user."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    issued_at: int
    access: tuple[ResourceScope, ...]
    refresh_token: str | None


def refresh_audience(service: str) -> str:
    return f"{service}#refresh"


class TokenIssuer:
    def __init__(
        self,
        key: SigningKey,
        *,
        issuer: str,
        service: str,
        expiry: int,
        refresh_expiry: int,
        leeway: int,
        grant: Grant,
        user_exists: UserExists,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.issuer = issuer
        self.service = service
        self.expiry = expiry
        self.refresh_expiry = refresh_expiry
        self.leeway = leeway
        self._grant = grant
        self._user_exists = user_exists
        self._clock = clock

    def granted(
        self, identity: Identity, requested: Sequence[ResourceScope]
    ) -> tuple[ResourceScope, ...]:
        """The requested resources narrowed to what ``identity`` may do; empty ones dropped."""
        out: list[ResourceScope] = []
        for scope in requested:
            allowed = self._grant(identity, scope)
            # "*" asks for whatever is allowed (registry:catalog:* is granted as "*").
            actions = allowed if "*" in scope.actions else scope.actions & allowed
            if actions:
                out.append(scope.with_actions(actions))
        return tuple(out)

    def issue(
        self, identity: Identity, requested: Sequence[ResourceScope], offline: bool = False
    ) -> IssuedToken:
        """An access token for ``identity``; with ``offline`` (and a user) a refresh token."""
        now = int(self._clock())
        access = self.granted(identity, requested)
        claims = {
            "iss": self.issuer,
            "sub": identity.name or "",
            "aud": self.service,
            "exp": now + self.expiry,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "access": [scope.claim() for scope in access],
        }
        refresh = None
        if offline and identity.name is not None:
            refresh = self.refresh_token(identity.name, now)
        return IssuedToken(self._sign(claims), self.expiry, now, access, refresh)

    def refresh_token(self, user: str, now: int | None = None) -> str:
        now = int(self._clock()) if now is None else now
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": refresh_audience(self.service),
            "exp": now + self.refresh_expiry,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
        }
        return self._sign(claims)

    async def redeem(self, refresh_token: str) -> Identity:
        """The user a refresh token was issued to; raises RefreshTokenInvalid."""
        public = self.key.private.public_key()
        try:
            claims = jwt.decode(
                refresh_token,
                public,
                algorithms=[self.key.algorithm],
                audience=refresh_audience(self.service),
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as e:
            raise RefreshTokenInvalid(f"refresh token rejected: {e}") from None
        user = claims["sub"]
        if not isinstance(user, str) or not user:
            raise RefreshTokenInvalid("refresh token names no user")
        if not await self._user_exists(user):
            raise RefreshTokenInvalid(f"user {user!r} no longer exists")
        return Identity(user)

    def _sign(self, claims: dict[str, object]) -> str:
        headers = {"kid": self.key.kid, "typ": "JWT"}
        return jwt.encode(claims, self.key.private, algorithm=self.key.algorithm, headers=headers)
