"""UDP ASSOCIATE through a fake datagram reactor: sources, headers, drops, lifetime."""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import codec, rules
from socks5twist.codec import Address, AddressType, Command
from socks5twist.session import State
from socks5twist.udp import Lock, lock_for

from .helpers import NO_AUTH_GREETING, Session, make_session


class FakeUDPPort:
    """A UDP port that records what is written and whether it was closed."""

    def __init__(self, protocol: Any, interface: str, number: int) -> None:
        self.protocol = protocol
        self.interface = interface
        self.number = number
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.listening = True
        self.fail_with: Exception | None = None

    def getHost(self) -> Any:
        cls = IPv6Address if ":" in self.interface else IPv4Address
        return cls("UDP", self.interface, self.number)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        assert (":" in addr[0]) == (":" in self.interface), "family mismatch"
        self.sent.append((data, addr))

    def stopListening(self) -> None:
        self.listening = False

    def receive(self, data: bytes, addr: tuple[str, int]) -> None:
        self.protocol.datagramReceived(data, addr)


class UDPReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.udp: list[FakeUDPPort] = []

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        assert maxPacketSize >= 65535
        fake = FakeUDPPort(protocol, interface, 50000 + len(self.udp))
        self.udp.append(fake)
        return fake


def associate(expected: Address | None = None, **kwargs: Any) -> tuple[Session, FakeUDPPort]:
    reactor = UDPReactor()
    s = make_session(reactor=reactor, **kwargs)
    s.send(NO_AUTH_GREETING)
    s.take()
    s.send(codec.build_request(Command.UDP_ASSOCIATE, expected or Address.for_ip("0.0.0.0", 0)))
    return s, reactor.udp[0] if reactor.udp else None  # type: ignore[return-value]


def datagram(host: str, port: int, data: bytes, frag: int = 0) -> bytes:
    return codec.build_udp_datagram(Address.for_ip(host, port), data, frag)


CLIENT = ("127.0.0.1", 6000)


