"""The event schema and its three renderings, plus subscriber filters.

One JSON shape for every event (``native``), documented in ``docs/events.md``::

    {"id": 17, "timestamp": "2026-11-28T07:46:45.626123Z", "action": "push",
     "target": {"kind": "manifest", "repository": "team/app", "digest": "sha256:...",
                "mediaType": "...", "size": 527, "tag": "v1", "tags": ["v1"],
                "artifactType": "...", "subject": "sha256:...", "from": "other/repo"},
     "request": {"id": "...", "addr": "127.0.0.1", "useragent": "skopeo/1.9", "method": "PUT"},
     "actor": {"name": "alice"},
     "source": {"instance": "registry-1"}}

``id`` is the event log's monotonic id: the resume cursor of every reader. Absent target
fields are omitted; ``actor.name`` is null until auth identifies callers.

``distribution_envelope`` renders events as CNCF Distribution's notification envelope
(``application/vnd.docker.distribution.events.v2+json``) so existing webhook consumers work
unchanged; ``cloudevent`` renders one event as a CloudEvents 1.0 structured JSON event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dockyard.actions import ACTIONS
from dockyard.globs import any_glob_matches
from dockyard.meta.records import StoredEvent

DISTRIBUTION_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
CLOUDEVENTS_MEDIA_TYPE = "application/cloudevents+json"


def timestamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def native(e: StoredEvent) -> dict[str, Any]:
    body = e.body
    target: dict[str, Any] = {"repository": e.repository}
    if e.digest is not None:
        target["digest"] = e.digest
    if e.media_type is not None:
        target["mediaType"] = e.media_type
    if e.size is not None:
        target["size"] = e.size
    if e.tag is not None:
        target["tag"] = e.tag
    target.update(body.get("target", {}))
    return {
        "id": e.id,
        "timestamp": timestamp(e.ts),
        "action": e.action,
        "target": target,
        "request": body.get("request", {}),
        "actor": {"name": body.get("actor", {}).get("name")},
        "source": body.get("source", {}),
    }


def _distribution_event(e: StoredEvent, base_url: str) -> dict[str, Any]:
    n = native(e)
    t = n["target"]
    target: dict[str, Any] = {
        "mediaType": t.get("mediaType", ""),
        "size": t.get("size", 0),
        "digest": t.get("digest", ""),
        "length": t.get("size", 0),
        "repository": t["repository"],
    }
    if t.get("digest"):
        kind = "manifests" if t.get("kind") == "manifest" else "blobs"
        target["url"] = f"{base_url}/v2/{t['repository']}/{kind}/{t['digest']}"
    if t.get("tag"):
        target["tag"] = t["tag"]
    # Distribution has no "untag"; its tag deletions are "delete" events carrying the tag.
    action = "delete" if e.action == "untag" else e.action
    request = n["request"]
    return {
        "id": str(e.id),
        "timestamp": n["timestamp"],
        "action": action,
        "target": target,
        "request": {
            "id": request.get("id", ""),
            "addr": request.get("addr", ""),
            "host": base_url.split("://", 1)[-1],
            "method": request.get("method", ""),
            "useragent": request.get("useragent", ""),
        },
        "actor": {"name": n["actor"]["name"] or ""},
        "source": {
            "addr": base_url.split("://", 1)[-1],
            "instanceID": n["source"].get("instance", ""),
        },
    }


def distribution_envelope(events: Iterable[StoredEvent], base_url: str) -> dict[str, Any]:
    """CNCF Distribution's notification envelope: ``{"events": [...]}``."""
    return {"events": [_distribution_event(e, base_url) for e in events]}


def cloudevent(e: StoredEvent) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode event whose data is the native event."""
    n = native(e)
    subject = n["target"]["repository"]
    if n["target"].get("digest"):
        subject += "@" + n["target"]["digest"]
    return {
        "specversion": "1.0",
        "id": str(e.id),
        "source": f"dockyard/{n['source'].get('instance', '')}",
        "type": f"io.dockyard.{e.action}",
        "time": n["timestamp"],
        "subject": subject,
        "datacontenttype": "application/json",
        "data": n,
    }


class FilterError(ValueError):
    """A subscriber filter names an unknown action or is malformed."""


def _split(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscriber wants. Empty lists match everything.

    ``repositories`` are shell-style globs (``team/*``, ``*/base``); ``actions`` are
    event actions; ``media_types`` are exact media types or ``type/*`` wildcards.
    """

    repositories: tuple[str, ...] = ()
    actions: frozenset[str] = field(default_factory=frozenset)
    media_types: tuple[str, ...] = ()

    @classmethod
    def parse(cls, params: Mapping[str, Iterable[str]]) -> EventFilter:
        actions = frozenset(_split(params.get("action", ())))
        unknown = actions - set(ACTIONS)
        if unknown:
            raise FilterError(
                f"unknown action {sorted(unknown)[0]!r} (actions: {', '.join(ACTIONS)})"
            )
        return cls(
            tuple(_split(params.get("repository", ()))),
            actions,
            tuple(_split(params.get("mediaType", ()))),
        )

    def matches(self, e: StoredEvent) -> bool:
        if self.actions and e.action not in self.actions:
            return False
        if self.repositories and not any_glob_matches(e.repository or "", self.repositories):
            return False
        if self.media_types:
            media_type = e.media_type or ""
            if not any(
                media_type == m or (m.endswith("/*") and media_type.startswith(m[:-1]))
                for m in self.media_types
            ):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": list(self.repositories),
            "action": sorted(self.actions),
            "mediaType": list(self.media_types),
        }
