"""
Bandwidth: the token buckets of the C{[[limit]]} tables, and what a
session's relays ask of them.

A L{Bucket} holds tokens (bytes) that refill at its rate, up to
L{BURST} seconds' worth.  Each session under a limit has a L{Shaping}: one
L{Budget} per direction, and each budget charges the buckets that apply to
it: the key's shared bucket of that direction (C{bandwidth}: one per limit,
key and direction, shared by all the key's sessions) and the session's own
(C{session_bandwidth}).

Charging is by reservation: a relay moves a chunk (what it read in one
go), then L{Budget.charge}s it, and the buckets may go into debt.  A budget
charges its buckets once per I{quantum} (1/16 s of the slowest rate, between
4 KiB and 1 MiB) of bytes moved, and the answer is how long until the debt,
this session's quantum included, is paid; the relay stops reading for that
long, then reads again without asking (no polling).  Because each charge
queues behind the debt of those before it, and every charge is one quantum
(whatever the reads were: a source that has little to read still waits its
turn only once per quantum), sessions of one key take turns in the order
they charged, a quantum each: fair between them in bytes, and the long-run
rate is exact.  A bucket that is not in debt answers 0 and the relay goes
on: a limit that does not bite costs a lock and an addition per chunk, and
the clock and the buckets once per quantum.

Threads: a splice tunnel may be relayed by the relay thread while the
reactor thread relays others of the same key, so every bucket's tokens and
rate and every budget's buckets are guarded by the one lock of their
L{Shaper} (held for a few additions: the two threads never wait long).
Budgets are made, re-targeted (a reload) and released by the reactor
thread only; a budget is charged only by the thread that owns its tunnel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from .limits import Limit

__all__ = ["BURST", "Bucket", "Budget", "Shaper", "Shaping", "ThrottledProducer"]

# What a full bucket holds, in seconds of its rate: the most a key may send
# above its rate after a pause (1 % of a ten-second transfer).
BURST = 0.1
# What a budget charges at once, and the most a splice call moves of a
# limited direction: 1/16 s of its rate (a turn of the key's sessions), but
# no more than a pipe holds (a limit far above the traffic splices as much
# as an unlimited tunnel) and no less than a page.
MAX_QUANTUM = 1 << 20
MIN_QUANTUM = 1 << 12
UNLIMITED = 1 << 30


class Bucket:
    """
    Tokens (bytes) that refill at C{rate} per second, up to C{capacity};
    they may go below zero (a debt, paid off at C{rate}).  Every field is
    under the shaper's lock.
    """

    __slots__ = ("capacity", "holders", "rate", "stamp", "tokens")

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.capacity = max(rate * BURST, float(MIN_QUANTUM))
        self.tokens = self.capacity
        self.stamp = now
        self.holders = 0  # budgets charging it (the reactor thread's)

    def set_rate(self, rate: int, now: float) -> None:
        """A new rate (a reload), from C{now} on; what is owed stays owed."""
        self.refill(now)
        self.rate = rate
        self.capacity = max(rate * BURST, float(MIN_QUANTUM))
        self.tokens = min(self.tokens, self.capacity)

    def refill(self, now: float) -> None:
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = tokens if tokens < self.capacity else self.capacity
        self.stamp = now


class Budget:
    """
    One direction of one session: the buckets it charges (none: not
    limited, but a reload may add some).

    @ivar allowed: how much the splice relay may move in one call: what
        completes the quantum under way.  Written by L{charge} (under the
        lock), read by the owner of the tunnel, the only caller of
        L{charge}.
    """

    __slots__ = ("_clock", "_lock", "allowed", "buckets", "owed", "quantum")

    def __init__(self, lock: threading.Lock, clock: Callable[[], float]) -> None:
        self._lock = lock
        self._clock = clock
        # Under the lock:
        self.buckets: tuple[Bucket, ...] = ()
        self.quantum = UNLIMITED
        self.owed = 0  # moved, not yet charged (less than a quantum)
        self.allowed = UNLIMITED

    def charge(self, n: int) -> float:
        """
        C{n} bytes were moved: charge them (once a quantum has been moved).
        Seconds until they are paid for, for which the relay must not read
        (0: go on).
        """
        wait = 0.0
        with self._lock:
            owed = self.owed + n
            quantum = self.quantum
            if owed < quantum:
                self.owed = owed
                self.allowed = quantum - owed
                return wait
            self.owed = 0
            self.allowed = quantum
            now = self._clock()
            for bucket in self.buckets:
                bucket.refill(now)
                tokens = bucket.tokens = bucket.tokens - owed
                if tokens < 0 and -tokens / bucket.rate > wait:
                    wait = -tokens / bucket.rate
        return wait

    def take(self, n: int) -> bool:
        """
        For a datagram of C{n} bytes: whether every bucket has tokens in
        hand, and if so, take them (a datagram over the budget is dropped,
        not queued).
        """
        now = self._clock()
        with self._lock:
            buckets = self.buckets
            for bucket in buckets:
                bucket.refill(now)
                if bucket.tokens <= 0:
                    return False
            for bucket in buckets:
                bucket.tokens -= n
        return True


class Shaping:
    """
    A session's place under the bandwidth of its limit: the budget of each
    direction (C{up}: from the client; C{down}: to it).  Made, moved to
    another limit (L{apply}) and released by the reactor thread.
    """

    __slots__ = ("_own", "_shaper", "_shared", "down", "key", "limit", "up")

    def __init__(self, shaper: Shaper, key: str) -> None:
        self._shaper = shaper
        self.key = key
        self.limit: Limit | None = None
        self.up = Budget(shaper.lock, shaper.clock)
        self.down = Budget(shaper.lock, shaper.clock)
        self._shared: list[tuple[int, str, str]] = []  # the shaper's keys this holds
        self._own: dict[str, Bucket] = {}  # session_bandwidth, by direction

    def apply(self, limit: Limit | None) -> None:
        """
        Charge the buckets of C{limit} from now on (at the start, and when a
        reload finds another limit or new rates).  A session keeps its own
        buckets' state across a change of rate: what a bucket owes stays
        owed.  What was moved since the last charge (less than one quantum,
        at most 1/16 s of the old rate) is not charged: a reload forgives it.
        """
        shaper = self._shaper
        now = shaper.clock()
        held, self._shared = self._shared, []
        plan: list[tuple[Budget, tuple[Bucket, ...], int]] = []
        for direction, budget in (("up", self.up), ("down", self.down)):
            buckets: list[Bucket] = []
            if limit is not None and limit.bandwidth is not None:
                key = (limit.index, self.key, direction)
                buckets.append(shaper.hold(key, limit.bandwidth, now))
                self._shared.append(key)
            rate = limit.session_bandwidth if limit is not None else None
            if rate is not None:
                own = self._own.get(direction)
                if own is None:
                    own = self._own[direction] = Bucket(rate, now)
                elif own.rate != rate:
                    with shaper.lock:
                        own.set_rate(rate, now)
                buckets.append(own)
            else:
                self._own.pop(direction, None)
            slowest = min((b.rate for b in buckets), default=0)
            quantum = min(max(slowest // 16, MIN_QUANTUM), MAX_QUANTUM) if buckets else UNLIMITED
            plan.append((budget, tuple(buckets), quantum))
        with shaper.lock:
            for budget, buckets_, quantum in plan:
                budget.buckets = buckets_
                budget.quantum = quantum
                budget.owed = 0
        for key in held:
            shaper.let_go(key)
        self.limit = limit

    def release(self) -> None:
        """The session ended: charge nothing more (twice: once)."""
        with self._shaper.lock:
            self.up.buckets = self.down.buckets = ()
        held, self._shared = self._shared, []
        for key in held:
            self._shaper.let_go(key)
        self._own.clear()


class Shaper:
    """
    The shared buckets of one server, by limit, key and direction, each kept
    while a session charges it (no bucket outlives its sessions), and the
    lock of every bucket and budget (see the module docstring).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.Lock()
        self.clock = clock
        self.buckets: dict[tuple[int, str, str], Bucket] = {}  # the reactor thread's

    def shaping(self, limit: Limit | None, key: str) -> Shaping:
        """The budgets of a session of C{key} under C{limit}."""
        shaping = Shaping(self, key)
        shaping.apply(limit)
        # (Before the first charge, one quantum: a first read is no burst.)
        shaping.up.allowed = shaping.up.quantum
        shaping.down.allowed = shaping.down.quantum
        return shaping

    def hold(self, key: tuple[int, str, str], rate: int, now: float) -> Bucket:
        """The shared bucket of C{key} at C{rate}, made if none is held."""
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(rate, now)
        elif bucket.rate != rate:
            with self.lock:
                bucket.set_rate(rate, now)
        bucket.holders += 1
        return bucket

    def let_go(self, key: tuple[int, str, str]) -> None:
        bucket = self.buckets[key]
        bucket.holders -= 1
        if bucket.holders <= 0:
            del self.buckets[key]


