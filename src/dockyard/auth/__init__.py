"""Who is asking and what they may do.

Every route names the ``Scope`` it needs (``http/routing.py``) and asks one ``Authorizer``:
``AllowAll`` when ``auth.mode = "none"``, else ``authorizer.AccessAuthorizer`` built from the
users file (``htpasswd``), the ``[[access]]`` rules (``rules``) and, for ``mode = "token"``,
a bearer-token authenticator. Refusals are the exceptions below; the HTTP layer turns them
into 401 (with a challenge) and 403 answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

# Repository actions of the [[access]] rules (and token scopes).
ACCESS_ACTIONS = ("pull", "push", "delete", "admin", "metrics")
# "login": any authenticated caller (the /v2/ probe); "catalog": the registry's repository
# list; "public": nothing asked (health checks); the rest act on a repository, or with
# repository None on the registry (the dashboard's "admin", the Prometheus scrape's
# "metrics").
Action = Literal["pull", "push", "delete", "admin", "metrics", "catalog", "login", "public"]


@dataclass(frozen=True, slots=True)
class Scope:
    """``repository`` is None for registry-wide scopes (catalog, login, admin, metrics,
    public)."""

    action: Action
    repository: str | None = None

    def __str__(self) -> str:
        if self.repository is None:
            return f"registry:{self.action}:*"
        return f"repository:{self.repository}:{self.action}"


PUBLIC = Scope("public")
LOGIN = Scope("login")
CATALOG = Scope("catalog")
ADMIN = Scope("admin")
METRICS = Scope("metrics")


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller. ``name`` None is anonymous; ``method`` says how it was established
    ("anonymous", "basic", "token", "certificate"). ``granted`` is set for a bearer token:
    the actions it grants per repository name, which replace the rules for this caller;
    ``registry`` the registry-wide resources it grants ("catalog")."""

    name: str | None
    method: str = "anonymous"
    granted: tuple[tuple[str, frozenset[str]], ...] | None = None
    registry: frozenset[str] = frozenset()

    @property
    def anonymous(self) -> bool:
        return self.name is None


ANONYMOUS = Identity(None)

SharedSecret = Callable[[str, bytes], bytes]
"""``shared_secret(name, candidate)``: the bytes stored under ``name`` in the metadata store
every worker and instance shares, ``candidate`` stored first if there were none (the first
caller wins). The composition root passes ``MetadataStore.shared_secret``: auth does not
import meta. A blocking call, made once per process at start-up."""


@dataclass(frozen=True, slots=True)
class Caller:
    """What authentication and the checks see of a request."""

    headers: Mapping[str, str]  # by lower-case name
    client: str = ""  # the client's address


class AuthError(Exception):
    """The caller may not go on (subclasses say whether logging in could help)."""


class Unauthenticated(AuthError):
    """No or bad credentials where credentials would help: 401 with ``challenge``
    (the ``WWW-Authenticate`` value)."""

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge


class Forbidden(AuthError):
    """A known caller asked for what it may not do: 403."""


class Throttled(AuthError):
    """Too many failed logins from this address for this user: 429 after ``retry_after``
    seconds (auth/limits.py's LoginLimiter decides)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Check(Protocol):
    """One step run after authentication for every request (network lists, rate limits):
    returns normally or raises an ``AuthError`` (or a subclass of its own)."""

    async def __call__(self, caller: Caller, identity: Identity, scope: Scope) -> None: ...


class Authorizer(Protocol):
    async def authenticate(self, caller: Caller) -> Identity:
        """Who sent this request (raises ``Unauthenticated`` for bad credentials)."""
        ...

    async def authorize(self, caller: Caller, identity: Identity, scope: Scope) -> None:
        """Return if ``identity`` has ``scope``, else raise an ``AuthError``."""
        ...

    def may(self, identity: Identity, repository: str | None, action: str) -> bool:
        """Whether ``identity`` may do ``action`` on ``repository`` (None: on some
        repository): the cheap question filters ask per item (catalog, feed, mounts)."""
        ...

    def sees_everything(self, identity: Identity) -> bool:
        """Whether ``identity`` may pull every repository (filters can be skipped)."""
        ...


class AllowAll:
    """Everyone may do everything: ``auth.mode = "none"``."""

    async def authenticate(self, caller: Caller) -> Identity:
        return ANONYMOUS

    async def authorize(self, caller: Caller, identity: Identity, scope: Scope) -> None:
        return None

    def may(self, identity: Identity, repository: str | None, action: str) -> bool:
        return True

    def sees_everything(self, identity: Identity) -> bool:
        return True
