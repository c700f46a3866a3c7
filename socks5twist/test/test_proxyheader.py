"""
The PROXY-protocol listener: the header believed only from trusted peers,
checked before use, and every malformed header a clean close with one log line.
"""

from __future__ import annotations

import struct
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from socks5twist import proxyheader
from socks5twist.proxyheader import V2_SIGNATURE, MalformedHeader
from socks5twist.proxylistener import ProxyHeaderFactory, Refusals

BALANCER = IPv4Address("TCP", "127.0.0.1", 5555)
SOCKET_HOST = IPv4Address("TCP", "127.0.0.1", 1080)
V1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 40123 1080\r\n"


def v2(command: int, family: int, block: bytes, length: int | None = None) -> bytes:
    size = len(block) if length is None else length
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", size) + block


def v2_tcp4(source: str, sport: int) -> bytes:
    import ipaddress

    block = ipaddress.IPv4Address(source).packed + bytes([127, 0, 0, 1])
    return v2(1, 0x11, block + struct.pack("!HH", sport, 1080))


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """The wrapped protocol: what it saw, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.peer: Any = None

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.events.append(data)

    def readConnectionLost(self) -> None:
        self.events.append("eof")

    def writeConnectionLost(self) -> None:
        self.events.append("write closed")

    def connectionLost(self, reason: Any = None) -> None:
        self.events.append("lost")


class ProxyTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.logged: list[LogEvent] = []
        observer = cast(ILogObserver, self.logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self) -> list[str]:
        """The log lines of our modules (no failure may be among them)."""
        ours = [e for e in self.logged if e.get("log_namespace", "").startswith("socks5twist")]
        for event in self.logged:
            self.assertNotIn("log_failure", event, formatEvent(event))
        return [formatEvent(e) for e in ours]

    def connect(
        self,
        peer: Any = BALANCER,
        trusted: tuple[str, ...] = ("127.0.0.1/32",),
        timeout: float = 10.0,
        factory: ProxyHeaderFactory | None = None,
    ) -> tuple[Any, StringTransport, Recorder]:
        """A connection from C{peer} (to a new listener, unless C{factory} is given)."""
        if factory is None:
            inner = Factory.forProtocol(Recorder)
            factory = ProxyHeaderFactory(inner, trusted, reactor=self.reactor, timeout=timeout)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(hostAddress=SOCKET_HOST, peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport, cast(Recorder, protocol.wrappedProtocol)


class UntrustedPeerTests(ProxyTestCase):
    def test_untrusted_peer_is_closed_before_its_header_is_read(self) -> None:
        protocol, transport, inner = self.connect(trusted=("127.0.0.2/32",))
        self.assertTrue(transport.disconnected)
        protocol.dataReceived(V1 + b"\x05\x01\x00")
        self.assertEqual(inner.events, [])
        [line] = self.lines()
        self.assertIn("refused PROXY-protocol connection from 127.0.0.1:5555", line)
        self.assertIn("not a trusted proxy", line)

    def test_no_trusted_proxies_refuses_everyone_and_says_what_to_set(self) -> None:
        _protocol, transport, inner = self.connect(trusted=())
        self.assertTrue(transport.disconnected)
        self.assertEqual(inner.events, [])
        [line] = self.lines()
        self.assertIn("--trusted-proxy", line)
        self.assertIn("trusted_proxies=", line)

    def test_a_flood_of_refusals_folds_into_one_line_per_window(self) -> None:
        listener = ProxyHeaderFactory(Factory.forProtocol(Recorder), ["10.0.0.0/8"])
        listener.refusals.reactor = self.reactor
        for port in range(100):
            self.connect(peer=IPv4Address("TCP", "192.0.2.1", port), factory=listener)
        self.assertEqual(len(self.lines()), 1)
        self.reactor.advance(Refusals.WINDOW)
        lines = self.lines()
        self.assertEqual(len(lines), 2)
        self.assertIn("refused 99 more PROXY-protocol connections within 10s", lines[1])
        self.assertTrue(lines[1].endswith("untrusted peers: 192.0.2.1"), lines[1])
        # A quiet window, then the next refusal is logged at once again.
        self.reactor.advance(Refusals.WINDOW)
        self.connect(peer=IPv4Address("TCP", "192.0.2.9", 1), factory=listener)
        self.assertEqual(len(self.lines()), 3)
        for last in range(2, 9):
            self.connect(peer=IPv4Address("TCP", f"192.0.2.{last}", 1), factory=listener)
        listener.doStop()  # logs what it counted; no timer left behind
        self.assertTrue(
            self.lines()[3].endswith(
                "192.0.2.2, 192.0.2.3, 192.0.2.4, 192.0.2.5, 192.0.2.6 and other addresses"
            ),
            self.lines()[3],
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_unix_peer_is_trusted_only_with_loopback(self) -> None:
        _, transport, _ = self.connect(peer=UNIXAddress(b"/run/s"), trusted=("10.0.0.0/8",))
        self.assertTrue(transport.disconnected)
        _, transport, _ = self.connect(peer=UNIXAddress(b"/run/s"), trusted=("127.0.0.1/32",))
        self.assertFalse(transport.disconnected)


class HeaderTests(ProxyTestCase):
    def test_v1_tcp4_names_the_client_from_its_first_event(self) -> None:
        protocol, _transport, inner = self.connect()
        protocol.dataReceived(V1)
        self.assertEqual(inner.peer, IPv4Address("TCP", "192.0.2.7", 40123))
        self.assertEqual(protocol.getHost(), SOCKET_HOST)  # the socket's own
        self.assertEqual(inner.events, ["made"])
        self.assertEqual(self.lines(), [])

    def test_v1_tcp6(self) -> None:
        protocol, _, inner = self.connect()
        protocol.dataReceived(b"PROXY TCP6 2001:db8::5 ::1 1 65535\r\n")
        self.assertEqual(inner.peer, IPv6Address("TCP", "2001:db8::5", 1))

    def test_v1_unknown_leaves_the_balancer_as_the_client(self) -> None:
        protocol, _, inner = self.connect()
        protocol.dataReceived(b"PROXY UNKNOWN ignored rest\r\nhi")
        self.assertEqual(inner.peer, BALANCER)
        self.assertEqual(inner.events, ["made", b"hi"])

    def test_v2_tcp4(self) -> None:
        protocol, _, inner = self.connect()
        protocol.dataReceived(v2_tcp4("198.51.100.3", 777))
        self.assertEqual(inner.peer, IPv4Address("TCP", "198.51.100.3", 777))

    def test_v2_tcp6_with_tlvs(self) -> None:
        import ipaddress

        block = ipaddress.IPv6Address("2001:db8::9").packed + ipaddress.IPv6Address("::1").packed
        tlv = b"\x01\x00\x02h2"  # ALPN, ignored
        protocol, _, inner = self.connect()
        protocol.dataReceived(v2(1, 0x21, block + struct.pack("!HH", 9, 1080) + tlv))
        self.assertEqual(inner.peer, IPv6Address("TCP", "2001:db8::9", 9))

    def test_v2_local_leaves_the_balancer_as_the_client(self) -> None:
        protocol, _, inner = self.connect()
        protocol.dataReceived(v2(0, 0x00, b""))
        self.assertEqual(inner.peer, BALANCER)

    def test_header_split_across_many_reads(self) -> None:
        protocol, _, inner = self.connect()
        for header in (V1, v2_tcp4("192.0.2.7", 40123)):
            protocol, _, inner = self.connect()
            for i in range(len(header)):
                self.assertEqual(inner.events, [])
                protocol.dataReceived(header[i : i + 1])
            self.assertEqual(inner.peer, IPv4Address("TCP", "192.0.2.7", 40123))

    def test_data_after_the_header_reaches_the_protocol_in_the_same_read(self) -> None:
        protocol, _, inner = self.connect()
        protocol.dataReceived(V1 + b"\x05\x01\x00")
        protocol.dataReceived(b"more")
        self.assertEqual(inner.events, ["made", b"\x05\x01\x00", b"more"])

    def test_half_close_and_loss_pass_through(self) -> None:
        protocol, transport, inner = self.connect()
        protocol.dataReceived(V1)
        protocol.readConnectionLost()
        protocol.writeConnectionLost()
        protocol.connectionLost(None)
        self.assertEqual(inner.events, ["made", "eof", "write closed", "lost"])
        self.assertFalse(transport.disconnecting)

    def test_transport_methods_pass_through(self) -> None:
        protocol, transport, inner = self.connect()
        protocol.dataReceived(V1)
        inner.transport.write(b"reply")  # type: ignore[union-attr]
        inner.transport.pauseProducing()  # type: ignore[union-attr]
        self.assertEqual(transport.value(), b"reply")
        self.assertEqual(transport.producerState, "paused")
        inner.transport.abortConnection()  # type: ignore[union-attr]
        self.assertTrue(transport.disconnected)


MALFORMED = {
    "bad address": b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n",
    "the attack's bad port": b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 PORT\r\n",
    "port over 65535": b"PROXY TCP4 127.0.0.2 127.0.0.1 65536 1\r\n",
    "port with a leading zero": b"PROXY TCP4 127.0.0.2 127.0.0.1 080 1\r\n",
    "wrong family": b"PROXY TCP4 ::1 127.0.0.1 1 2\r\n",
    "IPv4 in TCP6": b"PROXY TCP6 127.0.0.1 ::1 1 2\r\n",
    "scope id": b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
    "a name": b"PROXY TCP4 localhost 127.0.0.1 1 2\r\n",
    "missing fields": b"PROXY TCP4 127.0.0.1 127.0.0.1 1\r\n",
    "extra fields": b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2 3\r\n",
    "unknown protocol": b"PROXY UDP4 127.0.0.1 127.0.0.1 1 2\r\n",
    "garbage": b"\x05\x01\x00",
    "terminal escapes": b"PROXY TCP4 \x1b[31m 127.0.0.1 1 2\r\n",
    "v1 line that never ends": b"PROXY " + b"A" * 200,
    "v2 version 1": V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),
    "v2 unknown command": v2(2, 0x11, bytes(12)),
    "v2 length too short for the family": v2(1, 0x11, bytes(8)),
    "v2 datagram": v2(1, 0x12, bytes(12)),
    "v2 unix": v2(1, 0x31, bytes(216)),
}


class MalformedTests(ProxyTestCase):
    def assert_clean_close(self, data: bytes) -> None:
        protocol, transport, inner = self.connect()
        protocol.dataReceived(data)
        self.assertTrue(transport.disconnecting, data)
        self.assertEqual(inner.events, [], data)
        [line] = self.lines()
        self.assertIn("malformed PROXY header from 127.0.0.1:5555", line)
        self.assertTrue(line.isascii() and line.isprintable(), line)
        protocol.connectionLost(None)
        self.assertEqual(len(self.lines()), 1)
        self.logged.clear()

    def test_every_malformed_header_is_a_clean_close_with_one_line(self) -> None:
        for name, data in MALFORMED.items():
            with self.subTest(name):  # type: ignore[attr-defined]
                self.assert_clean_close(data)

    def test_the_offending_bytes_are_in_the_line_escaped(self) -> None:
        self.assert_clean_close(b"PROXY TCP4 \x1b[31m 127.0.0.1 1 2\r\n")
        protocol, _, _ = self.connect()
        protocol.dataReceived(b"PROXY TCP4 999.1.1.1 x y z\r\n")
        [line] = self.lines()
        self.assertIn("PROXY TCP4 999.1.1.1 x y z", line)
        self.assertIn("an address that is not IPv4", line)

    def test_eof_mid_header_is_one_line(self) -> None:
        protocol, transport, inner = self.connect()
        protocol.dataReceived(V1[:20])
        protocol.readConnectionLost()
        protocol.connectionLost(None)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(inner.events, [])
        [line] = self.lines()
        self.assertIn("ended inside the header: PROXY TCP4 192.0.2.7", line)

    def test_a_trusted_peer_that_sends_nothing_is_no_line(self) -> None:
        """A balancer's plain TCP health check: connect and close."""
        protocol, _, inner = self.connect()
        protocol.readConnectionLost()
        protocol.connectionLost(None)
        self.assertEqual((inner.events, self.lines()), ([], []))

    def test_a_header_that_never_ends_times_out(self) -> None:
        protocol, transport, inner = self.connect(timeout=3)
        protocol.dataReceived(v2_tcp4("192.0.2.7", 1)[:20])
        self.reactor.advance(2.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        [line] = self.lines()
        self.assertIn("not complete after 3s", line)
        self.assertEqual(inner.events, [])

    def test_a_v2_header_is_bounded_by_its_length_field(self) -> None:
        protocol, _transport, inner = self.connect()
        header = v2(1, 0x11, bytes(12) + bytes(0xFFFF - 12))
        protocol.dataReceived(header[:-1])
        self.assertEqual(inner.events, [])
        protocol.dataReceived(header[-1:] + b"x")
        self.assertEqual(inner.events, ["made", b"x"])


class ParserTests(unittest.TestCase):
    def test_need_more_is_not_malformed(self) -> None:
        for header in (V1, v2_tcp4("192.0.2.7", 1)):
            for i in range(len(header)):
                self.assertIsNone(proxyheader.parse(header[:i]))

    def test_malformed_is_the_parsers_own_error(self) -> None:
        for data in MALFORMED.values():
            self.assertRaises(MalformedHeader, proxyheader.parse, data)


class SessionBehindTheListenerTests(ProxyTestCase):
    """The SOCKS5 session behind the wrapper, as C{twistd socks5} and library users build it."""

    def socks_factory(self, **kwargs: Any) -> Any:
        from socks5twist import SOCKS5ServerFactory

        return SOCKS5ServerFactory(reactor=self.reactor, splice=False, **kwargs)

    def test_the_session_sees_the_headers_client_and_the_sockets_own_address(self) -> None:
        factory = self.socks_factory(
            trusted_proxies=["127.0.0.1"], allowed_clients=["192.0.2.0/24"]
        )
        listener = ProxyHeaderFactory(factory)
        protocol = listener.buildProtocol(BALANCER)
        transport = StringTransport(hostAddress=SOCKET_HOST, peerAddress=BALANCER)
        protocol.makeConnection(transport)
        protocol.dataReceived(V1 + b"\x05\x01\x00")
        self.assertEqual(transport.value(), b"\x05\x00")
        [session] = factory.sessions
        self.assertEqual(session.client_text, "192.0.2.7:40123")
        self.assertEqual(str(session.local_ip()), "127.0.0.1")

    def test_the_factory_keyword_without_proxies_refuses_everyone(self) -> None:
        factory = self.socks_factory()
        protocol = ProxyHeaderFactory(factory).buildProtocol(BALANCER)
        transport = StringTransport(hostAddress=SOCKET_HOST, peerAddress=BALANCER)
        protocol.makeConnection(transport)
        self.assertTrue(transport.disconnected)
        self.assertEqual(factory.sessions, set())
        [line] = self.lines()
        self.assertIn("trusted_proxies=", line)

    def test_twisteds_own_proxy_wrapper_is_refused_with_what_to_use(self) -> None:
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        factory = self.socks_factory(trusted_proxies=["127.0.0.1"])
        protocol = HAProxyWrappingFactory(factory).buildProtocol(BALANCER)
        transport = StringTransport(hostAddress=SOCKET_HOST, peerAddress=BALANCER)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 1\r\n\x05\x01\x00")
        self.assertTrue(transport.disconnected)
        self.assertEqual((transport.value(), factory.sessions), (b"", set()))
        [line] = self.lines()
        self.assertIn("refused connection from 127.0.0.1:5555", line)
        self.assertIn("ProxyHeaderFactory", line)


class OptionTests(unittest.TestCase):
    def parse(self, *argv: str) -> Any:
        from socks5twist.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_haproxy_port_without_trusted_proxy_is_a_usage_error_naming_the_option(self) -> None:
        from twisted.python import usage

        e = self.assertRaises(usage.UsageError, self.parse, "--port", "haproxy:tcp:0")
        self.assertIn("--trusted-proxy", str(e))
        self.assertNotIn("\n", str(e))

    def test_trusted_proxy_is_parsed_like_allow_client(self) -> None:
        from twisted.python import usage

        for bad in ("10.0.0.1/8", "balancer.example"):
            self.assertRaises(usage.UsageError, self.parse, "--trusted-proxy", bad)

    def test_haproxy_port_listens_on_the_inner_endpoint_with_our_wrapper(self) -> None:
        from socks5twist.tap import make_factory, proxy_listener

        options = self.parse(
            "--port", "haproxy:tcp:0:interface=127.0.0.1", "--trusted-proxy", "10.0.0.2"
        )
        factory = make_factory(options)
        self.assertEqual([str(n) for n in factory.trusted_proxies], ["10.0.0.2/32"])
        description, listener = proxy_listener(options["ports"][0], factory)
        self.assertEqual(description, "tcp:0:interface=127.0.0.1")
        self.assertIsInstance(listener, ProxyHeaderFactory)
        self.assertEqual(listener.trusted, factory.trusted_proxies)
        self.assertEqual(proxy_listener("tcp:0", factory), ("tcp:0", factory))
