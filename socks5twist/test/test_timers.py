"""L{socks5twist.timers.Deadlines}: many timeouts of one length, one timer."""

from __future__ import annotations

from collections.abc import Hashable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socks5twist.timers import Deadlines


class DeadlinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[Hashable] = []
        self.deadlines = Deadlines(self.clock, 10, self.expired.append)

    def test_each_key_expires_its_timeout_after_it_was_added(self) -> None:
        self.deadlines.add("a")
        self.clock.advance(4)
        self.deadlines.add("b")
        self.clock.advance(5.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(3.9)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_timer_for_many_keys(self) -> None:
        for key in range(1000):
            self.deadlines.add(key)
            self.clock.advance(0.001)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.expired, list(range(1000)))

    def test_removed_keys_never_expire_and_the_last_removal_stops_the_timer(self) -> None:
        self.deadlines.add("a")
        self.deadlines.add("b")
        self.deadlines.remove("a")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.deadlines.remove("b")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.deadlines.remove("b")  # harmless
        self.clock.advance(20)
        self.assertEqual(self.expired, [])
        self.assertEqual(len(self.deadlines), 0)

    def test_adding_again_restarts_the_timeout(self) -> None:
        self.deadlines.add("a")
        self.clock.advance(8)
        self.deadlines.add("a")
        self.clock.advance(8)
        self.assertEqual(self.expired, [])
        self.clock.advance(2)
        self.assertEqual(self.expired, ["a"])

    def test_the_timer_waits_for_the_oldest_key_left(self) -> None:
        self.deadlines.add("a")
        self.clock.advance(5)
        self.deadlines.add("b")
        self.deadlines.remove("a")
        self.clock.advance(5)  # a's deadline: nothing expires, the timer moves on
        self.assertEqual(self.expired, [])
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 15)
        self.clock.advance(5)
        self.assertEqual(self.expired, ["b"])

    def test_keys_added_and_removed_while_expiring(self) -> None:
        def expire(key: Hashable) -> None:
            self.expired.append(key)
            if key == "a":
                self.deadlines.remove("b")  # ends in the same call
                self.deadlines.add("c")

        self.deadlines = Deadlines(self.clock, 10, expire)
        self.deadlines.add("a")
        self.deadlines.add("b")
        self.clock.advance(10)
        self.assertEqual(self.expired, ["a"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.expired, ["a", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_shortened_timeout_waits_for_older_keys(self) -> None:
        # Keys expire in the order they were added: one added after the
        # timeout was shortened expires with the older ones at the latest.
        self.deadlines.add("a")
        self.deadlines.timeout = 2
        self.deadlines.add("b")
        self.clock.advance(2)
        self.assertEqual(self.expired, [])  # the timer still waits for a
        self.clock.advance(8)
        self.assertEqual(self.expired, ["a", "b"])
