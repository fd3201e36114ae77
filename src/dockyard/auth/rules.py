"""``[[access]]`` rules: which users may do which actions on which repositories.

A rule names ``users`` (user names; ``"anonymous"`` for callers without credentials,
which covers every caller: logging in never takes a right away; ``"*"`` for any
authenticated user), ``repositories`` (globs in which ``*`` also matches
``/``, as in the event feed's filters) and ``actions`` (``pull``, ``push``, ``delete``,
``admin``, ``metrics``; ``"*"`` for all). A caller may do what any rule that names it
allows; what no rule allows is denied. Actions are independent: ``push`` does not imply
``pull``, ``admin`` (the dashboard, its statistics and the event feed) implies neither, and
``metrics`` (the Prometheus scrape, registry-wide like ``admin``) implies nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dockyard.auth import ACCESS_ACTIONS, Identity
from dockyard.globs import any_glob_matches

ANONYMOUS_USER = "anonymous"
ANY_USER = "*"


@dataclass(frozen=True)
class AccessRule:
    users: frozenset[str]
    repositories: tuple[str, ...]
    actions: frozenset[str]

    @classmethod
    def of(
        cls, users: Iterable[str], repositories: Iterable[str], actions: Iterable[str]
    ) -> AccessRule:
        wanted = set(actions)
        if "*" in wanted:
            wanted = set(ACCESS_ACTIONS)
        return cls(frozenset(users), tuple(repositories), frozenset(wanted))

    def names(self, identity: Identity) -> bool:
        if ANONYMOUS_USER in self.users:
            return True  # what anonymous callers may do, everybody may
        if identity.name is None:
            return False
        return ANY_USER in self.users or identity.name in self.users


# Answers of allowed_actions remembered per AccessRules; beyond this many, all are dropped.
ALLOWED_ENTRIES = 10_000


class AccessRules:
    """The rules of one configuration. They never change once built (the config file is
    read at start-up), so what they allow is remembered per (user name, repository) for
    as long as this object lives: every request asks, usually the same few questions."""

    def __init__(self, rules: Sequence[AccessRule]) -> None:
        self.rules = tuple(rules)
        self._allowed: dict[tuple[str | None, str], frozenset[str]] = {}

    def _rules_for(self, identity: Identity) -> list[AccessRule]:
        return [r for r in self.rules if r.names(identity)]

    def allowed_actions(self, identity: Identity, repository: str) -> frozenset[str]:
        """Every action some rule lets ``identity`` do on ``repository``."""
        # The rules see only the name (None: anonymous) of an identity (AccessRule.names).
        key = (identity.name, repository)
        cached = self._allowed.get(key)
        if cached is not None:
            return cached
        actions: set[str] = set()
        for rule in self._rules_for(identity):
            if any_glob_matches(repository, rule.repositories):
                actions |= rule.actions
        if len(self._allowed) >= ALLOWED_ENTRIES:
            self._allowed.clear()
        allowed = self._allowed[key] = frozenset(actions)
        return allowed

    def allows(self, identity: Identity, repository: str | None, action: str) -> bool:
        """Whether ``identity`` may do ``action`` on ``repository``; with None, on at
        least one repository (the registry-wide scopes: catalog, admin)."""
        if repository is not None:
            return action in self.allowed_actions(identity, repository)
        return any(action in rule.actions for rule in self._rules_for(identity))

    def covers_all(self, identity: Identity, action: str) -> bool:
        """Whether a rule lets ``identity`` do ``action`` on every repository (``*``)."""
        return any(action in r.actions and "*" in r.repositories for r in self._rules_for(identity))
