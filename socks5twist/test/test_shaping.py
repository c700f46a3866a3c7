"""
socks5twist.shaping: token buckets charged by reservation (a fake clock),
shared per limit and key, re-targeted by a reload; and the stream relay's
throttled producer on a memory reactor.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from socks5twist.limits import Limit
from socks5twist.relay import Side, StreamRelay
from socks5twist.shaping import Shaper

KIB = 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def shaper() -> tuple[Shaper, FakeClock]:
    clock = FakeClock()
    return Shaper(clock), clock


ALICE_2 = Limit(index=1, bandwidth=100 * KIB)  # capacity: 10 KiB (0.1 s)


class BudgetTests(SynchronousTestCase):
    def test_a_limit_that_does_not_bite_never_waits(self) -> None:
        """What the bucket holds (0.1 s of the rate) passes without a wait."""
        s, clock = shaper()
        down = s.shaping(ALICE_2, "user:alice").down
        self.assertEqual(down.charge(10 * KIB), 0.0)
        clock.now += 1.0  # refilled
        self.assertEqual(down.charge(5 * KIB), 0.0)

    def test_a_debt_is_paid_at_the_rate(self) -> None:
        """30 KiB at 100 KiB/s with 10 KiB in hand: wait 0.2 s for the rest."""
        s, clock = shaper()
        down = s.shaping(ALICE_2, "user:alice").down
        self.assertAlmostEqual(down.charge(30 * KIB), 0.2)
        clock.now += 0.2
        self.assertEqual(down.charge(0), 0.0)

    def test_sessions_of_one_key_queue_behind_each_other(self) -> None:
        """
        Two sessions of alice share her bucket: the second charge waits for
        the first one's debt too, so they take turns in order (fair).
        """
        s, clock = shaper()
        first = s.shaping(ALICE_2, "user:alice").down
        second = s.shaping(ALICE_2, "user:alice").down
        self.assertAlmostEqual(first.charge(20 * KIB), 0.1)
        self.assertAlmostEqual(second.charge(20 * KIB), 0.3)
        clock.now += 0.1  # the first session reads again: behind the second
        self.assertAlmostEqual(first.charge(20 * KIB), 0.4)

    def test_another_key_and_the_other_direction_have_buckets_of_their_own(self) -> None:
        s, _ = shaper()
        alice = s.shaping(ALICE_2, "user:alice")
        bob = s.shaping(ALICE_2, "user:bob")
        self.assertGreater(alice.down.charge(50 * KIB), 0)
        self.assertEqual(alice.up.charge(10 * KIB), 0.0)
        self.assertEqual(bob.down.charge(10 * KIB), 0.0)

    def test_session_bandwidth_holds_each_session_apart(self) -> None:
        """The slower of the two buckets decides; each session has its own."""
        s, _ = shaper()
        limit = Limit(index=1, bandwidth=1000 * KIB, session_bandwidth=100 * KIB)
        one = s.shaping(limit, "user:alice").down
        two = s.shaping(limit, "user:alice").down
        self.assertAlmostEqual(one.charge(30 * KIB), 0.2)  # its own 100 KiB/s
        self.assertAlmostEqual(two.charge(30 * KIB), 0.2)  # the shared one is far from empty

    def test_a_datagram_over_the_budget_is_refused(self) -> None:
        s, clock = shaper()
        up = s.shaping(ALICE_2, "ip:10.0.0.7").up
        self.assertTrue(up.take(8 * KIB))
        self.assertTrue(up.take(8 * KIB))  # there were tokens in hand: now a debt
        self.assertFalse(up.take(100))
        clock.now += 0.1
        self.assertTrue(up.take(100))

    def test_a_quantum_is_charged_at_once_and_a_splice_moves_no_more(self) -> None:
        """
        Reads are charged a quantum (1/16 s of the rate) at a time, so each
        session's turn is as long, in bytes, as another's.
        """
        s, _ = shaper()
        down = s.shaping(ALICE_2, "user:alice").down
        quantum = 100 * KIB // 16
        self.assertEqual(down.allowed, quantum)  # before the first charge
        self.assertEqual(down.charge(quantum - 100), 0.0)
        self.assertEqual(down.allowed, 100)  # what completes the quantum
        (bucket,) = down.buckets
        self.assertEqual(bucket.tokens, 10 * KIB)  # nothing charged yet
        self.assertEqual(down.charge(100), 0.0)
        self.assertEqual(bucket.tokens, 10 * KIB - quantum)
        self.assertAlmostEqual(down.charge(quantum), (2 * quantum - 10 * KIB) / (100 * KIB))
        self.assertEqual(down.allowed, quantum)

    def test_no_bucket_outlives_its_sessions(self) -> None:
        s, _ = shaper()
        one = s.shaping(ALICE_2, "user:alice")
        two = s.shaping(ALICE_2, "user:alice")
        self.assertEqual(len(s.buckets), 2)  # up and down, shared
        one.release()
        one.release()
        self.assertEqual(len(s.buckets), 2)
        two.release()
        self.assertEqual(s.buckets, {})
        self.assertEqual(two.down.charge(1 << 20), 0.0)  # released: charges nothing

    def test_a_reload_moves_a_session_to_its_new_limit_and_rate(self) -> None:
        """apply() (what a reload does): the new rate, a new bucket, or none."""
        s, clock = shaper()
        session = s.shaping(ALICE_2, "user:alice")
        session.down.charge(10 * KIB)
        faster = Limit(index=1, bandwidth=200 * KIB)
        session.apply(faster)
        self.assertAlmostEqual(session.down.charge(20 * KIB), 0.1)  # at 200 KiB/s
        clock.now += 0.1
        session.apply(Limit(index=2, bandwidth=50 * KIB))  # another table now
        self.assertEqual(set(s.buckets), {(2, "user:alice", "up"), (2, "user:alice", "down")})
        self.assertAlmostEqual(session.down.charge(10 * KIB), 0.1)  # 5 KiB in hand
        session.apply(None)  # no limit any more
        self.assertEqual(s.buckets, {})
        self.assertEqual(session.down.charge(1 << 20), 0.0)


class ThrottledStreamRelayTests(SynchronousTestCase):
    """The stream relay pauses the side whose direction is in debt, on a timer."""

    def relay(self, limit: Limit) -> tuple[StreamRelay, StringTransport, StringTransport, Shaper]:
        self.reactor = MemoryReactorClock()
        s = Shaper(self.reactor.seconds)
        client, remote = StringTransport(), StringTransport()
        relay = StreamRelay(self.reactor, client, remote, shaping=s.shaping(limit, "user:alice"))
        relay.start()
        return relay, client, remote, s

    def test_the_remote_side_pauses_until_its_debt_is_paid(self) -> None:
        relay, client, remote, _ = self.relay(ALICE_2)
        relay.from_remote(b"x" * (30 * KIB))
        self.assertEqual(len(client.value()), 30 * KIB)  # what was read goes on
        self.assertEqual(remote.producerState, "paused")
        self.assertEqual(client.producerState, "producing")  # the other direction flows
        self.reactor.advance(0.19)
        self.assertEqual(remote.producerState, "paused")
        self.reactor.advance(0.02)
        self.assertEqual(remote.producerState, "producing")

    def test_a_full_write_buffer_and_the_budget_both_hold_reading_back(self) -> None:
        """The consumer resuming does not end the throttle, nor the throttle the pause."""
        relay, client, remote, _ = self.relay(ALICE_2)
        relay.from_client(b"x" * (30 * KIB))
        self.assertEqual(client.producerState, "paused")
        producer = remote.producer  # the client's reading, as the remote's producer
        assert producer is not None
        producer.resumeProducing()  # the remote drained its buffer
        self.assertEqual(client.producerState, "paused")  # still in debt
        producer.pauseProducing()  # and full again
        self.reactor.advance(0.3)
        self.assertEqual(client.producerState, "paused")  # paid, but the buffer is full
        producer.resumeProducing()
        self.assertEqual(client.producerState, "producing")

    def test_an_eof_ends_the_throttle_of_that_side(self) -> None:
        """After EOF nothing resumes the side's reading (it would report EOF twice)."""
        relay, _, remote, _ = self.relay(ALICE_2)
        relay.from_remote(b"x" * (30 * KIB))
        relay.eof(Side.REMOTE)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(remote.producerState, "paused")

    def test_the_rate_holds_over_ten_seconds(self) -> None:
        """
        Read in 64 KiB chunks whenever not paused: 100 KiB/s, give or take
        one chunk, and the bucket's 0.1 s at the start.
        """
        relay, client, remote, _ = self.relay(ALICE_2)
        for _ in range(1000):
            if self.reactor.seconds() >= 10:
                break
            if remote.producerState == "producing":
                relay.from_remote(b"x" * (64 * KIB))
            self.reactor.advance(0.01)
        relayed = len(client.value())
        self.assertLessEqual(relayed, 1000 * KIB + 10 * KIB + 64 * KIB)
        self.assertGreaterEqual(relayed, 1000 * KIB - 64 * KIB)
