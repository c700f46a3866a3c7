"""
The [[limit]] a session falls under, through a session in memory: a disabled
limit and a full `sessions` refuse the request with X'02' and one line, the
count is freed when a session ends, the session's line names the limit, and
a reload moves running sessions to the new limits.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import codec
from socks5twist.codec import Address, Command
from socks5twist.rules import parse
from socks5twist.shaping import Shaper

from .helpers import (
    LOCAL_CLIENT,
    NO_AUTH_GREETING,
    PROXY_HOST,
    HalfCloseTransport,
    Session,
    connect_request,
    make_session,
    memory_portal,
)
from .test_udp import CLIENT, UDPReactor, datagram

LIMITS = """\
default = "allow"

[[limit]]
name = "no\\u001bpe"
users = ["mallory"]
disabled = true

[[limit]]
users = ["alice"]
sessions = 1
bandwidth = "1MiB/s"

[[limit]]
users = ["anonymous"]
commands = ["udp"]
bandwidth = 1000
"""


def login(user: str, reactor: Any, rules: Any, factory: Any = None) -> Session:
    """A session of C{user}, logged in (on C{factory}'s server, if given)."""
    if factory is None:
        portal = memory_portal(alice="pw", mallory="pw", bob="pw")
        s = make_session(portal, reactor=reactor, rules=rules)
    else:
        protocol = factory.buildProtocol(LOCAL_CLIENT)
        transport = HalfCloseTransport(hostAddress=PROXY_HOST, peerAddress=LOCAL_CLIENT)
        protocol.makeConnection(transport)
        s = Session(reactor, factory, protocol, transport)
    s.send(codec.build_greeting([2]) + codec.build_auth_request(user.encode(), b"pw"))
    s.take()
    return s


class LimitSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.rules = parse(LIMITS)

    def request(self, user: str, factory: Any = None) -> Session:
        """A CONNECT of C{user} (on C{factory}'s server, if given); the session."""
        s = login(user, self.reactor, self.rules, factory)
        s.send(connect_request("10.9.8.7", 80))
        return s

    def test_a_disabled_limit_refuses_with_x02_and_one_escaped_line(self) -> None:
        with capturedLogs() as events:
            s = self.request("mallory")
        self.assertEqual(s.take(), b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
        self.assertTrue(s.transport.disconnecting)
        lines = [formatEvent(e) for e in events]
        refused = [line for line in lines if "refused by" in line]
        self.assertEqual(
            refused,
            [
                "refused CONNECT for 127.0.0.1:40000 user=mallory: "
                "refused by [[limit]] #1 (no\\x1bpe): disabled"
            ],
        )
        self.assertEqual(s.factory.gate.limited["limit-disabled"], 1)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_sessions_1_refuses_the_second_until_the_first_ends(self) -> None:
        first = self.request("alice")
        self.assertEqual(len(self.reactor.tcpClients), 1)  # connecting
        second = self.request("alice", first.factory)
        self.assertEqual(second.take()[:2], b"\x05\x02")
        self.assertEqual(first.factory.gate.limited["limit-sessions"], 1)
        bob = self.request("bob", first.factory)  # another user: no such limit
        self.assertEqual(len(self.reactor.tcpClients), 2)
        second.protocol.connectionLost()
        first.protocol.connectionLost()
        third = self.request("alice", first.factory)
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertEqual(
            first.factory.gate.limit_sessions, {(self.rules.limits[1], "user:alice"): 1}
        )
        third.protocol.connectionLost()
        bob.protocol.connectionLost()
        self.assertEqual(first.factory.gate.limit_sessions, {})

    def test_the_session_line_names_its_limit(self) -> None:
        s = self.request("alice")
        remote = s.remote()
        s.take()
        remote.dataReceived(b"hello")
        with capturedLogs() as events:
            s.protocol.connectionLost()
            remote.connectionLost()
        (line,) = [formatEvent(e) for e in events if "session_line" in e]
        self.assertIn(" down=5 ", line)
        self.assertIn(" relay=stream limit=#2 (closed)", line)

    def test_without_a_limit_the_line_is_as_before_and_nothing_is_shaped(self) -> None:
        s = make_session(reactor=self.reactor)  # no rules: no [[limit]]
        s.send(NO_AUTH_GREETING + connect_request("10.9.8.7", 80))
        s.remote()
        self.assertIsNone(s.protocol.shaping)
        with capturedLogs() as events:
            s.protocol.connectionLost()
        (line,) = [formatEvent(e) for e in events if "session_line" in e]
        self.assertNotIn("limit=", line)

    def test_a_reload_applies_new_rates_and_closes_the_newly_disabled(self) -> None:
        s = self.request("alice")
        remote = s.remote()
        shaping = s.protocol.shaping
        (bucket,) = shaping.down.buckets
        self.assertEqual(bucket.rate, 1 << 20)
        faster = LIMITS.replace('bandwidth = "1MiB/s"', 'bandwidth = "3MiB/s"')
        s.factory.rules = parse(faster)
        self.assertEqual(bucket.rate, 3 << 20)  # the same shared bucket, the new rate
        self.assertFalse(s.transport.disconnecting)
        # Now alice is disabled: her running session is closed.
        with capturedLogs() as events:
            s.factory.rules = parse(LIMITS.replace('users = ["mallory"]', 'users = ["alice"]'))
        self.assertTrue(s.transport.disconnecting)
        self.assertTrue(remote.transport.disconnecting)
        self.assertEqual(
            s.protocol.outcome, "closed by [[limit]] #1 (no\\x1bpe): disabled at reload"
        )
        self.assertIn(
            "closing the session of 127.0.0.1:40000 user=alice: "
            "[[limit]] #1 (no\\x1bpe) is disabled now",
            [formatEvent(e) for e in events],
        )
        self.assertEqual(shaping.down.buckets, ())


class ShapedUDPTests(SynchronousTestCase):
    """Datagrams count against the bandwidth; one over the budget is dropped, not queued."""

    def test_a_datagram_finding_the_budget_in_debt_is_dropped_and_counted(self) -> None:
        reactor = UDPReactor()
        s = make_session(reactor=reactor, rules=parse(LIMITS))  # anonymous UDP: 1000 B/s
        s.factory.shaper = Shaper(reactor.seconds)
        s.send(NO_AUTH_GREETING)
        s.send(codec.build_request(Command.UDP_ASSOCIATE, Address.for_ip("0.0.0.0", 0)))
        relay = reactor.udp[0]
        payload = b"x" * 3000  # a full bucket holds 4096 bytes
        for _ in range(3):
            relay.receive(datagram("10.1.2.3", 53, payload), CLIENT)
        remote = reactor.udp[1]
        self.assertEqual(len(remote.sent), 2)  # the second went into debt; the third found it
        reactor.advance(2.0)  # paid, and 96 bytes in hand
        relay.receive(datagram("10.1.2.3", 53, payload), CLIENT)
        self.assertEqual(len(remote.sent), 3)
        for _ in range(3):
            remote.receive(payload, ("10.1.2.3", 53))  # the other direction: its own bucket
        self.assertEqual(len(relay.sent), 2)
        with capturedLogs() as events:
            s.protocol.connectionLost()
        (line,) = [formatEvent(e) for e in events if "session_line" in e]
        self.assertIn(" datagrams=3/2 dropped=bandwidth:2 ", line)
        self.assertIn(" limit=#3 (closed)", line)
