"""
The accountant on a fake clock: counts read once a second and written in
batches, nothing lost when the store fails or is slow, quotas that refuse
and close, periods that roll over at UTC midnight.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from socks5twist.accounting import Accountant, Usage
from socks5twist.accounting.accountant import FORGET_AFTER, FORGET_EVERY
from socks5twist.accounting.store import Cell
from socks5twist.limits import Limit, Quota

DEC_1_NOON = calendar.timegm((2026, 12, 1, 12, 0, 0))
DEC_1, DEC = "2026-12-01", "2026-12"


class MemoryStore:
    """An L{AccountingStore} in a dict; C{fail} makes writes fail."""

    description = "memory:"

    def __init__(self, rows: dict[Cell, Usage] | None = None) -> None:
        self.rows: dict[Cell, Usage] = dict(rows or {})
        self.batches: list[dict[Cell, Usage]] = []
        self.fail = False
        self.closed = False

    def open(self) -> None:
        pass

    def load(self, periods: Any) -> dict[Cell, Usage]:
        return {cell: u for cell, u in self.rows.items() if cell[1] in periods}

    def add(self, batch: Any) -> dict[Cell, Usage]:
        if self.fail:
            raise OSError("disk full")
        self.batches.append(dict(batch))
        for cell, usage in batch.items():
            self.rows[cell] = self.rows.get(cell, Usage()) + usage
        return {cell: self.rows[cell] for cell in batch}

    def close(self) -> None:
        self.closed = True


class FakeThread:
    """Runs each job at once on this thread; C{hold} keeps them until L{release}."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.hold = False
        self.held: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def start(self) -> None:
        self.store.open()

    def call_blocking(self, f: Any, *args: Any) -> Any:
        return f(self.store, *args)

    def call(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.held.append((f, args, d))
        if not self.hold:
            self.release()
        return d

    def release(self) -> None:
        held, self.held = self.held, []
        for f, args, d in held:
            try:
                d.callback(f(self.store, *args))
            except Exception:
                d.errback()

    def stop(self) -> defer.Deferred[None]:
        self.store.close()
        return defer.succeed(None)


class Counters:
    up = 0
    down = 0


class FakeSession:
    """What the accountant reads of a session: its relay's counters; and close."""

    def __init__(self, udp: bool = False) -> None:
        self.relay: Any = None if udp else Counters()
        self.udp: Any = None
        if udp:
            self.udp = Counters()
            self.udp.up_bytes = self.udp.down_bytes = 0
        self.closed: str | None = None

    def move(self, up: int = 0, down: int = 0) -> None:
        if self.udp is not None:
            self.udp.up_bytes += up
            self.udp.down_bytes += down
        else:
            self.relay.up += up
            self.relay.down += down

    def close(self, outcome: str) -> None:
        self.closed = outcome


def accountant(
    store: MemoryStore | None = None, at: float = DEC_1_NOON
) -> tuple[Accountant, MemoryReactorClock, MemoryStore, FakeThread]:
    reactor = MemoryReactorClock()
    reactor.advance(at)
    store = store or MemoryStore()
    thread = FakeThread(store)
    a = Accountant(reactor, store, thread=thread)
    a.start()
    return a, reactor, store, thread


def quota(text: str) -> Limit:
    amount, period = text.split("/")
    return Limit(index=1, name="small", quota=Quota(int(amount), period))  # type: ignore[arg-type]


def lines(logs: Sequence[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in logs]


class BatchTests(SynchronousTestCase):
    def test_counts_are_written_once_a_second_as_one_batch_per_key_and_period(self) -> None:
        a, reactor, store, _ = accountant()
        alice, bob = FakeSession(), FakeSession(udp=True)
        a.watch(alice, "user:alice", None)
        a.watch(bob, "ip:10.0.0.7", None)
        for _ in range(100):  # many chunks, no write
            alice.move(up=10, down=1000)
        bob.move(up=5, down=7)
        reactor.advance(0.5)
        self.assertEqual(store.batches, [])
        reactor.advance(0.5)
        [batch] = store.batches
        self.assertEqual(
            batch,
            {
                (key, period): usage
                for key, usage in (
                    ("user:alice", Usage(1000, 100000, 1)),
                    ("ip:10.0.0.7", Usage(5, 7, 1)),
                )
                for period in (DEC_1, DEC, "total")
            },
        )
        reactor.advance(5)  # nothing moved: nothing written
        self.assertEqual(len(store.batches), 1)
        alice.move(up=1)
        a.ended(alice)
        reactor.advance(1)
        self.assertEqual(store.batches[1][("user:alice", "total")], Usage(1, 0, 0))
        self.assertNotIn(alice, a.live)

    def test_while_a_batch_is_written_the_next_counts_wait_and_none_is_lost(self) -> None:
        a, reactor, store, thread = accountant()
        thread.hold = True
        s = FakeSession()
        a.watch(s, "user:alice", None)
        s.move(up=100)
        reactor.advance(1)
        s.move(up=20)
        reactor.advance(1)
        s.move(up=3)
        reactor.advance(1)
        self.assertEqual(len(thread.held), 1)  # one batch in the store's hands, no more
        self.assertEqual(a.used(("user:alice", DEC)), 123)
        thread.hold = False
        thread.release()
        reactor.advance(1)
        self.assertEqual(store.rows[("user:alice", DEC)], Usage(123, 0, 1))
        self.assertEqual([b[("user:alice", DEC)].up for b in store.batches], [100, 23])
        self.assertEqual(a.used(("user:alice", DEC)), 123)

    def test_a_store_that_fails_is_retried_each_second_and_logged_once(self) -> None:
        a, reactor, store, _ = accountant()
        s = FakeSession()
        a.watch(s, "user:alice", None)
        store.fail = True
        with capturedLogs() as failing:
            for _ in range(3):
                s.move(down=10)
                reactor.advance(1)
        self.assertEqual(a.write_errors, 3)
        self.assertEqual(
            lines(failing),
            [
                "accounting NOT written to memory: (disk full); kept in memory and"
                " retried each second"
            ],
        )
        self.assertEqual(a.used(("user:alice", DEC_1)), 30)
        store.fail = False
        with capturedLogs() as recovered:
            reactor.advance(1)
        self.assertEqual(store.rows[("user:alice", DEC_1)], Usage(0, 30, 1))
        self.assertEqual(lines(recovered), ["accounting written to memory: again"])
        self.assertEqual(a.accounted, Usage(0, 30, 1))

    def test_stop_writes_what_the_ended_sessions_relayed_then_closes_the_store(self) -> None:
        a, reactor, store, _ = accountant()
        s = FakeSession()
        a.watch(s, "user:alice", None)
        s.move(up=1, down=2)
        a.ended(s)
        stopped = a.stop()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(store.rows[("user:alice", "total")], Usage(1, 2, 1))
        self.assertTrue(store.closed)
        self.assertEqual(reactor.getDelayedCalls(), [])  # the timer is gone


class QuotaTests(SynchronousTestCase):
    def test_used_amounts_are_read_back_at_start(self) -> None:
        """A restart: what the store holds for this period counts at once."""
        store = MemoryStore(
            {("user:alice", DEC_1): Usage(600, 400, 2), ("user:alice", "2026-11-30"): Usage(5000)}
        )
        a, _, _, _ = accountant(store)
        self.assertEqual(a.used(("user:alice", DEC_1)), 1000)
        self.assertTrue(a.over_quota("user:alice", Quota(1000, "day")))
        self.assertFalse(a.over_quota("user:alice", Quota(1001, "day")))
        self.assertNotIn(("user:alice", "2026-11-30"), a.totals)  # another day's: not loaded

    def test_sessions_of_a_key_over_quota_are_closed_within_a_second(self) -> None:
        a, reactor, _, _ = accountant()
        limit = quota("1000/day")
        alice = [FakeSession(), FakeSession(udp=True)]
        bob = FakeSession()
        for s in alice:
            a.watch(s, "user:alice", limit)
        a.watch(bob, "user:bob", limit)
        alice[0].move(down=600)
        alice[1].move(up=399)
        bob.move(down=999)
        reactor.advance(1)
        self.assertEqual([s.closed for s in [*alice, bob]], [None, None, None])
        alice[1].move(up=1)
        with capturedLogs() as logs:
            reactor.advance(1)
        why = "quota of [[limit]] #1 (small) used: 1000 B/day"
        self.assertEqual([s.closed for s in alice], [why, why])
        self.assertIsNone(bob.closed)
        self.assertEqual(lines(logs), [f"closing 2 sessions of user:alice: {why}"])
        self.assertEqual((a.quota_closures, a.keys_over_quota), (2, 1))
        with capturedLogs() as again:
            reactor.advance(1)  # still open (closing): not closed, nor logged, twice
        self.assertEqual(lines(again), [])

    def test_keys_not_seen_lately_are_let_go_unless_over_quota(self) -> None:
        """
        Memory holds the keys seen lately, not every address that ever
        asked; a key over its quota stays (refused at once), and one let go
        gets its stored totals back with its next batch.
        """
        a, reactor, store, _ = accountant()
        limit = quota("1000/day")
        for i in range(50):  # fifty anonymous clients, each one small session
            s = FakeSession()
            a.watch(s, f"ip:10.0.0.{i}", limit)
            s.move(down=10)
            a.ended(s)
        heavy = FakeSession()
        a.watch(heavy, "user:alice", limit)
        heavy.move(down=1000)
        a.ended(heavy)
        reactor.advance(1)  # written
        self.assertEqual(len({key for key, _ in a.totals}), 51)
        reactor.advance(FORGET_AFTER + FORGET_EVERY + 1)
        self.assertEqual({key for key, _ in a.totals}, {"user:alice"})
        self.assertTrue(a.over_quota("user:alice", limit.quota))  # type: ignore[arg-type]
        # A client let go comes back: its counts return with its next batch.
        again = FakeSession()
        a.watch(again, "ip:10.0.0.7", limit)
        self.assertEqual(a.used(("ip:10.0.0.7", DEC_1)), 0)  # until then: what is counted here
        reactor.advance(1)
        self.assertEqual(store.rows[("ip:10.0.0.7", DEC_1)].bytes, 10)
        self.assertEqual(a.used(("ip:10.0.0.7", DEC_1)), 10)

    def test_no_quota_no_check(self) -> None:
        a, reactor, _, _ = accountant()
        s = FakeSession()
        a.watch(s, "user:alice", Limit(index=1, bandwidth=1000))
        s.move(down=10**12)
        reactor.advance(1)
        self.assertIsNone(s.closed)

    def test_a_day_quota_resets_at_utc_midnight_and_a_month_quota_at_the_month(self) -> None:
        before_midnight = calendar.timegm((2026, 12, 31, 23, 59, 59))
        a, reactor, store, _ = accountant(at=before_midnight - 1)
        s = FakeSession()
        a.watch(s, "user:alice", None)
        s.move(down=1000)
        reactor.advance(1)  # read at 23:59:59
        day, month = Quota(1000, "day"), Quota(1000, "month")
        total = Quota(1000, "total")
        self.assertTrue(a.over_quota("user:alice", day))
        self.assertTrue(a.over_quota("user:alice", month))
        reactor.advance(1)  # 2027-01-01 00:00:00 UTC
        self.assertFalse(a.over_quota("user:alice", day))
        self.assertFalse(a.over_quota("user:alice", month))
        self.assertTrue(a.over_quota("user:alice", total))
        self.assertEqual(a.keys_over_quota, 1)  # the total's, the rest let go
        s.move(down=5)  # counted in the second it was read: the new day's
        reactor.advance(1)
        self.assertEqual(store.rows[("user:alice", "2026-12-31")], Usage(0, 1000, 1))
        self.assertEqual(store.rows[("user:alice", "2027-01-01")], Usage(0, 5, 0))
        self.assertEqual(store.rows[("user:alice", "total")], Usage(0, 1005, 1))
        self.assertNotIn(("user:alice", "2026-12"), a.totals)

    def test_other_processes_adds_count_once_the_store_says_so(self) -> None:
        """Two workers on one store: each write brings back the shared totals."""
        a, reactor, store, _ = accountant()
        s = FakeSession()
        a.watch(s, "user:alice", quota("1000/month"))
        store.rows[("user:alice", DEC)] = Usage(900)  # another worker's
        s.move(up=100)
        reactor.advance(1)  # written; the store answers 1000 + this session
        self.assertEqual(a.used(("user:alice", DEC)), 1000)
        reactor.advance(1)
        self.assertIsNotNone(s.closed)
