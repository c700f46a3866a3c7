"""BIND through in-memory reactors: both replies, the peer check, timeouts, cleanup."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import codec
from socks5twist.codec import Address, AddressType, Command, Reply
from socks5twist.connection import MAX_PENDING
from socks5twist.session import State

from .helpers import NO_AUTH_GREETING, HalfCloseTransport, Session, make_session


class RecordingPort:
    """A listening port that remembers whether it was closed."""

    def __init__(self, factory: Any, host: Any) -> None:
        self.factory = factory
        self.host = host
        self.listening = True

    def getHost(self) -> Any:
        return self.host

    def stopListening(self) -> None:
        self.listening = False


class BindReactor(MemoryReactorClock):
    """A memory reactor whose listeners get real-looking port numbers."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__()
        self.ports: list[RecordingPort] = []
        self.fail = fail

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if self.fail is not None:
            raise self.fail
        super().listenTCP(port, factory, backlog, interface)
        cls = IPv6Address if ":" in interface else IPv4Address
        recorded = RecordingPort(factory, cls("TCP", interface, 40000 + len(self.ports)))
        self.ports.append(recorded)
        return recorded


def bind_session(
    dst: Address, reactor: BindReactor | None = None, host: Any = None, **kwargs: Any
) -> Session:
    reactor = reactor or BindReactor()
    s = make_session(reactor=reactor, **kwargs)
    if host is not None:
        s.transport.hostAddr = host
    s.send(NO_AUTH_GREETING)
    s.take()
    s.send(codec.build_request(Command.BIND, dst))
    return s


def arrive(s: Session, peer: Any) -> Any:
    """A connection from C{peer} reaches the BIND listener; its protocol, or None."""
    port = s.reactor.ports[-1]  # type: ignore[attr-defined]
    protocol = port.factory.buildProtocol(peer)
    if protocol is not None:
        transport = HalfCloseTransport(hostAddress=port.host, peerAddress=peer)
        protocol.makeConnection(transport)
    return protocol


APP_SERVER = Address(AddressType.IPV4, "192.0.2.10", 21)


