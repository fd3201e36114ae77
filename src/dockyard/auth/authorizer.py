"""The one Authorizer of ``auth.mode = "basic"`` and ``"token"``.

``authenticate`` turns the ``Authorization`` header into an ``Identity``: ``Basic``
credentials checked against the users file, ``Bearer`` tokens handed to the token part's
authenticator (``bearer``), nothing at all is anonymous. A malformed or wrong credential
is refused (401), never taken for anonymous.

``authorize`` runs the ``checks`` (network lists, rate limits: each raises to refuse) and
then asks the rules, or a token's own grants. A refusal of an anonymous caller is a 401
with the challenge, so clients log in and retry; of a known caller a 403.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence

from dockyard.auth import (
    Caller,
    Check,
    Forbidden,
    Identity,
    Scope,
    Throttled,
    Unauthenticated,
)
from dockyard.auth.htpasswd import Users
from dockyard.auth.limits import LoginLimiter
from dockyard.auth.robots import ROBOT_PREFIX, RobotIdentity, RobotTokens
from dockyard.auth.rules import AccessRules

# Longest Authorization header looked at; anything longer is refused unparsed.
MAX_AUTHORIZATION = 8192

# The token part's: a bearer token -> its Identity (raise Unauthenticated if invalid).
BearerAuthenticator = Callable[[str], Awaitable[Identity]]
# The challenge a refused request gets, for the scope it asked.
Challenge = Callable[[Scope], str]


def basic_challenge(realm: str) -> Challenge:
    quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
    value = f'Basic realm="{quoted}", charset="UTF-8"'
    return lambda scope: value


def parse_basic(value: str) -> tuple[str, str] | None:
    """(user, password) of a ``Basic`` credential; None if it is malformed. ``:`` (both
    empty) parses as ("", "")."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon or (not user and password):
        return None
    return user, password


class AccessAuthorizer:
    def __init__(
        self,
        rules: AccessRules,
        *,
        users: Users | None,
        challenge: Challenge,
        bearer: BearerAuthenticator | None = None,
        checks: Sequence[Check] = (),
        logins: LoginLimiter | None = None,
        robots: RobotTokens | None = None,
    ) -> None:
        self.rules = rules
        # Robot tokens (auth/robots.py): "robot$<name>" users, limited to their scopes.
        self.robots = robots
        # Failed logins per (address, user) and per user: password guessing gets 429.
        self.logins = logins
        self.users = users
        self.challenge = challenge
        self.bearer = bearer
        # Run for every request after authentication, before the rules (the seam for
        # network allow/deny lists and rate limits).
        self.checks = list(checks)

    def _refuse(self, message: str, scope: Scope) -> Unauthenticated:
        return Unauthenticated(message, self.challenge(scope))

    async def authenticate(self, caller: Caller) -> Identity:
        header = caller.headers.get("authorization")
        if header is None:
            return Identity(None)
        if len(header) > MAX_AUTHORIZATION:
            raise self._refuse("Authorization header too long", Scope("login"))
        scheme, _, credentials = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and (self.users is not None or self.robots is not None):
            parsed = parse_basic(credentials)
            if parsed is None:
                raise self._refuse("malformed Basic credentials", Scope("login"))
            user, password = parsed
            if not user:
                # Empty credentials (":"): what containers/image (skopeo, podman) sends
                # after a Basic challenge when it has none. They mean anonymous.
                return Identity(None)
            if self.logins is not None:
                wait = self.logins.check(caller.client, user)
                if wait is not None:
                    raise Throttled("too many failed logins; retry later", wait)
            if self.robots is not None and user.startswith(ROBOT_PREFIX):
                robot = await self.robots.authenticate(user, password)
                if robot is not None:
                    return robot
            elif self.users is not None and await self.users.verify(user, password):
                return Identity(user, "basic")
            if self.logins is not None:
                self.logins.failed(caller.client, user)
            raise self._refuse("wrong user name or password", Scope("login"))
        if scheme == "bearer" and self.bearer is not None:
            return await self.bearer(credentials.strip())
        raise self._refuse(f"unsupported authorization scheme {scheme[:20]!r}", Scope("login"))

    async def authorize(self, caller: Caller, identity: Identity, scope: Scope) -> None:
        for check in self.checks:
            await check(caller, identity, scope)
        if scope.action == "public":
            return
        if scope.action == "login":
            allowed = not identity.anonymous
        elif scope.action == "catalog":
            # A token needs the registry:catalog:* grant; other callers may list when
            # there is something they may pull.
            if identity.granted is not None:
                allowed = "catalog" in identity.registry
            else:
                allowed = self.may(identity, None, "pull")
        else:
            allowed = self.may(identity, scope.repository, scope.action)
        if allowed:
            return
        if identity.anonymous:
            raise self._refuse("authentication required", scope)
        raise Forbidden(f"{identity.name} may not {scope.action} {scope.repository or ''}".strip())

    def may(self, identity: Identity, repository: str | None, action: str) -> bool:
        if isinstance(identity, RobotIdentity):
            return identity.may(repository, action)  # its scopes, never the rules
        if identity.granted is not None:
            # A token's access claim names repositories, never globs (distribution's
            # token spec): an external issuer's "team/*" or "*" grants nothing.
            return any(
                action in actions and (repository is None or repository == name)
                for name, actions in identity.granted
            )
        return self.rules.allows(identity, repository, action)

    def sees_everything(self, identity: Identity) -> bool:
        if isinstance(identity, RobotIdentity):
            return False  # filters ask its scopes per repository
        if identity.granted is not None:
            return False  # a token names each repository it grants
        return self.rules.covers_all(identity, "pull")
