"""The event actions: the one list, shared by the event log's readers and writers.

A leaf module (it imports nothing of dockyard) at the bottom of the import graph, so
``config`` (webhook filters), ``events`` (feed filters, renderings) and ``core`` (the
dashboard's statistics) all import it without importing one another. The dashboard's
``dashboard.js`` keeps its own copy (it is not Python); ``tests/test_event_counters.py``
checks that the two agree.
"""

from __future__ import annotations

# In the order the dashboard shows them.
ACTIONS = ("push", "pull", "mount", "delete", "untag", "scan")

__all__ = ["ACTIONS"]
