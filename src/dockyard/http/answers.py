"""Manifest GET and HEAD answered from memory while the database is unchanged.

A CI farm asks for the same few manifests thousands of times a minute. Where nothing about
the caller can change the answer (``auth.mode = "none"``, no network list or rate limit on
pulls, no pull policy, no pull-through upstreams), the answer to a manifest GET or HEAD is
a function of the request line, its ``Accept`` header and the database alone. So
``RegistryApp`` keeps the answers it gave (status, headers and payload) by
(method, path, query, Accept) and gives them again while the store's change marker is the
one it read before the first answer was made: SQLite's ``PRAGMA data_version``, which
moves with every commit of any connection of any process (a push, a delete, a tag move,
garbage collection or retention run from the command line, a batch of pull events). One
commit forgets every kept answer; the next request of each kind is answered from the
database again. Nothing is served that a read of the database at the same moment would
not have returned: the marker is read before the database is, and checked before every
answer given from memory. A GET still records its pull event, and every answer still
passes the request observers (access log, metrics).

On PostgreSQL the marker is None (other instances' commits are not visible without a
query), and so is the cache: every request reads the database.

Measured reason (``perf/RESULTS.md``, issue 14): a manifest HEAD on uvloop cost about
160 CPU-us over hypercorn's own floor, of which the routing, authorization and tag lookup
this skips were most.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dockyard.core.common import RequestInfo

# (method, path, query string, Accept)
AnswerKey = tuple[str, str, bytes, str | None]

# Bounds on what is kept: a registry with more hot manifests than this answers the rest
# from the database, as before.
MAX_ANSWERS = 4096
MAX_ANSWER_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Answer:
    """A response as sent, less its request id."""

    status: int
    headers: list[tuple[bytes, bytes]]  # raw, Content-Length included
    body: bytes
    # For the request record (access log, metrics).
    route: str
    repository: str | None
    reference: str | None
    # Records the pull event of a GET given again (None: a HEAD, which records none).
    record_pull: Callable[[RequestInfo], None] | None


class AnswerCache:
    def __init__(
        self,
        marker: Callable[[], int | None],
        max_answers: int = MAX_ANSWERS,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._marker = marker
        self._max_answers = max_answers
        self._max_bytes = max_bytes
        self._answers: dict[AnswerKey, Answer] = {}
        self._bytes = 0
        # The marker the kept answers were made under (None: none kept).
        self._made_under: int | None = None
        self.hits = 0

    def marker(self) -> int | None:
        """The store's marker now; read before the database, it is what ``keep`` takes."""
        marker = self._marker()
        if marker != self._made_under:
            self._answers.clear()
            self._bytes = 0
            self._made_under = marker
        return marker

    def get(self, key: AnswerKey) -> Answer | None:
        """The answer kept for ``key`` if the database has not changed since it was made."""
        if key not in self._answers:
            return None
        if self.marker() is None:
            return None
        answer = self._answers.get(key)  # gone if the marker moved
        if answer is not None:
            self.hits += 1
        return answer

    def keep(self, key: AnswerKey, made_under: int | None, answer: Answer) -> None:
        """Keep ``answer``, made from a database read after ``made_under`` was read."""
        if made_under is None or made_under != self._made_under:
            return  # the database changed meanwhile: the answer may be older than it
        size = len(answer.body)
        if len(self._answers) >= self._max_answers or self._bytes + size > self._max_bytes:
            # Full: the oldest kept answer makes room (dicts keep insertion order).
            if not self._answers:
                return
            oldest = next(iter(self._answers))
            self._bytes -= len(self._answers.pop(oldest).body)
            if self._bytes + size > self._max_bytes:
                return
        previous = self._answers.pop(key, None)
        if previous is not None:
            self._bytes -= len(previous.body)
        self._answers[key] = answer
        self._bytes += size


__all__ = ["MAX_ANSWERS", "MAX_ANSWER_BYTES", "Answer", "AnswerCache", "AnswerKey"]
