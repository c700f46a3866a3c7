"""
L{SOCKS5ClientEndpoint} without a reactor: a fake proxy endpoint whose
connection the test completes (or fails) with an in-memory transport, the
proxy's bytes written by the test, time moved by a L{Clock}.  Chains and
socks5twist's own server: C{test_client_composed}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, NoProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from socks5twist import codec
from socks5twist.client import (
    SOCKS5ClientEndpoint,
    TunnelTransport,
    errors,
)
from socks5twist.codec import Address, AddressType

from .helpers import HalfCloseTransport

PROXY = IPv4Address("TCP", "127.0.0.1", 1080)
BOUND = Address(AddressType.IPV4, "198.51.100.9", 40001)
SUCCESS = codec.build_reply(0, BOUND)
REQUEST = codec.build_request(
    codec.Command.CONNECT, Address(AddressType.DOMAIN, "example.org", 443)
)


@implementer(IStreamClientEndpoint)
class FakeProxy:
    """An IStreamClientEndpoint whose connection attempts the test completes."""

    def __init__(self, cancellable: bool = True) -> None:
        self.attempts: list[tuple[Any, Deferred[Any]]] = []
        self.cancelled = 0
        self.cancellable = cancellable

    def connect(self, factory: Any) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel if self.cancellable else None)
        self.attempts.append((factory, d))
        return d

    def complete(self, index: int = -1) -> tuple[Any, Any]:
        factory, d = self.attempts[index]
        protocol = factory.buildProtocol(PROXY)
        transport: Any = HalfCloseTransport(peerAddress=PROXY)
        transport.protocol = protocol  # for the test to reach
        protocol.makeConnection(transport)
        if not d.called:
            d.callback(protocol)
        return protocol, transport


class Recorder(Protocol):
    """The caller's protocol: records what it saw."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.received = b""
        self.pause_on_connect = False

    def connectionMade(self) -> None:
        self.events.append("made")
        if self.pause_on_connect:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.events.append(("lost", reason.type))


@implementer(IHalfCloseableProtocol)
class HalfCloseRecorder(Recorder):
    def readConnectionLost(self) -> None:
        self.events.append("read closed")

    def writeConnectionLost(self) -> None:
        self.events.append("write closed")


class EndpointCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy = FakeProxy()
        self.recorder: Recorder = Recorder()

    def endpoint(self, host: str = "example.org", port: int = 443, **kwargs: Any) -> Any:
        kwargs.setdefault("reactor", self.clock)
        return SOCKS5ClientEndpoint(self.proxy, host, port, **kwargs)

    def connect(self, **kwargs: Any) -> tuple[Deferred[Any], Any, Any]:
        """connect(), the proxy reached; returns the Deferred, handshake protocol, transport."""
        d = self.endpoint(**kwargs).connect(Factory.forProtocol(lambda: self.recorder))
        protocol, transport = self.proxy.complete()
        return d, protocol, transport

    def opened(self, after: bytes = b"") -> tuple[Recorder, Any]:
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"\x05\x00")
        protocol.dataReceived(SUCCESS + after)
        self.assertIs(self.successResultOf(d), self.recorder)
        return self.recorder, transport

    def failed(self, d: Deferred[Any], cls: type[Exception]) -> Any:
        return self.failureResultOf(d, cls).value