class BindTests(SynchronousTestCase):
    def test_first_reply_names_the_listener_on_the_control_address(self) -> None:
        s = bind_session(APP_SERVER)
        [(_, _, _, interface)] = s.reactor.tcpServers
        self.assertEqual(interface, "127.0.0.1")
        self.assertEqual(s.take(), b"\x05\x00\x00\x01\x7f\x00\x00\x01" + (40000).to_bytes(2, "big"))
        self.assertIs(s.protocol.state, State.BINDING)

    def test_second_reply_names_the_peer_and_data_flows(self) -> None:
        s = bind_session(APP_SERVER)
        s.take()
        peer = arrive(s, IPv4Address("TCP", "192.0.2.10", 20))
        self.assertEqual(s.take(), b"\x05\x00\x00\x01\xc0\x00\x02\x0a\x00\x14")
        self.assertFalse(s.reactor.ports[0].listening, "the listener outlived its one peer")
        self.assertIs(s.protocol.state, State.RELAYING)
        s.send(b"to peer")
        peer.dataReceived(b"to client")
        self.assertEqual(peer.transport.value(), b"to peer")
        self.assertEqual(s.take(), b"to client")

    def test_wrong_peer_is_closed_and_the_wait_goes_on(self) -> None:
        s = bind_session(APP_SERVER)
        s.take()
        with capturedLogs() as logs:
            self.assertIsNone(arrive(s, IPv4Address("TCP", "192.0.2.99", 20)))
        self.assertTrue(any("192.0.2.99" in str(e.get("peer")) for e in logs))
        self.assertTrue(s.reactor.ports[0].listening)
        self.assertEqual(s.take(), b"")
        arrive(s, IPv4Address("TCP", "192.0.2.10", 20))
        self.assertEqual(s.take()[:2], b"\x05\x00")

    def test_only_one_peer_is_accepted(self) -> None:
        s = bind_session(Address.for_ip("0.0.0.0", 0))
        arrive(s, IPv4Address("TCP", "192.0.2.1", 1))
        self.assertIsNone(arrive(s, IPv4Address("TCP", "192.0.2.2", 1)))

    def test_zero_address_accepts_any_peer(self) -> None:
        for dst in (Address.for_ip("0.0.0.0", 0), Address.for_ip("::", 0)):
            s = bind_session(dst)
            s.take()
            self.assertIsNotNone(arrive(s, IPv4Address("TCP", "203.0.113.5", 1)))
            self.assertEqual(s.take()[:2], b"\x05\x00")

    def test_mapped_peer_address_matches_ipv4(self) -> None:
        s = bind_session(APP_SERVER)
        self.assertIsNotNone(arrive(s, IPv6Address("TCP", "::ffff:192.0.2.10", 1)))

    def test_domain_name_accepts_its_addresses(self) -> None:
        # The memory reactor resolves every name to 127.0.0.1.
        s = bind_session(Address(AddressType.DOMAIN, "ftp.example", 21))
        s.take()
        self.assertIsNone(arrive(s, IPv4Address("TCP", "192.0.2.10", 1)))
        self.assertIsNotNone(arrive(s, IPv4Address("TCP", "127.0.0.1", 1)))

    def test_ipv6_control_connection_gets_an_ipv6_listener(self) -> None:
        s = bind_session(Address.for_ip("::1", 0), host=IPv6Address("TCP", "::1", 1080))
        self.assertEqual(s.reactor.tcpServers[0][3], "::1")
        reply = s.take()
        self.assertEqual(len(reply), 22)
        self.assertEqual(reply[:4], b"\x05\x00\x00\x04")

    def test_external_address_is_advertised(self) -> None:
        s = bind_session(APP_SERVER, external_address="203.0.113.80")
        self.assertEqual(s.reactor.tcpServers[0][3], "127.0.0.1")
        self.assertEqual(s.take()[4:8], bytes([203, 0, 113, 80]))

    def test_timeout_is_x04_and_closes_the_listener(self) -> None:
        s = bind_session(APP_SERVER, bind_timeout=30)
        s.take()
        s.reactor.advance(29)
        self.assertEqual(s.take(), b"")
        s.reactor.advance(2)
        self.assertEqual(s.take(), b"\x05\x04\x00\x01" + b"\x00" * 6)
        self.assertTrue(s.transport.disconnecting)
        self.assertFalse(s.reactor.ports[0].listening)

    def test_client_hanging_up_closes_the_listener_at_once(self) -> None:
        s = bind_session(APP_SERVER)
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertFalse(s.reactor.ports[0].listening)
        self.assertEqual(s.reactor.getDelayedCalls(), [])

    def test_client_eof_while_waiting_closes_the_listener(self) -> None:
        s = bind_session(APP_SERVER)
        s.protocol.readConnectionLost()
        self.assertFalse(s.reactor.ports[0].listening)
        self.assertTrue(s.transport.disconnecting)

    def test_listen_failure_is_x01(self) -> None:
        reactor = BindReactor(fail=error.CannotListenError("127.0.0.1", 0, OSError("no")))
        s = bind_session(APP_SERVER, reactor=reactor)
        self.assertEqual(s.take(), b"\x05\x01\x00\x01" + b"\x00" * 6)
        self.assertTrue(s.transport.disconnecting)

    def test_unix_control_connection_needs_an_external_address(self) -> None:
        s = bind_session(APP_SERVER, host=UNIXAddress(b"/tmp/s"), peer=UNIXAddress(b"/tmp/s"))
        self.assertEqual(s.take(), b"\x05\x01\x00\x01" + b"\x00" * 6)
        s = bind_session(
            APP_SERVER,
            host=UNIXAddress(b"/tmp/s"),
            peer=UNIXAddress(b"/tmp/s"),
            external_address="192.0.2.80",
        )
        self.assertEqual(s.reactor.tcpServers[0][3], "0.0.0.0")
        self.assertEqual(s.take()[4:8], bytes([192, 0, 2, 80]))

    def test_client_data_while_waiting_is_kept_and_bounded(self) -> None:
        s = bind_session(APP_SERVER)
        s.send(b"early")
        peer = arrive(s, IPv4Address("TCP", "192.0.2.10", 20))
        self.assertEqual(peer.transport.value(), b"early")
        s = bind_session(APP_SERVER)
        s.send(b"x" * (MAX_PENDING + 1))
        self.assertTrue(s.transport.disconnecting)
        self.assertFalse(s.reactor.ports[0].listening)

    def test_log_line_has_listener_peer_and_both_replies(self) -> None:
        s = bind_session(APP_SERVER)
        with capturedLogs() as logs:
            arrive(s, IPv4Address("TCP", "192.0.2.10", 20))
            s.protocol.connectionLost(error.ConnectionDone())
        [line] = [e for e in logs if "session_line" in e]
        self.assertEqual(line["command"], "BIND")
        self.assertEqual(line["bound"], "127.0.0.1:40000")
        self.assertEqual(line["connected"], "192.0.2.10:20")
        self.assertEqual(line["reply"], "0x00/0x00")

    def test_failure_replies_never_leak_a_listener(self) -> None:
        s = bind_session(APP_SERVER, bind_timeout=1)
        s.reactor.advance(1)
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertEqual([p.listening for p in s.reactor.ports], [False])
        self.assertEqual(s.reactor.getDelayedCalls(), [])
        self.assertEqual(s.protocol.replies, [Reply.SUCCEEDED, Reply.HOST_UNREACHABLE])
