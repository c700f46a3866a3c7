"""
L{FleetSessions}: the C{sessions = N} of a C{[[limit]]} held across every
process that shares one Redis store (C{--workers}, and machines behind a
balancer), by leases in Redis (L{socks5twist.accounting.redisstore}).

How a request is admitted: the gate first takes its place under the local
count (a fleet never has fewer sessions than one of its processes, so that
count refuses nothing the fleet would allow); then L{FleetSessions.admit}
asks the store's thread for a lease and the session waits, reading nothing
more than its connection allows, until the answer comes back on the reactor
thread as a Deferred's result.  The reactor never waits on Redis.

A lease expires L{TTL} seconds after it was last renewed, and this process
renews all of its own every L{RENEW_EVERY} seconds: a process that dies
lets its keys' places go within L{TTL} seconds, and after a Redis restart
(which forgets the leases) the next renewal puts them back.

While the store is away (the accountant's L{Accountant.away}), nothing is
asked of it: with C{--accounting-failure open} a request is admitted on the
local count alone (its lease is written by the first renewal once the store
is back, so the fleet's count is right again from then on, if over the
limit for a while); with C{closed} it is refused with X'01'.  A lease that
cannot be given back expires by itself.

Who owns what: everything here is the reactor thread's; the store is its
thread's, reached only through L{StoreThread.call}.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
from collections import defaultdict
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..codec import Reply
from ..limits import Limit
from ..logsafe import escape, field
from .accountant import Accountant
from .redisstore import RedisStore, lease_set

__all__ = ["RENEW_EVERY", "TTL", "FleetRefusal", "FleetSessions"]

log = Logger()

TTL = 15.0  # seconds a lease lives unless renewed
RENEW_EVERY = 5.0  # seconds between renewals: two can fail before a lease expires
ANSWER_WITHIN = 5.0  # seconds a request waits for the store before it is judged as away
MOST_ASKING = 256  # leases asked at once; more are judged as if the store were away


class FleetRefusal:
    """A request the fleet's count refused: the reply code, and the record's outcome."""

    __slots__ = ("outcome", "reply")

    def __init__(self, reply: Reply, outcome: str) -> None:
        self.reply = reply
        self.outcome = outcome


def _lease(store: RedisStore, name: bytes, member: str, most: int, ttl: float) -> bool:
    return store.lease(name, member, most, ttl)


def _renew(store: RedisStore, leases: dict[bytes, list[str]], ttl: float) -> None:
    store.renew(leases, ttl)


def _unlease(store: RedisStore, name: bytes, member: str) -> None:
    store.unlease(name, member)


class FleetSessions:
    """
    This process's session leases (see the module docstring).

    @param accountant: whose store thread asks Redis, and who knows whether
        the store is away (and whether to fail closed then).
    """

    def __init__(
        self,
        reactor: Any,
        accountant: Accountant,
        *,
        ttl: float = TTL,
        renew_every: float = RENEW_EVERY,
        answer_within: float = ANSWER_WITHIN,
    ) -> None:
        self.reactor = reactor
        self.accountant = accountant
        self.ttl = ttl
        self.answer_within = answer_within
        # Members are unique across the fleet: host, process, and a random tag
        # (a restarted process with the same pid never renews its old leases).
        self._me = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._serial = itertools.count(1)
        self.leases: dict[Any, tuple[bytes, str]] = {}  # session -> (set, member)
        self.asking = 0
        self._renewing = False
        self._loop = task.LoopingCall(self.renew)
        self._loop.clock = reactor
        self._renew_every = renew_every
        # For the metrics.
        self.refused = 0
        self.admitted_unchecked = 0  # admitted on the local count while the store was away

    def start(self) -> None:
        self._loop.start(self._renew_every, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def admit(
        self, session: Any, limit: Limit, key: str, command: str, client: str
    ) -> defer.Deferred[FleetRefusal | None]:
        """
        Whether C{session} (of C{key}, under C{limit}, whose C{sessions} is
        set) may go on: fires with C{None} (its lease is held until
        L{release}) or a L{FleetRefusal} (logged, counted).  Cancelling the
        Deferred (the client left) gives back a lease that comes too late.
        """
        assert limit.sessions is not None
        name = lease_set(limit.index, key)
        member = f"{self._me}:{next(self._serial)}"
        accountant = self.accountant
        if accountant.away or self.asking >= MOST_ASKING:
            return defer.succeed(self._unchecked(session, name, member, limit, command, client))
        decided: defer.Deferred[FleetRefusal | None] = defer.Deferred()
        self.asking += 1
        asked = accountant.thread.call(_lease, name, member, limit.sessions, self.ttl)
        timer = self.reactor.callLater(
            self.answer_within, self._late, decided, session, name, member
        )

        def answered(taken: bool) -> None:
            accountant.store_answered()
            if decided.called:  # cancelled, or judged late: give back what is not used
                if taken and self.leases.get(session) != (name, member):
                    accountant.thread.call(_unlease, name, member).addErrback(lambda _: None)
                return
            if taken:
                self.leases[session] = (name, member)
                decided.callback(None)
                return
            self.refused += 1
            why = f"{limit.sessions} sessions open in the fleet (sessions = {limit.sessions})"
            log.warn(
                "refused {command} for {client} user={user}: refused by {limit}: {why}",
                command=command.upper(),
                client=client,
                user=field(key),
                limit=escape(limit.label),
                why=why,
            )
            decided.callback(
                FleetRefusal(Reply.NOT_ALLOWED, f"refused by {escape(limit.label)}: {why}")
            )

        def failed(failure: Failure) -> None:
            accountant.store_failed(failure)
            if not decided.called:
                decided.callback(self._unchecked(session, name, member, limit, command, client))

        def done(_: object) -> None:
            self.asking -= 1
            if timer.active():
                timer.cancel()

        asked.addCallbacks(answered, failed)
        asked.addBoth(done)
        return decided

    def _late(
        self, decided: defer.Deferred[FleetRefusal | None], session: Any, name: bytes, member: str
    ) -> None:
        """The store did not answer in time: judge the request as if it were away."""
        if decided.called:
            return
        self.accountant.store_failed(
            Failure(TimeoutError(f"no answer within {self.answer_within:g}s"))
        )
        if self.accountant.fail_closed:
            self.refused += 1
            # (The answer, when it comes, gives back a lease it took.)
            decided.callback(
                FleetRefusal(Reply.GENERAL_FAILURE, "the accounting store did not answer")
            )
            return
        self.admitted_unchecked += 1
        self.leases[session] = (name, member)
        decided.callback(None)

    def _unchecked(
        self, session: Any, name: bytes, member: str, limit: Limit, command: str, client: str
    ) -> FleetRefusal | None:
        """The store is away: refuse (closed), or admit on the local count (open)."""
        if self.accountant.fail_closed:
            self.refused += 1
            log.warn(
                "refused {command} for {client}: {limit} counts sessions in {store},"
                " which is away (--accounting-failure closed)",
                command=command.upper(),
                client=client,
                limit=escape(limit.label),
                store=self.accountant.description,
            )
            return FleetRefusal(Reply.GENERAL_FAILURE, "the accounting store is away")
        self.admitted_unchecked += 1
        self.leases[session] = (name, member)  # written by the next renewal
        return None

    def release(self, session: Any) -> None:
        """C{session} ended: give its lease back (if that fails, it expires)."""
        held = self.leases.pop(session, None)
        if held is None or self.accountant.away:
            return
        self.accountant.thread.call(_unlease, *held).addErrback(lambda _: None)

    def renew(self) -> None:
        """Renew every lease this process holds (one job, one round trip)."""
        if self._renewing or not self.leases:
            return
        grouped: dict[bytes, list[str]] = defaultdict(list)
        for name, member in self.leases.values():
            grouped[name].append(member)
        self._renewing = True
        d = self.accountant.thread.call(_renew, dict(grouped), self.ttl)

        def done(result: object) -> None:
            self._renewing = False
            if isinstance(result, Failure):
                self.accountant.store_failed(result)
            else:
                self.accountant.store_answered()

        d.addBoth(done)
