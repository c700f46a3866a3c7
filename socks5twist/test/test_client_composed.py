"""
L{SOCKS5ClientEndpoint} composed: nested in itself (a chain of proxies), and
negotiating with socks5twist's own server over C{twisted.test.iosim}, all
without a reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import HostnameAddress, IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer

from socks5twist import SOCKS5ServerFactory, codec
from socks5twist.client import SOCKS5ClientEndpoint, errors
from socks5twist.codec import Address, AddressType

from .helpers import memory_portal
from .test_client_endpoint import PROXY, REQUEST, SUCCESS, EndpointCase, Recorder


@implementer(IStreamClientEndpoint)
class ServerEndpoint:
    """A proxy endpoint that is socks5twist's own server, over iosim."""

    def __init__(self, factory: SOCKS5ServerFactory) -> None:
        self.factory = factory
        self.pumps: list[iosim.IOPump] = []

    def connect(self, client_factory: Any) -> Deferred[Any]:
        client_address = IPv4Address("TCP", "127.0.0.1", 50000 + len(self.pumps))
        server = self.factory.buildProtocol(client_address)
        client = client_factory.buildProtocol(PROXY)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, True, PROXY, client_address),
            client,
            iosim.FakeTransport(client, False, client_address, PROXY),
        )
        self.pumps.append(pump)
        return succeed(client)


class AgainstOurServerTests(unittest.TestCase):
    def negotiate(self, portal: Any = None, **kwargs: Any) -> tuple[Deferred[Any], Any]:
        reactor = MemoryReactorClock()
        server = ServerEndpoint(SOCKS5ServerFactory(portal, reactor=reactor, splice=False))
        endpoint = SOCKS5ClientEndpoint(server, "192.0.2.10", 8080, reactor=Clock(), **kwargs)
        d = endpoint.connect(Factory.forProtocol(Recorder))
        server.pumps[-1].flush()
        return d, (reactor, server.pumps[-1])

    def test_connect_with_a_password_and_data_both_ways(self) -> None:
        d, (reactor, pump) = self.negotiate(
            memory_portal(alice="pw"), username="alice", password="pw"
        )
        self.assertEqual(reactor.tcpClients[0][:2], ("192.0.2.10", 8080))
        outbound = reactor.tcpClients[0][2].buildProtocol(None)
        far = StringTransport(hostAddress=IPv4Address("TCP", "203.0.113.5", 33333))
        outbound.makeConnection(far)
        pump.flush()
        recorder = self.successResultOf(d)
        self.assertEqual(recorder.transport.getHost(), IPv4Address("TCP", "203.0.113.5", 33333))
        recorder.transport.write(b"ping")
        pump.flush()
        self.assertEqual(far.value(), b"ping")
        outbound.dataReceived(b"pong")
        pump.flush()
        self.assertEqual(recorder.received, b"pong")

    def test_a_wrong_password_is_login_rejected(self) -> None:
        d, (reactor, pump) = self.negotiate(
            memory_portal(alice="pw"), username="alice", password="no"
        )
        pump.flush()
        self.failureResultOf(d, errors.LoginRejected)
        self.assertEqual(reactor.tcpClients, [])

    def test_no_password_for_a_server_that_wants_one(self) -> None:
        d, _ = self.negotiate(memory_portal(alice="pw"))
        self.failureResultOf(d, errors.NoAcceptableMethods)

    def test_a_refused_destination_is_x05(self) -> None:
        d, (reactor, pump) = self.negotiate()
        connector = reactor.connectors[0]
        reactor.tcpClients[0][2].clientConnectionFailed(
            connector, Failure(ConnectionRefusedError())
        )
        pump.flush()
        self.assertEqual(self.failureResultOf(d, errors.ConnectionRefused).value.code, 5)


class ChainTests(EndpointCase):
    """Nested endpoints: the outer negotiation runs inside the inner tunnel."""

    def chain(self) -> tuple[Deferred[Any], Any, Any]:
        hop = self.endpoint("hop2.test", 1080)
        outer = SOCKS5ClientEndpoint(hop, "example.org", 443, "bob", "pw", reactor=self.clock)
        d = outer.connect(Factory.forProtocol(lambda: self.recorder))
        protocol, transport = self.proxy.complete()
        protocol.dataReceived(b"\x05\x00")
        transport.clear()
        return d, protocol, transport

    def test_the_second_hop_is_negotiated_through_the_first(self) -> None:
        d, protocol, transport = self.chain()
        protocol.dataReceived(SUCCESS)
        self.assertEqual(transport.value(), b"\x05\x02\x00\x02")  # the outer greeting
        transport.clear()
        protocol.dataReceived(b"\x05\x02")
        self.assertEqual(transport.value(), b"\x01\x03bob\x02pw")
        transport.clear()
        protocol.dataReceived(b"\x01\x00")
        self.assertEqual(transport.value(), REQUEST)
        transport.clear()
        last = Address(AddressType.IPV4, "203.0.113.7", 5555)
        protocol.dataReceived(codec.build_reply(0, last) + b"from the destination")
        recorder = self.successResultOf(d)
        self.assertEqual(recorder.received, b"from the destination")
        self.assertEqual(recorder.transport.getHost(), IPv4Address("TCP", "203.0.113.7", 5555))
        self.assertEqual(recorder.transport.getPeer(), HostnameAddress(b"example.org", 443))
        recorder.transport.write(b"up")
        self.assertEqual(transport.value(), b"up")

    def test_the_first_hops_failure_is_the_chains(self) -> None:
        d, protocol, transport = self.chain()
        protocol.dataReceived(codec.build_reply(5))
        error = self.failed(d, errors.ConnectionRefused)
        self.assertIn("hop2.test:1080", str(error))
        self.assertTrue(transport.disconnected)

    def test_cancel_aborts_the_first_hops_negotiation(self) -> None:
        d, _, transport = self.chain()
        d.cancel()
        self.failed(d, CancelledError)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])
