"""
Accounting and quotas (C{--accounting sqlite:PATH}): what each key (a user,
or a client address without a login) relayed, per UTC day, UTC month and in
total, kept in a store that survives restarts, and the quotas of the rules
file's C{[[limit]]} tables enforced on it.

- L{store}: the L{AccountingStore} interface and the SQLite store (its
  schema is the README's);
- L{writer}: the one thread that owns a store, fed through a queue;
- L{accountant}: the reactor's side: live sessions read once a second,
  batches, quotas;
- L{collector}: the metrics, without keys.

Threads: the store is its thread's alone; everything else here is the
reactor thread's (see L{writer} and L{accountant}).
"""

from __future__ import annotations

from ..ruleset import Rules
from .accountant import Accountant
from .store import AccountingStore, SQLiteStore, StoreError, Usage, parse_accounting

__all__ = [
    "Accountant",
    "AccountingStore",
    "SQLiteStore",
    "StoreError",
    "Usage",
    "parse_accounting",
    "quota_without_store",
]


def quota_without_store(rules: Rules) -> str | None:
    """
    Why C{rules} cannot be used without a store (a quota that nothing would
    remember across a restart), or C{None}.
    """
    for limit in rules.limits:
        if limit.quota is not None:
            return (
                f"{limit.label} has a quota, which needs an accounting store"
                " (where used amounts survive restarts)"
            )
    return None
