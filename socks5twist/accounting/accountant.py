"""
L{Accountant}: the reactor's side of the accounting.  It counts what the
live sessions relay, hands the counts to the store's thread in batches, and
closes the sessions of keys whose quota is used up.

Nothing here runs per chunk: the relays keep their own byte counters
(C{relay.up}/C{relay.down}, a UDP association's C{up_bytes}/C{down_bytes}),
and once a second L{Accountant.tick} reads each live session's counters,
adds what moved since the last reading to its key's counts (in the periods
of that second: the UTC day, the UTC month, and C{total}), closes the
sessions of keys over quota, and, unless a batch is being written, hands
what was counted since to the store as one batch.  A batch the store could
not write stays counted and goes with the next one; a batch is never lost
while the process lives.

Who owns what: every attribute here is the reactor thread's; the store is
its thread's (L{socks5twist.accounting.writer}); a batch, once handed over,
is not touched again by the reactor (a failed one is merged back from the
Deferred's result, on the reactor thread).

What a key has used is C{totals} (what the store last said, which includes
what other processes sharing the store added) plus what is being written
plus what is counted and not yet written.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..limits import Limit, Quota
from ..logsafe import field
from .store import NOTHING, AccountingStore, Cell, Usage, periods_of
from .writer import StoreThread

__all__ = ["Accountant", "relayed"]

log = Logger()

# Seconds after its last session a key's totals are still read each second
# from a shared store (a key refused here is read too: its refusals repeat).
REFRESH_FOR = 600.0
# Seconds after it was last seen (a session, a request) that a key's totals
# are let go from memory, unless it is at or over its quota; and how often
# that is looked at.  Without it, every client address that ever made a
# request (anonymous keys are addresses) would hold its cells for ever.
FORGET_AFTER = 600.0
FORGET_EVERY = 60.0


def relayed(session: Any) -> tuple[int, int]:
    """The bytes a session relayed so far: (up, down); a UDP association's payloads."""
    udp = session.udp
    if udp is not None:
        return udp.up_bytes, udp.down_bytes
    relay = session.relay
    if relay is not None:
        return relay.up, relay.down
    return 0, 0


@dataclass(slots=True)
class Watch:
    """A live session's key, its limit, and its counters when last read."""

    key: str
    limit: Limit | None
    up: int
    down: int
    closing: bool = False


def _add_batch(
    store: AccountingStore, batch: Mapping[Cell, Usage], others: Collection[Cell] = ()
) -> dict[Cell, Usage]:
    totals = store.add(batch) if batch else {}
    if others:
        totals.update(store.read(others))  # type: ignore[attr-defined]
    return totals


def _load(store: AccountingStore, periods: tuple[str, ...]) -> dict[Cell, Usage]:
    return store.load(periods)


def merge(a: Mapping[Cell, Usage], b: Mapping[Cell, Usage]) -> dict[Cell, Usage]:
    """Two batches as one."""
    merged = dict(a)
    for cell, usage in b.items():
        merged[cell] = merged.get(cell, NOTHING) + usage
    return merged


def quota_text(limit: Limit, quota: Quota) -> str:
    """How the logs name a used-up quota: C{quota of [[limit]] #1 (name) used: 2097152 B/day}."""
    return f"quota of {limit.label} used: {quota.amount} B/{quota.period}"