class AssociateTests(SynchronousTestCase):
    def test_reply_names_the_relay_port_on_the_control_address(self) -> None:
        s, relay = associate()
        self.assertEqual(relay.interface, "127.0.0.1")
        self.assertEqual(s.take(), b"\x05\x00\x00\x01\x7f\x00\x00\x01" + (50000).to_bytes(2, "big"))
        self.assertIs(s.protocol.state, State.ASSOCIATED)

    def test_round_trip_with_headers(self) -> None:
        s, relay = associate()
        relay.receive(datagram("10.1.2.3", 53, b"query"), CLIENT)
        remote = s.reactor.udp[1]
        self.assertEqual(remote.interface, "0.0.0.0")
        self.assertEqual(remote.sent, [(b"query", ("10.1.2.3", 53))])
        remote.receive(b"answer", ("10.1.2.3", 53))
        self.assertEqual(relay.sent, [(datagram("10.1.2.3", 53, b"answer"), CLIENT)])

    def test_ipv6_destination_from_an_ipv4_client(self) -> None:
        s, relay = associate()
        relay.receive(datagram("2001:db8::5", 53, b"q6"), CLIENT)
        remote = s.reactor.udp[1]
        self.assertEqual(remote.interface, "::")
        self.assertEqual(remote.sent, [(b"q6", ("2001:db8::5", 53))])
        remote.receive(b"a6", ("2001:db8::5", 53))
        [(sent, _)] = relay.sent
        self.assertEqual(sent, datagram("2001:db8::5", 53, b"a6"))

    def test_datagrams_from_another_ip_are_dropped(self) -> None:
        s, relay = associate()
        relay.receive(datagram("10.1.2.3", 53, b"spoof"), ("127.0.0.2", 6000))
        self.assertEqual(len(s.reactor.udp), 1, "a spoofed datagram opened a remote socket")
        self.assertEqual(s.protocol.udp.dropped["wrong source ip"], 1)

    def test_client_address_is_locked_by_its_first_datagram(self) -> None:
        s, relay = associate()
        relay.receive(datagram("10.1.2.3", 53, b"a"), CLIENT)
        relay.receive(datagram("10.1.2.3", 53, b"b"), ("127.0.0.1", 6001))
        self.assertEqual(len(s.reactor.udp[1].sent), 1)
        self.assertEqual(s.protocol.udp.dropped["wrong source port"], 1)

    def test_requested_address_and_port_narrow_the_source(self) -> None:
        s, relay = associate(Address.for_ip("127.0.0.1", 6001))
        relay.receive(datagram("10.1.2.3", 53, b"x"), CLIENT)
        self.assertEqual(s.protocol.udp.dropped["wrong source port"], 1)
        relay.receive(datagram("10.1.2.3", 53, b"y"), ("127.0.0.1", 6001))
        self.assertEqual(s.reactor.udp[1].sent, [(b"y", ("10.1.2.3", 53))])
        self.assertIn(" lock=exact source=127.0.0.1:6001 ", ended_line(s)["extra"])

    def test_fragments_and_malformed_headers_are_dropped_and_counted(self) -> None:
        s, relay = associate()
        relay.receive(datagram("10.1.2.3", 53, b"x", frag=1), CLIENT)
        relay.receive(b"\x00\x00\x00\x01\x0a", CLIENT)
        relay.receive(b"\x00\x00\x00\x09garbage", CLIENT)
        relay.receive(b"", CLIENT)
        self.assertEqual(len(s.reactor.udp), 1)
        self.assertEqual(s.protocol.udp.dropped["fragmented"], 1)
        self.assertEqual(s.protocol.udp.dropped["malformed"], 3)

    def test_unsolicited_datagrams_are_dropped_by_default(self) -> None:
        s, relay = associate()
        relay.receive(datagram("10.1.2.3", 53, b"q"), CLIENT)
        remote = s.reactor.udp[1]
        remote.receive(b"junk", ("10.9.9.9", 53))
        remote.receive(b"junk", ("10.1.2.3", 54))
        self.assertEqual(relay.sent, [])
        self.assertEqual(s.protocol.udp.dropped["unsolicited"], 2)

    def test_any_source_option(self) -> None:
        s, relay = associate(udp_any_source=True)
        relay.receive(datagram("10.1.2.3", 53, b"q"), CLIENT)
        s.reactor.udp[1].receive(b"hello", ("10.9.9.9", 7))
        self.assertEqual(relay.sent, [(datagram("10.9.9.9", 7, b"hello"), CLIENT)])

    def test_domain_names_resolve_once_and_queue_meanwhile(self) -> None:
        s, relay = associate()
        name = Address(AddressType.DOMAIN, "dns.example", 53)
        relay.receive(codec.build_udp_datagram(name, b"one"), CLIENT)
        relay.receive(codec.build_udp_datagram(name, b"two"), CLIENT)
        # The memory reactor resolves every name to 127.0.0.1.
        remote = s.reactor.udp[1]
        self.assertEqual(remote.sent, [(b"one", ("127.0.0.1", 53)), (b"two", ("127.0.0.1", 53))])

    def test_oversized_writes_are_dropped_without_error(self) -> None:
        s, relay = associate()
        relay.receive(datagram("10.1.2.3", 53, b"q"), CLIENT)
        s.reactor.udp[1].fail_with = error.MessageLengthError("too long")
        relay.receive(datagram("10.1.2.3", 53, b"x" * 70000), CLIENT)
        self.assertEqual(s.protocol.udp.dropped["too big"], 1)

    def test_control_connection_closing_closes_every_port(self) -> None:
        s, relay = associate()
        relay.receive(datagram("10.1.2.3", 53, b"q"), CLIENT)
        relay.receive(datagram("2001:db8::1", 53, b"q"), CLIENT)
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertEqual([p.listening for p in s.reactor.udp], [False, False, False])
        self.assertEqual(s.factory.gate.udp_associations, {})

    def test_client_eof_ends_the_association(self) -> None:
        s, relay = associate()
        s.protocol.readConnectionLost()
        self.assertFalse(relay.listening)
        self.assertTrue(s.transport.disconnecting)

    def test_idle_timeout(self) -> None:
        s, relay = associate(idle_timeout=10)
        s.reactor.advance(8)
        relay.receive(datagram("10.1.2.3", 53, b"q"), CLIENT)
        s.reactor.advance(8)
        self.assertTrue(relay.listening)
        s.reactor.advance(3)
        self.assertFalse(relay.listening)
        self.assertTrue(s.transport.disconnecting)

    def test_limit_per_client(self) -> None:
        reactor = UDPReactor()
        s = make_session(reactor=reactor, max_udp_per_client=1)
        s.send(
            NO_AUTH_GREETING
            + codec.build_request(Command.UDP_ASSOCIATE, Address.for_ip("0.0.0.0", 0))
        )
        second = s.factory.buildProtocol(s.transport.getPeer())
        from .helpers import HalfCloseTransport

        transport = HalfCloseTransport(
            hostAddress=s.transport.getHost(), peerAddress=s.transport.getPeer()
        )
        second.makeConnection(transport)  # type: ignore[union-attr]
        with capturedLogs() as logs:
            second.dataReceived(  # type: ignore[union-attr]
                NO_AUTH_GREETING
                + codec.build_request(Command.UDP_ASSOCIATE, Address.for_ip("0.0.0.0", 0))
            )
        self.assertEqual(transport.value()[2:], b"\x05\x02\x00\x01" + b"\x00" * 6)
        self.assertTrue(any("max-udp-per-client" in e.get("log_format", "") for e in logs))
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertEqual(s.factory.gate.udp_associations, {})

    def test_external_address_and_udp_interface(self) -> None:
        s, relay = associate(external_address="203.0.113.9", udp_interface="127.0.0.5")
        self.assertEqual(relay.interface, "127.0.0.5")
        self.assertEqual(s.take()[4:8], bytes([203, 0, 113, 9]))

    def test_ipv6_control_connection_gets_an_ipv6_relay(self) -> None:
        reactor = UDPReactor()
        client = IPv6Address("TCP", "::1", 5000)
        s = make_session(reactor=reactor, peer=client)
        s.transport.hostAddr = IPv6Address("TCP", "::1", 1080)
        s.send(
            NO_AUTH_GREETING + codec.build_request(Command.UDP_ASSOCIATE, Address.for_ip("::", 0))
        )
        self.assertEqual(reactor.udp[0].interface, "::1")
        self.assertEqual(len(s.take()), 2 + 22)
        reactor.udp[0].receive(datagram("127.0.0.1", 53, b"q"), ("::1", 7000))
        self.assertEqual(reactor.udp[1].sent, [(b"q", ("127.0.0.1", 53))])

    def test_unix_client_is_refused(self) -> None:
        s, _ = associate(peer=UNIXAddress(b"/tmp/s"))
        self.assertEqual(s.take(), b"\x05\x01\x00\x01" + b"\x00" * 6)

    def test_log_line_counts_datagrams_and_drops(self) -> None:
        s, relay = associate()
        relay.receive(datagram("10.1.2.3", 53, b"query"), CLIENT)
        s.reactor.udp[1].receive(b"answer!", ("10.1.2.3", 53))
        relay.receive(b"bad", CLIENT)
        with capturedLogs() as logs:
            s.protocol.connectionLost(error.ConnectionDone())
        [line] = [e for e in logs if "session_line" in e]
        self.assertEqual(line["command"], "UDP_ASSOCIATE")
        self.assertEqual((line["up"], line["down"]), (5, 7))
        self.assertEqual(
            line["extra"],
            " lock=unspecified source=127.0.0.1:6000 datagrams=1/1 dropped=malformed:1",
        )
        self.assertEqual(line["bound"], "127.0.0.1:50000")


