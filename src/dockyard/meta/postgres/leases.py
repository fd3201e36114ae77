"""Leases on PostgreSQL rows: ``meta/leases.py``'s statements with PostgreSQL's parameter
mark and text functions.

The invariants are those of ``meta/leases.py`` (its docstring is the contract). Each
statement is one conditional ``UPDATE``: PostgreSQL re-checks the condition on the newest
version of the row after waiting for a concurrent writer, so two takers never both win.
"""

from __future__ import annotations

from dockyard.meta.leases import LeaseSQL

POSTGRES = LeaseSQL("%s", "left(lease, %s::int) = %s AND strpos(substr(lease, %s::int), %s) = 0")
take = POSTGRES.take
ensure = POSTGRES.ensure
takeable = POSTGRES.takeable
renew = POSTGRES.renew
release = POSTGRES.release
release_of = POSTGRES.release_of
