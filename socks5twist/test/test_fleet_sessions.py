"""
The C{sessions} of a C{[[limit]]} held across a fleet, through a session in
memory and a store whose thread the test runs by hand: the request waits
for the lease (nothing connects meanwhile), a full fleet refuses with X'02',
a lease that comes after the client left is given back, and a store that is
away or silent admits on the local count (C{open}) or refuses with X'01'
(C{closed}), one line each time it goes and comes back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from socks5twist.accounting.fleet import ANSWER_WITHIN, RENEW_EVERY, FleetSessions
from socks5twist.rules import parse

from .helpers import Session, connect_request
from .test_accounting import FakeThread, MemoryStore
from .test_limit_sessions import login

RULES = """\
default = "allow"

[[limit]]
users = ["alice"]
sessions = 2
"""


class LeaseStore(MemoryStore):
    """L{MemoryStore} with leases (no expiry: the tests of Redis have that)."""

    def __init__(self) -> None:
        super().__init__()
        self.sets: dict[bytes, set[str]] = {}
        self.unleased: list[str] = []

    def lease(self, name: bytes, member: str, most: int, ttl: float) -> bool:
        if self.fail:
            raise OSError("connection refused")
        held = self.sets.setdefault(name, set())
        if member not in held and len(held) >= most:
            return False
        held.add(member)
        return True

    def renew(self, leases: Mapping[bytes, Collection[str]], ttl: float) -> None:
        if self.fail:
            raise OSError("connection refused")
        for name, members in leases.items():
            self.sets.setdefault(name, set()).update(members)

    def unlease(self, name: bytes, member: str) -> None:
        self.unleased.append(member)
        self.sets.get(name, set()).discard(member)


class FleetSessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.rules = parse(RULES)
        self.store = LeaseStore()
        self.name = b"socks5twist:sessions:1:user:alice"

    def factory(self, failure: str = "open") -> Any:
        from socks5twist.factory import SOCKS5ServerFactory

        from .helpers import memory_portal

        factory = SOCKS5ServerFactory(
            memory_portal(alice="pw", bob="pw"),
            reactor=self.reactor,
            rules=self.rules,
            accounting=self.store,
            accounting_failure=failure,
        )
        accountant = factory.accountant
        assert accountant is not None
        self.thread = accountant.thread = FakeThread(self.store)
        factory.fleet = accountant.fleet = FleetSessions(self.reactor, accountant)
        accountant.start()
        self.addCleanup(accountant.stop)
        return factory

    def request(self, factory: Any, user: str = "alice") -> Session:
        s = login(user, self.reactor, self.rules, factory)
        s.send(connect_request("10.9.8.7", 80))
        return s

    def test_the_request_waits_for_its_lease_then_connects(self) -> None:
        factory = self.factory()
        self.thread.hold = True
        s = self.request(factory)
        self.assertEqual(self.reactor.tcpClients, [])  # waiting: nothing connected
        self.assertEqual(s.take(), b"")
        self.thread.release()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(len(self.store.sets[self.name]), 1)
        s.protocol.connectionLost()
        self.thread.release()
        self.assertEqual(self.store.sets[self.name], set())

    def test_a_fleet_that_is_full_refuses_with_x02_and_a_line(self) -> None:
        factory = self.factory()
        self.store.sets[self.name] = {"other-host:1", "other-host:2"}  # another process's
        with capturedLogs() as events:
            s = self.request(factory)
        self.assertEqual(s.take()[:2], b"\x05\x02")
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertIn(
            "refused CONNECT for 127.0.0.1:40000 user=user:alice: refused by [[limit]] #1:"
            " 2 sessions open in the fleet (sessions = 2)",
            [formatEvent(e) for e in events],
        )
        bob = self.request(factory, "bob")  # under no limit: never waits
        self.assertEqual(len(self.reactor.tcpClients), 1)
        bob.protocol.connectionLost()

    def test_a_lease_that_comes_after_the_client_left_is_given_back(self) -> None:
        factory = self.factory()
        self.thread.hold = True
        with capturedLogs() as events:
            s = self.request(factory)
            s.protocol.connectionLost()
            self.thread.release()  # the lease is taken now, for nobody...
            self.thread.release()  # ...and given back
        self.assertEqual(self.store.sets[self.name], set())
        self.assertEqual(len(self.store.unleased), 1)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(factory.fleet.leases, {})
        self.assertFalse([e for e in events if e.get("log_failure")])

    def test_open_admits_on_the_local_count_while_the_store_is_away(self) -> None:
        factory = self.factory("open")
        self.store.fail = True
        with capturedLogs() as events:
            first = self.request(factory)  # the lease fails: admitted, the store is away
            second = self.request(factory)  # not even asked
            third = self.request(factory)  # the local count still holds
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(third.take()[:2], b"\x05\x02")
        lines = [formatEvent(e) for e in events]
        away = [line for line in lines if "NOT written" in line]
        self.assertEqual(len(away), 1, lines)
        self.assertEqual(factory.fleet.admitted_unchecked, 2)
        # Back: the next renewal writes the leases taken meanwhile.
        self.store.fail = False
        with capturedLogs() as events:
            self.reactor.advance(RENEW_EVERY)
        self.assertEqual(len(self.store.sets.get(self.name, ())), 2)
        self.assertEqual([formatEvent(e) for e in events], ["accounting written to memory: again"])
        first.protocol.connectionLost()
        second.protocol.connectionLost()
        self.assertEqual(self.store.sets[self.name], set())

    def test_closed_refuses_with_x01_while_the_store_is_away(self) -> None:
        factory = self.factory("closed")
        self.store.fail = True
        with capturedLogs() as events:
            first = self.request(factory)
            second = self.request(factory)
            bob = self.request(factory, "bob")  # under no fleet limit: served
        self.assertEqual(first.take()[:2], b"\x05\x01")
        self.assertEqual(second.take()[:2], b"\x05\x01")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        lines = [formatEvent(e) for e in events]
        self.assertIn(
            "refused CONNECT for 127.0.0.1:40000: [[limit]] #1 counts sessions in memory:,"
            " which is away (--accounting-failure closed)",
            lines,
        )
        self.assertEqual(factory.fleet.refused, 2)
        bob.protocol.connectionLost()

    def test_a_store_that_does_not_answer_is_judged_away_after_a_bound(self) -> None:
        for failure, reply in (("open", None), ("closed", b"\x05\x01")):
            factory = self.factory(failure)
            self.thread.hold = True
            s = self.request(factory)
            self.reactor.advance(ANSWER_WITHIN)
            self.assertTrue(factory.accountant.away)
            if reply is None:
                self.assertEqual(len(self.reactor.tcpClients), 1)
            else:
                self.assertEqual(s.take()[:2], reply)
            self.thread.hold = False
            self.thread.release()  # the late answer
            held = self.store.sets[self.name]
            if reply is None:  # admitted: the late lease is its own, and kept
                self.assertEqual(held, {factory.fleet.leases[s.protocol][1]})
            else:  # refused: the late lease is given back
                self.assertEqual(held, set())
            s.protocol.connectionLost()
            self.reactor.tcpClients.clear()
