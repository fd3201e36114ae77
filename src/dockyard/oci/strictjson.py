"""JSON from clients, parsed strictly: no duplicate keys, bounded nesting, no RecursionError.

``json.loads`` keeps the last of duplicate keys (two readers of one manifest could see two
different documents) and raises RecursionError, not a ValueError, on deep nesting. Every
parser of client JSON (manifests, the feed's subscribe messages) goes through ``loads``.
"""

from __future__ import annotations

import json
from typing import Any

# Far deeper than any manifest or subscribe message; far below Python's recursion limit.
MAX_DEPTH = 64


class StrictJSONError(ValueError):
    """The text is not JSON dockyard accepts; the message says why."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise StrictJSONError(f"duplicate key {key[:40]!r}")
        doc[key] = value
    return doc


def _depth_exceeds(doc: Any, limit: int) -> bool:
    """Whether containers in ``doc`` nest deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return False


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed document; StrictJSONError for anything not plain, unambiguous JSON."""
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except StrictJSONError:
        raise
    except RecursionError:  # the C decoder's own limit, far past max_depth
        raise StrictJSONError(f"JSON nested deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StrictJSONError(f"not valid JSON: {str(e)[:200]}") from None
    if _depth_exceeds(doc, max_depth):
        raise StrictJSONError(f"JSON nested deeper than {max_depth} levels")
    return doc


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); json.loads accepts them by default.
    raise StrictJSONError(f"{name} is not valid JSON")


__all__ = ["MAX_DEPTH", "StrictJSONError", "loads"]