def ended_line(s: Session) -> dict[str, Any]:
    """Close the control connection; the session line's event."""
    with capturedLogs() as logs:
        s.protocol.connectionLost(error.ConnectionDone())
    [line] = [e for e in logs if "session_line" in e]
    return line


class NATTests(SynchronousTestCase):
    """
    A request that names an address the proxy does not see the client at
    (behind NAT) locks the association to the client's IP as seen and the
    port of its first datagram.
    """

    STATED = [
        Address.for_ip("10.1.2.3", 5000),  # the client's private address
        Address.for_ip("10.1.2.3", 0),
        Address.for_ip("192.0.2.53", 53),  # the destination's, as many clients send
        Address.for_ip("2001:db8::7", 5000),
        Address(AddressType.DOMAIN, "client.example", 5000),
    ]

    def test_another_stated_address_locks_to_the_first_datagram(self) -> None:
        for stated in self.STATED:
            with self.subTest(stated=stated):
                s, relay = associate(stated)
                nat = ("127.0.0.1", 41234)  # the port the NAT chose
                relay.receive(datagram("192.0.2.53", 53, b"first"), nat)
                relay.receive(datagram("192.0.2.53", 53, b"other port"), ("127.0.0.1", 5000))
                relay.receive(datagram("192.0.2.53", 53, b"third party"), ("127.0.0.3", 41234))
                relay.receive(datagram("192.0.2.53", 53, b"second"), nat)
                remote = s.reactor.udp[1]
                self.assertEqual(
                    remote.sent, [(b"first", ("192.0.2.53", 53)), (b"second", ("192.0.2.53", 53))]
                )
                remote.receive(b"answer", ("192.0.2.53", 53))
                self.assertEqual(relay.sent, [(datagram("192.0.2.53", 53, b"answer"), nat)])
                line = ended_line(s)
                self.assertEqual(
                    line["extra"],
                    " lock=nat source=127.0.0.1:41234 datagrams=2/1 "
                    "dropped=wrong source ip:1,wrong source port:1",
                )

    def test_a_third_party_sending_first_does_not_take_the_lock(self) -> None:
        s, relay = associate(Address.for_ip("10.1.2.3", 5000))
        relay.receive(datagram("192.0.2.53", 53, b"spoof"), ("127.0.0.3", 41234))
        relay.receive(datagram("192.0.2.53", 53, b"client"), ("127.0.0.1", 41235))
        self.assertEqual(s.reactor.udp[1].sent, [(b"client", ("192.0.2.53", 53))])
        self.assertEqual(s.protocol.udp.dropped, {"wrong source ip": 1})
        self.assertEqual(s.protocol.udp.client_address, ("127.0.0.1", 41235))

    def test_a_malformed_first_datagram_does_not_take_the_lock(self) -> None:
        s, relay = associate(Address.for_ip("10.1.2.3", 5000))
        relay.receive(b"\x00\x00\x00\x09junk", ("127.0.0.1", 41234))
        relay.receive(datagram("192.0.2.53", 53, b"x", frag=1), ("127.0.0.1", 41234))
        relay.receive(datagram("192.0.2.53", 53, b"client"), ("127.0.0.1", 41235))
        self.assertEqual(s.reactor.udp[1].sent, [(b"client", ("192.0.2.53", 53))])
        self.assertIn(" lock=nat source=127.0.0.1:41235 ", ended_line(s)["extra"])

    def test_an_unspecified_address_or_port_locks_to_the_first_datagram(self) -> None:
        """
        C{0.0.0.0} with a port (PySocks states C{0} and its local port, which a
        NAT may change), C{::}, or the client's IP with port 0: the first
        datagram's port, and then only it.
        """
        cases = [
            (Address.for_ip("0.0.0.0", 5000), ("127.0.0.1", 5000), "unspecified"),
            (Address.for_ip("::", 0), ("127.0.0.1", 5000), "unspecified"),
            (Address.for_ip("127.0.0.1", 0), ("127.0.0.1", 5000), "ip"),
        ]
        for stated, later, lock in cases:
            with self.subTest(stated=stated):
                s, relay = associate(stated)
                relay.receive(datagram("192.0.2.53", 53, b"a"), ("127.0.0.1", 41234))
                relay.receive(datagram("192.0.2.53", 53, b"b"), later)
                self.assertEqual(s.reactor.udp[1].sent, [(b"a", ("192.0.2.53", 53))])
                extra = ended_line(s)["extra"]
                self.assertIn(f" lock={lock} source=127.0.0.1:41234 ", extra)
                self.assertIn(" dropped=wrong source port:1", extra)

    def test_no_datagram_shows_no_source(self) -> None:
        s, _ = associate(Address.for_ip("10.1.2.3", 5000))
        self.assertEqual(ended_line(s)["extra"], " lock=nat source=- datagrams=0/0 dropped=0")

    def test_lock_for_each_stated_address(self) -> None:
        client = codec.parse_ip("192.0.2.1")
        cases = {
            ("192.0.2.1", 5000): Lock.EXACT,
            ("::ffff:192.0.2.1", 5000): Lock.EXACT,
            ("192.0.2.1", 0): Lock.IP,
            ("0.0.0.0", 0): Lock.UNSPECIFIED,
            ("::", 7): Lock.UNSPECIFIED,
            ("192.0.2.2", 5000): Lock.NAT,
            ("2001:db8::1", 0): Lock.NAT,
        }
        for (host, port), lock in cases.items():
            self.assertEqual(lock_for(client, Address.for_ip(host, port)), lock, host)
        name = Address(AddressType.DOMAIN, "192-0-2-1.example", 5000)
        self.assertEqual(lock_for(client, name), Lock.NAT)

    def test_metrics_count_locks_and_drops_by_reason(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        def samples() -> dict[tuple[str, str], float]:
            return {
                (sample.name, next(iter(sample.labels.values()), "")): sample.value
                for family in text_string_to_metric_families(metrics.render().decode())
                for sample in family.samples
                if family.name in ("socks5_udp_associations", "socks5_udp_dropped")
            }

        s, relay = associate(Address.for_ip("10.1.2.3", 5000))
        metrics = s.factory.enable_metrics()
        relay.receive(datagram("192.0.2.53", 53, b"a"), ("127.0.0.1", 41234))
        relay.receive(datagram("192.0.2.53", 53, b"b"), ("127.0.0.3", 41234))
        relay.receive(datagram("192.0.2.53", 53, b"c"), ("127.0.0.1", 41235))
        live = samples()
        s.protocol.connectionLost(error.ConnectionDone())
        for seen in (live, samples()):
            self.assertEqual(seen[("socks5_udp_associations_total", "nat")], 1)
            self.assertEqual(seen[("socks5_udp_associations_total", "exact")], 0)
            self.assertEqual(seen[("socks5_udp_dropped_total", "wrong source ip")], 1)
            self.assertEqual(seen[("socks5_udp_dropped_total", "wrong source port")], 1)


class UDPRuleTests(SynchronousTestCase):
    def test_a_denied_name_is_dropped_even_to_an_address_already_allowed(self) -> None:
        """The rules are asked per destination and name, not per address alone."""
        parsed = rules.parse(
            'default = "allow"\n[[rule]]\naction = "deny"\ndestinations = ["10.9.9.9/32"]\n'
            '[[rule]]\naction = "deny"\nnames = ["localhost"]\n'
        )
        s, relay = associate(rules=parsed)
        relay.receive(datagram("127.0.0.1", 53, b"literal"), CLIENT)
        relay.receive(
            codec.build_udp_datagram(Address(AddressType.DOMAIN, "localhost", 53), b"named"),
            CLIENT,
        )
        remote = s.reactor.udp[1]
        self.assertEqual(remote.sent, [(b"literal", ("127.0.0.1", 53))])
        self.assertEqual(s.protocol.udp.dropped["denied"], 1)

    def test_the_unspecified_address_and_multicast_are_dropped(self) -> None:
        s, relay = associate()
        for host in ("0.0.0.0", "::", "239.255.255.250", "255.255.255.255"):
            relay.receive(datagram(host, 1900, b"m-search"), CLIENT)
        self.assertEqual(s.protocol.udp.dropped["denied"], 4)
        self.assertEqual(len(s.reactor.udp), 1, "no socket towards a destination was opened")
