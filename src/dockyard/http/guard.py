"""The network lists and rate limits every authorized request passes (``Guard.check``).

Built once from the settings (``build_guard``); ``Resource.authorize`` and the event feed
call ``check`` with the request's action class (``action_class``), after the caller is
authenticated (rate limits count per identity) and before the authorizer's own answer.
"""

from __future__ import annotations

from dockyard.auth import Identity, Scope
from dockyard.auth.limits import Buckets, LoginLimiter, RateLimiter
from dockyard.auth.network import NetworkPolicy, NetworkRules, ProxyTrust
from dockyard.config import Settings
from dockyard.config.model import ACTION_CLASSES
from dockyard.core import errors as err


def action_class(scope: Scope) -> str:
    """The class of a scope for network lists and rate limits.

    pull, push and delete are their own class; reading the catalog (and the event feed and
    statistics, which ask for it) counts as pull; an action named after a class (metrics,
    admin) is that class; anything else is admin, the most restricted.
    """
    action: str = scope.action
    if action in ACTION_CLASSES:
        return action
    if action == "catalog":
        return "pull"
    return "admin"


class Guard:
    def __init__(
        self,
        proxies: ProxyTrust,
        network: NetworkPolicy,
        limits: RateLimiter,
        logins: LoginLimiter,
    ) -> None:
        self.proxies = proxies
        self.network = network
        self.limits = limits
        self.logins = logins
        # Classes with neither a network list nor a rate limit: nothing to do per request
        # (parsing the client's address alone cost about 5 CPU-us, perf/profile_auth.py).
        self._open = frozenset(
            name
            for name in ACTION_CLASSES
            if not network.restricts(name) and not limits.limits(name)
        )

    def is_open(self, action: str) -> bool:
        """Whether ``action``'s class has neither a network list nor a rate limit."""
        return action in self._open

    def check(self, client: str, identity: Identity | None, action: str) -> None:
        """Raise ``Denied`` if ``client`` may not do ``action``, ``TooManyRequests`` if the
        caller (its identity, or its address when anonymous) is over the class's limit."""
        if action in self._open:
            return
        if not self.network.allows(action, client):
            raise err.Denied(f"{action} is not allowed from {client or 'this address'}")
        name = identity.name if identity is not None else None
        key = f"user:{name}" if name is not None else f"address:{client}"
        wait = self.limits.take(action, key)
        if wait is not None:
            raise err.TooManyRequests(f"too many {action} requests; retry later", wait)


def build_guard(settings: Settings) -> Guard:
    limits = settings.rate_limits
    buckets = {}
    for name in ACTION_CLASSES:
        limit = getattr(limits, name)
        if limit.rate > 0:
            buckets[name] = Buckets(limit.rate, limit.burst, max_buckets=limits.max_buckets)
    rules = {
        name: NetworkRules.from_cidrs(
            getattr(settings.network, name).allow, getattr(settings.network, name).deny
        )
        for name in ACTION_CLASSES
    }
    login = limits.login
    return Guard(
        ProxyTrust.from_cidrs(settings.server.trusted_proxies),
        NetworkPolicy(rules),
        RateLimiter(buckets),
        LoginLimiter(
            login.rate,
            login.burst,
            login.user_rate,
            login.user_burst,
            max_buckets=limits.max_buckets,
        ),
    )


def open_guard() -> Guard:
    """A guard that lets everything through (tests and apps built without settings)."""
    return build_guard(Settings())