@implementer(IPushProducer)
class ThrottledProducer:
    """
    A transport, as the producer its peer's transport pauses and resumes
    (the stream relay's flow control), that is also paused while its
    direction's budget is in debt.  Reading resumes only when neither the
    consumer (a full write buffer) nor the budget holds it back; the
    timer is the reactor's, one per direction at most.
    """

    __slots__ = ("_budget", "_call", "_consumer_paused", "_reactor", "_stopped", "transport")

    def __init__(self, reactor: Any, transport: Any, budget: Budget) -> None:
        self._reactor = reactor
        self.transport = transport
        self._budget = budget
        self._call: Any = None
        self._consumer_paused = False
        self._stopped = False

    def moved(self, n: int) -> None:
        """C{n} bytes read from the transport were relayed: charge them."""
        wait = self._budget.charge(n)
        if wait <= 0 or self._stopped:
            return
        call = self._call
        if call is None:
            self.transport.pauseProducing()
            self._call = self._reactor.callLater(wait, self._paid)
        elif call.getTime() < self._reactor.seconds() + wait:
            call.reset(wait)

    def _paid(self) -> None:
        self._call = None
        if not self._consumer_paused and not self._stopped:
            self.transport.resumeProducing()

    def stop(self) -> None:
        """The direction is over (EOF, or closed): no timer, no resuming."""
        self._stopped = True
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    # IPushProducer, for the peer's transport.
    def pauseProducing(self) -> None:
        self._consumer_paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._consumer_paused = False
        if self._call is None and not self._stopped:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.stop()
        self.transport.stopProducing()
