"""What a replication rule copies: repository globs, tag regular expressions, and which
push events of the log name an image to copy (push mode)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dockyard.config import ReplicationEndpoint, ReplicationRule
from dockyard.globs import any_glob_matches
from dockyard.meta.records import StoredEvent


@dataclass(frozen=True, slots=True)
class WantedImage:
    """An image a push event names: ``digest`` in ``repository``, under ``tags`` (none:
    a referrer of ``subject``, copied by digest)."""

    repository: str
    digest: str
    tags: tuple[str, ...]
    subject: str | None = None


def consumer_name(rule: ReplicationRule, target: ReplicationEndpoint) -> str:
    """The row of the shared consumer cursors (``webhook_cursors``) of a push target."""
    return f"replication:{rule.name}:{target.url.rstrip('/')}" + (
        f"/{target.prefix}" if target.prefix else ""
    )


CONSUMER_PREFIX = "replication:"


class RuleMatcher:
    def __init__(self, rule: ReplicationRule) -> None:
        self.rule = rule
        self.globs = tuple(rule.repositories)
        self.tag_patterns = tuple(re.compile(p) for p in rule.tags)

    def repository_matches(self, name: str) -> bool:
        return not self.globs or any_glob_matches(name, self.globs)

    def tag_matches(self, tag: str) -> bool:
        return not self.tag_patterns or any(p.fullmatch(tag) for p in self.tag_patterns)

    def wanted(self, event: StoredEvent) -> WantedImage | None:
        """What ``event`` asks this rule to copy: a tagged manifest push whose tag (any of
        its tags) matches -> the image under the matching tags; an untagged push with a
        subject (a referrer) -> it, by digest, when the rule copies referrers (and the
        target has its subject: the consumer checks, see push.py); anything
        else (deletes, blobs, an index's untagged children, which are copied with their
        index) -> None."""
        if event.action != "push" or not event.repository or not event.digest:
            return None
        target = event.body.get("target") or {}
        if target.get("kind") != "manifest" or not self.repository_matches(event.repository):
            return None
        tags = list(target.get("tags") or ([event.tag] if event.tag else []))
        if tags:
            matched = tuple(t for t in tags if self.tag_matches(t))
            if not matched:
                return None
            return WantedImage(event.repository, event.digest, matched)
        if target.get("subject") and self.rule.referrers:
            return WantedImage(event.repository, event.digest, (), str(target["subject"]))
        return None

    def wildcard_free(self) -> list[str] | None:
        """The globs as repository names when none has a wildcard (no catalog needed)."""
        if not self.globs or any(any(c in g for c in "*?[") for g in self.globs):
            return None
        return list(self.globs)