class SuccessTests(EndpointCase):
    def test_greeting_request_and_the_tunnel(self) -> None:
        d, protocol, transport = self.connect()
        self.assertEqual(transport.value(), b"\x05\x01\x00")
        transport.clear()
        protocol.dataReceived(b"\x05\x00")
        self.assertEqual(transport.value(), REQUEST)
        self.assertNoResult(d)
        self.assertEqual(self.recorder.events, [])
        transport.clear()
        protocol.dataReceived(SUCCESS)
        self.assertIs(self.successResultOf(d), self.recorder)
        self.assertEqual(self.recorder.events, ["made"])
        protocol.dataReceived(b"hello")
        self.recorder.transport.write(b"world")  # type: ignore[union-attr]
        self.assertEqual(transport.value(), b"world")
        self.assertEqual(self.recorder.received, b"hello")
        self.assertFalse(transport.disconnecting)

    def test_the_transport_tells_destination_and_bound_address(self) -> None:
        recorder, transport = self.opened()
        tunnel = recorder.transport
        assert isinstance(tunnel, TunnelTransport)
        self.assertEqual(tunnel.getPeer(), HostnameAddress(b"example.org", 443))
        self.assertEqual(tunnel.getHost(), IPv4Address("TCP", "198.51.100.9", 40001))
        self.assertEqual(tunnel.bound, BOUND)
        self.assertIs(tunnel.proxy_transport, transport)

    def test_ip_destinations_and_an_ipv6_bound_address(self) -> None:
        for host, peer in [
            ("192.0.2.1", IPv4Address("TCP", "192.0.2.1", 80)),
            ("[2001:DB8::1]", IPv6Address("TCP", "2001:db8::1", 80)),
            ("::ffff:192.0.2.1", IPv4Address("TCP", "192.0.2.1", 80)),
        ]:
            d = self.endpoint(host, 80).connect(Factory.forProtocol(Recorder))
            protocol, transport = self.proxy.complete()
            protocol.dataReceived(b"\x05\x00")
            wire = Address.for_ip(host.strip("[]"), 80).pack()
            self.assertEqual(transport.value()[3:], b"\x05\x01\x00" + wire)
            protocol.dataReceived(codec.build_reply(0, Address.for_ip("2001:db8::2", 9)))
            tunnel = self.successResultOf(d).transport
            self.assertEqual(tunnel.getPeer(), peer)
            self.assertEqual(tunnel.getHost(), IPv6Address("TCP", "2001:db8::2", 9))

    def test_names_go_unresolved_in_canonical_form(self) -> None:
        self.endpoint("Bücher.EXAMPLE.", 80).connect(Factory.forProtocol(Recorder))
        protocol, transport = self.proxy.complete()
        protocol.dataReceived(b"\x05\x00")
        self.assertEqual(transport.value()[3:], b"\x05\x01\x00\x03\x15xn--bcher-kva.example\x00P")

    def test_password_accepted(self) -> None:
        d, protocol, transport = self.connect(username="alice", password="pä55")
        self.assertEqual(transport.value(), b"\x05\x02\x00\x02")
        transport.clear()
        protocol.dataReceived(b"\x05\x02")
        self.assertEqual(transport.value(), b"\x01\x05alice\x05p\xc3\xa455")
        transport.clear()
        protocol.dataReceived(b"\x01\x00")
        self.assertEqual(transport.value(), REQUEST)
        protocol.dataReceived(SUCCESS)
        self.successResultOf(d)

    def test_early_data_after_the_reply_is_delivered_after_connection_made(self) -> None:
        recorder, _ = self.opened(after=b"early bytes")
        self.assertEqual(recorder.events, ["made", ("data", b"early bytes")])

    def test_early_data_waits_while_the_protocol_pauses(self) -> None:
        self.recorder.pause_on_connect = True
        recorder, transport = self.opened(after=b"early")
        self.assertEqual(recorder.events, ["made"])
        self.assertEqual(transport.producerState, "paused")
        recorder.transport.resumeProducing()  # type: ignore[union-attr]
        self.assertEqual(recorder.events, ["made", ("data", b"early")])
        self.assertEqual(transport.producerState, "producing")

    def test_flow_control_passes_through(self) -> None:
        recorder, transport = self.opened()
        tunnel = recorder.transport
        assert tunnel is not None
        producer = object()
        tunnel.registerProducer(producer, True)  # type: ignore[attr-defined]
        self.assertIs(transport.producer, producer)
        self.assertTrue(transport.streaming)
        tunnel.unregisterProducer()  # type: ignore[attr-defined]
        self.assertIsNone(transport.producer)
        tunnel.pauseProducing()  # type: ignore[attr-defined]
        self.assertEqual(transport.producerState, "paused")
        tunnel.resumeProducing()  # type: ignore[attr-defined]
        self.assertEqual(transport.producerState, "producing")
        tunnel.stopProducing()  # type: ignore[attr-defined]
        self.assertEqual(transport.producerState, "stopped")

    def test_half_close_reaches_a_half_closeable_protocol(self) -> None:
        self.recorder = HalfCloseRecorder()
        recorder, transport = self.opened()
        handshake = transport.protocol
        handshake.readConnectionLost()
        handshake.writeConnectionLost()
        self.assertEqual(recorder.events, ["made", "read closed", "write closed"])
        self.assertFalse(transport.disconnecting)
        recorder.transport.loseWriteConnection()  # type: ignore[union-attr]
        self.assertTrue(transport.write_closed)

    def test_eof_closes_for_a_protocol_that_cannot_half_close(self) -> None:
        recorder, transport = self.opened()
        transport.protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        transport.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(recorder.events, ["made", ("lost", ConnectionDone)])

    def test_repr_hides_the_password(self) -> None:
        endpoint = self.endpoint(username="alice", password="s3cret")
        self.assertIn("alice", repr(endpoint))
        self.assertNotIn("s3cret", repr(endpoint))
        self.assertIn("example.org:443", repr(endpoint))


