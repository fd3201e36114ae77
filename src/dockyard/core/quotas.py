"""Storage quotas: which quota applies to a repository, and the refusal a push gets.

``services.py`` builds ``Quotas`` from the ``[[quotas]]`` settings (core does not read
config). The first rule that matches a repository is its quota: a rule with globs limits
each matching repository on its own, a rule with a namespace limits all the namespace's
repositories together (``meta/usage.py`` says how bytes are counted). The metadata store
checks the limit in the transaction that links the blob or stores the manifest; the
uploads also ask before committing bytes, so a push that is over anyway stores nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dockyard.core.errors import Denied
from dockyard.globs import any_glob_matches
from dockyard.meta.usage import QuotaExceeded, QuotaScope


@dataclass(frozen=True, slots=True)
class QuotaRule:
    label: str  # how messages name it: "quotas[0]"
    max_bytes: int
    repositories: tuple[str, ...] = ()  # globs ("*" matches "/")
    namespace: str | None = None

    def matches(self, repository: str) -> bool:
        if self.namespace is not None:
            return repository == self.namespace or repository.startswith(self.namespace + "/")
        return any_glob_matches(repository, self.repositories)

    @property
    def scope_label(self) -> str:
        """A bounded metric label: the quota, not the repository."""
        return f"namespace:{self.namespace}" if self.namespace is not None else self.label


class QuotaRefused(Denied):
    """403 DENIED: the push would take a repository or namespace over its quota."""

    def __init__(self, refused: QuotaExceeded) -> None:
        scope = refused.scope
        super().__init__(
            str(refused),
            {
                "quota": scope.quota,
                "limit": scope.max_bytes,
                "usage": refused.usage,
                "requested": refused.adding,
            },
        )
        self.refused = refused


# Told the quota's metric label each time a push is refused.
OnRefused = Callable[[str], None]


class Quotas:
    def __init__(self, rules: Sequence[QuotaRule] = (), on_refused: OnRefused | None = None):
        self.rules = tuple(rules)
        self.on_refused = on_refused

    def rule_for(self, repository: str) -> QuotaRule | None:
        for rule in self.rules:
            if rule.matches(repository):
                return rule
        return None

    def scope_for(self, repository: str) -> QuotaScope | None:
        """What the store checks for a push into ``repository``; None: no quota."""
        rule = self.rule_for(repository)
        if rule is None:
            return None
        return QuotaScope(rule.label, rule.max_bytes, rule.namespace)

    def refused(self, repository: str, e: QuotaExceeded) -> QuotaRefused:
        """The error to raise for ``e``, counted."""
        if self.on_refused is not None:
            rule = self.rule_for(repository)
            self.on_refused(rule.scope_label if rule is not None else e.scope.quota)
        return QuotaRefused(e)


NO_QUOTAS = Quotas()
