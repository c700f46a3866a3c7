"""
Many timeouts of one length, kept by one reactor timer.

Every session of a server has the same handshake timeout, and almost every
session finishes its handshake long before it: a reactor timer per session
would be scheduled and cancelled for nothing thousands of times a second.
Timeouts of one length expire in the order they were set, so an ordered
dictionary holds them in deadline order, and one timer waits for the
earliest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadlines:
    """
    Calls C{on_expiry(key)} for each key that was L{add}ed C{timeout}
    seconds ago and not L{remove}d since.
    """

    __slots__ = ("_due", "_expiring", "_on_expiry", "_reactor", "_timer", "timeout")

    def __init__(
        self, reactor: IReactorTime, timeout: float, on_expiry: Callable[[Hashable], None]
    ) -> None:
        self._reactor = reactor
        self.timeout = timeout
        self._on_expiry = on_expiry
        self._due: OrderedDict[Hashable, float] = OrderedDict()
        self._timer: IDelayedCall | None = None
        self._expiring = False

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Hashable) -> None:
        """Start C{key}'s timeout (again, if it had one)."""
        self._due.pop(key, None)
        self._due[key] = self._reactor.seconds() + self.timeout
        if self._timer is None and not self._expiring:
            self._timer = self._reactor.callLater(self.timeout, self._expire)

    def remove(self, key: Hashable) -> None:
        """Stop C{key}'s timeout, if it has one."""
        if self._due.pop(key, None) is not None and not self._due and self._timer is not None:
            # Nothing left to wait for: no timer outlives the keys.
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._expiring = True
        try:
            now = self._reactor.seconds()
            due = self._due
            while due:
                key, deadline = next(iter(due.items()))
                if deadline > now:
                    self._timer = self._reactor.callLater(deadline - now, self._expire)
                    return
                del due[key]
                self._on_expiry(key)
        finally:
            self._expiring = False
