"""
L{socks5twist.upstream}: failover over a route's chains on a memory reactor
(the upstreams are scripted byte by byte), the marks of chains that failed,
and which hop a failure is blamed on.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import codec
from socks5twist.client import ConnectionRefused, GSSAPIAborted, GSSAPIError, LoginRejected
from socks5twist.codec import Address, AddressType
from socks5twist.routes import Hop, Route, parse_hop
from socks5twist.upstream import (
    DOWN_FOR,
    AllRoutesFailed,
    Answered,
    HopFailed,
    Routed,
    Upstreams,
    blame,
    connect,
)

A = (Hop("socks5", "10.0.0.1", 1080),)
B = (Hop("socks5", "10.0.0.2", 1080, b"bob", b"pw"),)
TWO = (Hop("socks5", "10.0.0.1", 1080), Hop("http", "10.0.0.3", 3128))
BOUND = Address(AddressType.IPV4, "198.51.100.7", 5000)


class FailoverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.upstreams = Upstreams(self.reactor)
        self.results: list[Any] = []

    def start(self, *chains: tuple[Hop, ...]) -> None:
        d = connect(self.reactor, self.upstreams, Route(chains), "#1", "example.org", 443, 10.0, {})
        d.addBoth(self.results.append)

    def refuse(self, index: int) -> None:
        host, _, factory, _, _ = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError(host))
        )

    def answer(self, index: int, *replies: bytes) -> StringTransport:
        """The upstream of attempt C{index} accepts and answers with C{replies}."""
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        protocol: Any = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for reply in replies:
            protocol.dataReceived(reply)
        return transport

    def test_a_refusing_upstream_is_marked_down_and_the_next_one_opens(self) -> None:
        with capturedLogs() as events:
            self.start(A, B)
            self.assertEqual(self.reactor.tcpClients[0][:2], ("10.0.0.1", 1080))
            self.refuse(0)
        self.assertEqual(self.reactor.tcpClients[1][:2], ("10.0.0.2", 1080))
        transport = self.answer(1, b"\x05\x02", b"\x01\x00", codec.build_reply(0, BOUND))
        self.assertIn(b"\x01\x03bob\x02pw", transport.value())  # RFC 1929, from the hop
        [routed] = self.results
        self.assertIsInstance(routed, Routed)
        self.assertEqual((routed.chain, routed.bound), (B, BOUND))
        self.assertTrue(self.upstreams.is_down(A))
        self.assertEqual(self.upstreams.order([A, B]), [B, A])
        self.assertEqual(self.upstreams.tunnels[("#1", "socks5://10.0.0.2:1080")], 1)
        self.assertEqual(self.upstreams.hop_failures["socks5://10.0.0.1:1080"], 1)
        [line] = [e for e in events if "failed (route" in e["log_format"]]
        self.assertEqual(line["hop"], "socks5://10.0.0.1:1080")
        self.reactor.advance(DOWN_FOR)
        self.assertFalse(self.upstreams.is_down(A))

    def test_an_upstream_that_does_not_answer_times_out_and_the_next_is_tried(self) -> None:
        self.start(A, B)
        self.answer(0)  # connected, but it never answers the greeting
        self.reactor.advance(9.9)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.tcpClients[1][:2], ("10.0.0.2", 1080))
        self.assertTrue(self.upstreams.is_down(A))
        self.assertEqual(self.results, [])

    def test_the_destinations_answer_is_passed_on_without_failover(self) -> None:
        self.start(A, B)
        self.answer(0, b"\x05\x00", codec.build_reply(5))
        [failure] = self.results
        self.assertIsInstance(failure.value, Answered)
        self.assertEqual((failure.value.code, failure.value.chain), (5, A))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertFalse(self.upstreams.is_down(A))

    def test_every_chain_failing_names_each(self) -> None:
        self.start(A, B)
        self.refuse(0)
        self.answer(1, b"\x05\x02", b"\x01\x01")  # B refuses our password
        [failure] = self.results
        self.assertIsInstance(failure.value, AllRoutesFailed)
        labels = [label for label, _ in failure.value.tried]
        self.assertEqual(labels, ["socks5://10.0.0.1:1080", "socks5://10.0.0.2:1080"])
        self.assertIn("refused the password of user bob", failure.value.tried[1][1])
        self.assertNotIn("pw", str(failure.value).replace("password", ""))
        self.assertEqual(self.upstreams.route_failures["#1"], 1)

    def test_a_chain_marked_down_fails_again_without_a_second_line(self) -> None:
        with capturedLogs() as events:
            for _ in range(2):
                self.start(A)
                self.refuse(len(self.reactor.tcpClients) - 1)
        self.assertEqual(len([e for e in events if "failed (route" in e["log_format"]]), 1)
        self.assertEqual(self.upstreams.hop_failures["socks5://10.0.0.1:1080"], 2)

    def test_a_two_hop_chain_asks_the_first_hop_for_the_second(self) -> None:
        self.start(TWO)
        transport = self.answer(0, b"\x05\x00")
        request = codec.build_request(
            codec.Command.CONNECT, Address(AddressType.IPV4, "10.0.0.3", 3128)
        )
        self.assertTrue(transport.value().endswith(request))


class BlameTests(SynchronousTestCase):
    def test_the_hop_that_could_not_be_reached_or_refused_us(self) -> None:
        refused_by_first = Failure(HopFailed(1, Failure(ConnectionRefused())))
        self.assertEqual(blame(TWO, refused_by_first)[0], TWO[1])  # type: ignore[index]
        login = Failure(HopFailed(1, Failure(LoginRejected(1, b"bob"))))
        self.assertEqual(blame(TWO, login)[0], TWO[0])  # type: ignore[index]
        unreachable = Failure(HopFailed(0, Failure(ConnectionRefusedError())))
        self.assertEqual(blame(TWO, unreachable)[0], TWO[0])  # type: ignore[index]

    def test_a_tls_failure_is_the_hop_whose_connection_it_lost(self) -> None:
        # The endpoint that talks to hop 0 (tagged 1: it reaches hop 1) lost
        # its connection with a TLS error: hop 0's certificate failed.
        first = Failure(HopFailed(1, Failure(ValueError("certificate verify failed"))))
        self.assertEqual(blame(TWO, first)[0], TWO[0])  # type: ignore[index]
        # The outermost endpoint talks to the last hop: its TLS failed.
        last = blame(TWO, Failure(ValueError("certificate verify failed")))
        self.assertEqual(last, (TWO[1], "certificate verify failed"))

    def test_a_gssapi_failure_is_the_kerberised_hops(self) -> None:
        gss = parse_hop("socks5+gssapi://proxy.test:1080", {})
        chain = (gss, Hop("socks5", "10.0.0.2", 1080))
        # Its abort, while asking it for the next hop: the GSSAPI hop's fault.
        aborted = Failure(HopFailed(1, Failure(GSSAPIAborted())))
        self.assertEqual(
            blame(chain, aborted),
            (gss, "GSSAPI with the proxy failed: the proxy refused (it sent an abort, X'01 FF')"),
        )
        # No ticket, with the last hop: the last hop's.
        no_ticket = Failure(GSSAPIError("no credentials"))
        self.assertEqual(blame(chain[::-1], no_ticket)[0], gss)  # type: ignore[index]
        self.assertEqual(gss.label, "socks5+gssapi://proxy.test:1080")

    def test_the_last_hops_failure_reply_is_no_ones_fault(self) -> None:
        self.assertIsNone(blame(TWO, Failure(ConnectionRefused())))