class FailureTests(EndpointCase):
    def test_each_reply_code_fails_with_its_class_and_closes(self) -> None:
        for code in range(1, 10):
            d, protocol, transport = self.connect()
            protocol.dataReceived(b"\x05\x00")
            protocol.dataReceived(codec.build_reply(code))
            error = self.failed(d, errors.SOCKS5Error)
            self.assertEqual(error.code, code)
            self.assertIs(type(error), errors.error_for_reply(code).__class__)
            self.assertTrue(transport.disconnected)  # aborted
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(self.recorder.events, [])

    def test_login_rejected_and_no_acceptable_methods(self) -> None:
        d, protocol, transport = self.connect(username="alice", password="s3cret")
        protocol.dataReceived(b"\x05\x02")
        protocol.dataReceived(b"\x01\x01")
        error = self.failed(d, errors.LoginRejected)
        self.assertNotIn("s3cret", str(error))
        self.assertTrue(transport.disconnected)
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"\x05\xff")
        self.failed(d, errors.NoAcceptableMethods)
        self.assertTrue(transport.disconnected)

    def test_garbage_is_a_protocol_error(self) -> None:
        for garbage in [b"HTTP/1.1 400 Bad Request\r\n", b"\x05\x00\x05", b"\x00" * 70000]:
            d, protocol, transport = self.connect()
            protocol.dataReceived(garbage)
            self.failed(d, errors.ProxyProtocolError)
            self.assertTrue(transport.disconnected)
            protocol.dataReceived(b"more garbage is ignored")

    def test_the_proxy_closes_mid_handshake(self) -> None:
        d, protocol, _ = self.connect()
        protocol.dataReceived(b"\x05\x00")
        protocol.connectionLost(Failure(ConnectionDone()))
        error = self.failed(d, errors.ProxyClosedError)
        self.assertEqual(error.phase, "reply")

    def test_a_connection_lost_for_another_reason_fails_with_that_reason(self) -> None:
        """A TLS proxy endpoint's certificate check, say: its error, as it is."""

        class CertificateRejected(Exception):
            pass

        d, protocol, _ = self.connect()
        protocol.connectionLost(Failure(CertificateRejected("certificate verify failed")))
        self.failed(d, CertificateRejected)

    def test_the_proxy_half_closes_mid_handshake(self) -> None:
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"\x05\x00\x05\x00")
        protocol.readConnectionLost()
        self.failed(d, errors.ProxyProtocolError)
        self.assertTrue(transport.disconnected)

    def test_a_proxy_that_never_answers_times_out(self) -> None:
        d, protocol, transport = self.connect(timeout=5)
        protocol.dataReceived(b"\x05\x00")
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        error = self.failed(d, errors.HandshakeTimeout)
        self.assertEqual(
            str(error), "timed out after 5 s waiting for the proxy's reply for example.org:443"
        )
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_success_stops_the_timer(self) -> None:
        self.opened()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_proxy_that_cannot_be_reached_fails_with_its_endpoints_error(self) -> None:
        d = self.endpoint().connect(Factory.forProtocol(Recorder))
        self.proxy.attempts[0][1].errback(ConnectionRefusedError())
        self.failed(d, ConnectionRefusedError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_connection_to_the_proxy_times_out(self) -> None:
        d = self.endpoint(timeout=3).connect(Factory.forProtocol(Recorder))
        self.clock.advance(3)
        error = self.failed(d, errors.HandshakeTimeout)
        self.assertEqual(error.phase, "the connection to the proxy")
        self.assertEqual(self.proxy.cancelled, 1)

    def test_a_factory_without_a_protocol(self) -> None:
        class Refusing(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        d = self.endpoint().connect(Refusing())
        protocol, transport = self.proxy.complete()
        protocol.dataReceived(b"\x05\x00")
        protocol.dataReceived(SUCCESS)
        self.failed(d, NoProtocol)
        self.assertTrue(transport.disconnected)

    def test_bad_arguments(self) -> None:
        cases: list[dict[str, Any]] = [
            {"host": "bad\x00name"},
            {"host": ""},
            {"port": 65536},
            {"port": -1},
            {"username": "alice"},
            {"username": "alice", "password": "x" * 256},
            {"timeout": 0},
        ]
        for kwargs in cases:
            arguments: dict[str, Any] = {"host": "example.org", "port": 443, **kwargs}
            with self.assertRaises(ValueError, msg=repr(kwargs)):
                SOCKS5ClientEndpoint(self.proxy, **arguments)


class CancellationTests(EndpointCase):
    def test_cancel_while_connecting_to_the_proxy(self) -> None:
        d = self.endpoint().connect(Factory.forProtocol(Recorder))
        d.cancel()
        self.failed(d, CancelledError)
        self.assertEqual(self.proxy.cancelled, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_during_the_handshake_aborts_it(self) -> None:
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"\x05\x00")
        d.cancel()
        self.failed(d, CancelledError)
        self.assertTrue(transport.disconnected)
        protocol.dataReceived(SUCCESS)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.recorder.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_connection_that_comes_after_cancel_is_closed_unused(self) -> None:
        self.proxy = FakeProxy(cancellable=False)
        d = self.endpoint().connect(Factory.forProtocol(Recorder))
        d.cancel()
        self.failed(d, CancelledError)
        _, transport = self.proxy.complete()
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnected)

    def test_cancel_after_success_does_nothing(self) -> None:
        d, protocol, transport = self.connect()
        protocol.dataReceived(b"\x05\x00")
        protocol.dataReceived(SUCCESS)
        d.cancel()
        self.successResultOf(d)
        self.assertFalse(transport.disconnecting)