class Accountant:
    """
    The accounting of one server (see the module docstring).

    @param store: where the counts go; opened by its own thread at L{start}.
    @param interval: seconds between readings (and batches).
    @param thread: the store's thread (tests hand in a fake); by default a
        L{StoreThread} of C{store}.
    @param fail_closed: while the store is away (its last write or lease
        failed), refuse requests under a quota (X'01') instead of judging
        them by the counts this process has (C{--accounting-failure}).
    """

    def __init__(
        self,
        reactor: Any,
        store: AccountingStore,
        *,
        interval: float = 1.0,
        thread: Any = None,
        fail_closed: bool = False,
    ) -> None:
        self.reactor = reactor
        self.description = store.description
        self.interval = interval
        self.thread = thread if thread is not None else StoreThread(reactor, store)
        self.live: dict[Any, Watch] = {}
        self.totals: dict[Cell, Usage] = {}
        self.pending: dict[Cell, Usage] = {}
        self._in_flight: Mapping[Cell, Usage] = {}
        self._writing: defer.Deferred[None] | None = None
        self._periods = periods_of(reactor.seconds())
        self._over: set[Cell] = set()
        # When each key was last seen, and the quota it was last under.
        self._seen: dict[str, tuple[float, Quota | None]] = {}
        self._forgot_at = reactor.seconds()
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = reactor
        self._failing: str | None = None
        self.fail_closed = fail_closed
        # A store shared by several processes (it can read totals without
        # writing): keys under a quota asked about here lately, and when,
        # whose totals are read again each second, so that what the others
        # relay for them is seen here within a second.
        self._shared = hasattr(store, "read")
        self._recent: dict[str, tuple[Quota, float]] = {}
        self.fleet: Any = None  # its FleetSessions, when the store holds leases (the factory's)
        self.started = False
        # For the metrics (no key in any of them).
        self.accounted = Usage()  # written to the store
        self.batches = 0
        self.write_errors = 0
        self.write_seconds = 0.0  # the last batch's
        self.quota_closures = 0

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """
        Start the store's thread and read what the current periods used
        (blocking: at start-up only, before the reactor runs); raise what
        the store raised.
        """
        self.thread.start()
        self.totals = self.thread.call_blocking(_load, self._periods)
        # Keys read back are kept FORGET_AFTER seconds from now, as if seen.
        now = self.reactor.seconds()
        self._seen = {key: (now, None) for key, _ in self.totals}
        self.started = True
        self._loop.start(self.interval, now=False)
        if self.fleet is not None:
            self.fleet.start()
        log.info(
            "accounting in {store}: {n} keys used something this month",
            store=self.description,
            n=sum(1 for _, period in self.totals if period == self._periods[1]),
        )

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """
        Write what is counted (the sessions have ended by now: their counts
        too), then close the store.  Fires when the store is closed.
        """
        if not self.started:
            return
        self.started = False
        if self._loop.running:
            self._loop.stop()
        if self.fleet is not None:
            self.fleet.stop()
        self._read_live(self.reactor.seconds())
        while self._writing is not None:
            yield self._writing
        self._flush()
        if self._writing is not None:
            yield self._writing
        if self.pending:
            log.error(
                "accounting of {n} keys NOT written to {store} at stop",
                n=len({key for key, _ in self.pending}),
                store=self.description,
            )
        yield self.thread.stop()

    # -- sessions --------------------------------------------------------------------

    def watch(self, session: Any, key: str, limit: Limit | None) -> None:
        """Count C{session} (admitted now) against C{key}, under C{limit}."""
        up, down = relayed(session)
        self.live[session] = Watch(key, limit, up, down)
        self._seen[key] = (self.reactor.seconds(), limit.quota if limit is not None else None)
        self._count(key, Usage(sessions=1), self._current(self.reactor.seconds()))

    def ended(self, session: Any) -> None:
        """C{session} has ended: count what it relayed since the last reading."""
        watch = self.live.pop(session, None)
        if watch is not None:
            self._read(session, watch, self._current(self.reactor.seconds()))

    def rematch(self, limit_for: Any) -> None:
        """The limits changed (a reload): find each live session's again (C{limit_for(session)})."""
        for session, watch in self.live.items():
            watch.limit = limit_for(session)

    # -- quotas ------------------------------------------------------------------------

    def used(self, cell: Cell) -> int:
        """Bytes C{cell} used: stored, being written, and counted since."""
        return (
            self.totals.get(cell, NOTHING)
            + self._in_flight.get(cell, NOTHING)
            + self.pending.get(cell, NOTHING)
        ).bytes

    def over_quota(self, key: str, quota: Quota) -> bool:
        """Whether C{key} has used C{quota} up in the current period."""
        now = self.reactor.seconds()
        self._current(now)
        if self._shared:
            self._recent[key] = (quota, now)
        self._seen[key] = (now, quota)
        cell = (key, quota.period_of(now))
        if self.used(cell) < quota.amount:
            return False
        self._over.add(cell)
        return True

    @property
    def keys_over_quota(self) -> int:
        """Keys found over their quota in the current periods (for the metrics)."""
        return len(self._over)

    @property
    def pending_cells(self) -> int:
        """Counts not yet written (for the metrics): a store that is away makes it grow."""
        return len(self.pending) + len(self._in_flight)

    # -- each second -----------------------------------------------------------------

    def tick(self) -> None:
        """Read the live sessions, close those over quota, write a batch."""
        try:
            now = self.reactor.seconds()
            self._read_live(now)
            self._enforce(now)
            self._flush()
            self._forget(now)
        except Exception:
            log.failure("accounting failed to count this second")

    def _read_live(self, now: float) -> None:
        periods = self._current(now)
        for session, watch in self.live.items():
            self._read(session, watch, periods)

    def _read(self, session: Any, watch: Watch, periods: Iterable[str]) -> None:
        up, down = relayed(session)
        if up != watch.up or down != watch.down:
            moved = Usage(up - watch.up, down - watch.down)
            watch.up, watch.down = up, down
            self._count(watch.key, moved, periods)

    def _count(self, key: str, usage: Usage, periods: Iterable[str]) -> None:
        pending = self.pending
        for period in periods:
            cell = (key, period)
            pending[cell] = pending.get(cell, NOTHING) + usage

    def _enforce(self, now: float) -> None:
        """Close the sessions of keys over their quota, one line per key."""
        closing: dict[tuple[str, Limit], list[Any]] = collections.defaultdict(list)
        for session, watch in self.live.items():
            limit = watch.limit
            if watch.closing or limit is None or limit.quota is None:
                continue
            if self.over_quota(watch.key, limit.quota):
                watch.closing = True
                closing[(watch.key, limit)].append(session)
        for (key, limit), sessions in closing.items():
            assert limit.quota is not None
            why = quota_text(limit, limit.quota)
            log.warn(
                "closing {n} of {key}: {why}",
                n=f"{len(sessions)} session" + ("s" if len(sessions) != 1 else ""),
                key=field(key),
                why=why,
            )
            self.quota_closures += len(sessions)
            for session in sessions:
                session.close(why)

    def _forget(self, now: float) -> None:
        """
        Let go of the totals of keys not seen for L{FORGET_AFTER} seconds:
        memory stays bounded by the keys active lately, not by every key that
        ever made a request.  Kept: keys with a live session or counts not
        yet written, and keys at or over the quota they were last under (so
        that they are still refused at once).  A key let go that comes back
        is judged by its counts here until the next batch written for it
        brings back its stored totals (within a second or two): a key that
        was close to its quota may so pass it by a second or two of traffic,
        and so may a key over its quota that was read back at start-up and
        has not been seen in the L{FORGET_AFTER} seconds since (its quota is
        known only once one of its requests is matched to a limit).
        """
        if now - self._forgot_at < FORGET_EVERY:
            return
        self._forgot_at = now
        keep = {watch.key for watch in self.live.values()}
        keep.update(key for key, _ in self.pending)
        keep.update(key for key, _ in self._in_flight)
        for key, (seen, quota) in list(self._seen.items()):
            if key in keep:
                continue
            if now - seen <= FORGET_AFTER:
                keep.add(key)
            elif quota is not None and self.used((key, quota.period_of(now))) >= quota.amount:
                keep.add(key)
            else:
                del self._seen[key]
        if len(keep) < len({key for key, _ in self.totals}):
            self.totals = {cell: u for cell, u in self.totals.items() if cell[0] in keep}
            self._over = {cell for cell in self._over if cell[0] in keep}

    def _current(self, now: float) -> tuple[str, str, str]:
        """The periods of C{now}; at a new day, what older periods kept is let go."""
        periods = periods_of(now)
        if periods != self._periods:
            self._periods = periods
            self.totals = {cell: u for cell, u in self.totals.items() if cell[1] in periods}
            self._over = {cell for cell in self._over if cell[1] in periods}
        return periods

    # -- batches -----------------------------------------------------------------------

    def _to_refresh(self) -> list[Cell]:
        """The cells of recent keys under a quota, not in the batch (read, not written)."""
        if not self._recent:
            return []
        now = self.reactor.seconds()
        live = {watch.key for watch in self.live.values()}
        cells = []
        for key, (quota, seen) in list(self._recent.items()):
            if key not in live and now - seen > REFRESH_FOR:
                del self._recent[key]
                continue
            cell = (key, quota.period_of(now))
            if cell not in self.pending:
                cells.append(cell)
        return cells

    def _flush(self) -> None:
        """Hand what was counted to the store, unless a batch is being written."""
        if self._writing is not None:
            return
        others = self._to_refresh()
        if not self.pending and not others:
            return
        batch, self.pending = self.pending, {}
        self._in_flight = batch
        started = time.monotonic()
        writing = self._writing = defer.Deferred()
        d = self.thread.call(_add_batch, batch, others)
        d.addCallbacks(
            self._written,
            self._not_written,
            callbackArgs=(batch, started),
            errbackArgs=(batch,),
        )

        def done(_: object) -> None:
            self._writing = None
            writing.callback(None)

        d.addBoth(done)

    def _written(
        self, totals: Mapping[Cell, Usage], batch: Mapping[Cell, Usage], started: float
    ) -> None:
        self._in_flight = {}
        self.write_seconds = time.monotonic() - started
        self.batches += 1 if batch else 0
        periods = self._periods
        for cell, usage in totals.items():
            if cell[1] in periods:
                self.totals[cell] = usage
        moved = sum((u for (_, period), u in batch.items() if period == "total"), NOTHING)
        self.accounted += moved
        self.store_answered()

    def _not_written(self, failure: Failure, batch: Mapping[Cell, Usage]) -> None:
        self._in_flight = {}
        self.pending = merge(batch, self.pending)
        self.write_errors += 1
        self.store_failed(failure)

    # -- the store away and back ---------------------------------------------------------

    @property
    def away(self) -> bool:
        """Whether the store's last answer was a failure (a write's, or a lease's)."""
        return self._failing is not None

    def store_failed(self, failure: Failure) -> None:
        """The store failed a job: one line when it goes away (not one per failure)."""
        reason = str(failure.value) or repr(failure.value)
        if self._failing is None:
            log.error(
                "accounting NOT written to {store} ({error}); kept in memory and retried"
                " each second{closed}",
                store=self.description,
                error=reason,
                closed="; requests under a quota or a fleet session limit refused meanwhile"
                if self.fail_closed
                else "",
            )
        self._failing = reason

    def store_answered(self) -> None:
        """The store did a job: one line if it was away."""
        if self._failing is not None:
            self._failing = None
            log.info("accounting written to {store} again", store=self.description)
