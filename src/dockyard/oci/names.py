"""Repository names, tags and references, by the distribution-spec grammar."""

from __future__ import annotations

import re

from dockyard.oci.digest import Digest, DigestError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# Distribution limits the whole name; the spec says clients should keep host+name < 256.
MAX_NAME_LENGTH = 255


class ReferenceError_(ValueError):
    """A reference is neither a valid tag nor a valid digest."""


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def is_valid_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None


def parse_reference(ref: str) -> Digest | str:
    """A manifest reference: a Digest if it contains ':', else a tag.

    Raises DigestError for a malformed or unsupported digest and ReferenceError_ for a
    malformed tag.
    """
    if ":" in ref:
        return Digest.parse(ref)
    if not is_valid_tag(ref):
        raise ReferenceError_(f"invalid tag {ref[:80]!r}")
    return ref


__all__ = [
    "MAX_NAME_LENGTH",
    "DigestError",
    "ReferenceError_",
    "is_valid_name",
    "is_valid_tag",
    "parse_reference",
]
