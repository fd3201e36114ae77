"""Repository globs, shared by the event feed's filters and the access rules (a leaf).

Shell-style patterns matched case-sensitively in which ``*`` also matches ``/``: ``team/*``
covers ``team/app`` and ``team/tools/base``, ``*/base`` covers ``a/b/base``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable


def glob_matches(name: str, pattern: str) -> bool:
    # fnmatchcase treats "/" like any character, which is what "*" across levels needs.
    return fnmatch.fnmatchcase(name, pattern)


def any_glob_matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
