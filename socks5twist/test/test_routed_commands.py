"""
CONNECT and BIND by a rule with a route, through a whole session on a
memory reactor: what the upstream is asked (a name, or a checked address),
what the client is answered, where a direct connection binds (egress), and
what the session's record names.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import codec, rules
from socks5twist.codec import Address, AddressType, Command

from .helpers import NO_AUTH_GREETING, connect_request, make_session
from .test_operations import FixedResolver, resolving_reactor

BOUND = Address(AddressType.IPV4, "198.51.100.7", 5000)
ROUTED = """
default = "deny"
[[rule]]
action = "allow"
names = ["by-name.example"]
via = ["socks5://10.0.0.1:1080"]
[[rule]]
action = "deny"
destinations = ["127.0.0.0/8"]
[[rule]]
action = "allow"
destinations = ["192.0.2.0/24"]
ports = [443]
via = ["socks5://10.0.0.1:1080"]
[[rule]]
action = "allow"
ports = [80]
egress = ["127.0.0.1"]
"""


def request_for(host: str, port: int) -> bytes:
    try:
        address = Address.for_ip(host, port)
    except ValueError:
        address = Address(AddressType.DOMAIN, host, port)
    return codec.build_request(Command.CONNECT, address)


class RoutedConnectTests(SynchronousTestCase):
    def session(self, *addresses: str) -> tuple[Any, Any]:
        reactor, resolver = resolving_reactor(*addresses)
        s = make_session(reactor=reactor, rules=rules.parse(ROUTED))
        s.send(NO_AUTH_GREETING)
        s.take()
        return s, resolver

    def upstream(self, s: Any) -> tuple[Any, StringTransport]:
        """The upstream the session connected to: its protocol, after the greeting."""
        host, port, factory, _, _ = s.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("10.0.0.1", 1080))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), b"\x05\x01\x00")
        transport.clear()
        protocol.dataReceived(b"\x05\x00")
        return protocol, transport

    def test_a_name_rule_sends_the_name_without_a_lookup(self) -> None:
        s, resolver = self.session("192.0.2.1")
        s.send(connect_request("by-name.example", 443))
        protocol, transport = self.upstream(s)
        self.assertEqual(transport.value(), request_for("by-name.example", 443))
        self.assertEqual(resolver.lookups, 0)
        protocol.dataReceived(codec.build_reply(0, BOUND))
        self.assertEqual(s.take(), codec.build_reply(0, BOUND))
        self.assertEqual(s.protocol.route, "socks5://10.0.0.1:1080")
        self.assertEqual(s.protocol.connected_to, "by-name.example:443")

    def test_a_name_after_an_address_deny_rule_is_looked_up_first(self) -> None:
        reactor, resolver = resolving_reactor("192.0.2.1")
        text = ROUTED.replace('names = ["by-name.example"]', 'names = ["other.example"]')
        text += '[[rule]]\naction = "allow"\nnames = ["by-name.example"]\n'
        text += 'via = ["socks5://10.0.0.1:1080"]\n'
        s = make_session(reactor=reactor, rules=rules.parse(text))
        s.send(NO_AUTH_GREETING + connect_request("by-name.example", 8080))
        s.reactor.advance(0)
        _, transport = self.upstream(s)
        self.assertEqual(resolver.lookups, 1)  # the deny rule about addresses needed it
        self.assertEqual(transport.value(), request_for("by-name.example", 8080))

    def test_an_address_rule_resolves_here_then_sends_the_name(self) -> None:
        s, resolver = self.session("192.0.2.1", "192.0.2.2")
        s.send(connect_request("web.example", 443))
        s.reactor.advance(0)
        _, transport = self.upstream(s)
        self.assertEqual(resolver.lookups, 1)
        self.assertEqual(transport.value(), request_for("web.example", 443))

    def test_a_name_leading_to_a_denied_address_sends_the_allowed_address(self) -> None:
        s, _ = self.session("127.0.0.1", "192.0.2.9")
        s.send(connect_request("rebind.example", 443))
        s.reactor.advance(0)
        _, transport = self.upstream(s)
        self.assertEqual(transport.value(), request_for("192.0.2.9", 443))

    def test_the_upstreams_failure_code_is_the_clients(self) -> None:
        s, _ = self.session()
        s.send(connect_request("192.0.2.5", 443))
        protocol, _ = self.upstream(s)
        protocol.dataReceived(codec.build_reply(5))
        self.assertEqual(s.take()[:2], b"\x05\x05")
        self.assertTrue(s.transport.disconnecting)

    def test_an_unreachable_upstream_is_x01(self) -> None:
        s, _ = self.session()
        s.send(connect_request("192.0.2.5", 443))
        from twisted.internet.error import ConnectionRefusedError

        s.fail_connect(ConnectionRefusedError())
        self.assertEqual(s.take()[:2], b"\x05\x01")
        self.assertEqual(s.protocol.route, "none")

    def test_egress_binds_the_direct_connection(self) -> None:
        s, _ = self.session()
        s.send(connect_request("192.0.2.5", 80))
        self.assertEqual(s.reactor.tcpClients[0][:2], ("192.0.2.5", 80))
        self.assertEqual(s.reactor.tcpClients[0][4], ("127.0.0.1", 0))
        self.assertEqual(s.protocol.route, "egress")


class HopByNameTests(SynchronousTestCase):
    """
    A hop given by name is resolved by the server's resolver (the one a
    library user hands L{SOCKS5ServerFactory}), not the reactor's.
    """

    RULES = 'default = "allow"\n[[rule]]\naction = "allow"\nvia = ["socks5://Proxy.Example:1080"]\n'

    def session(self, *addresses: str, **kwargs: Any) -> tuple[Any, FixedResolver]:
        # The memory reactor's own resolver would answer 127.0.0.1.
        resolver = FixedResolver(*(addresses or ["10.0.0.9"]))
        s = make_session(rules=rules.parse(self.RULES), resolver=resolver, **kwargs)
        s.send(NO_AUTH_GREETING)
        s.take()
        return s, resolver

    def test_connect_asks_the_servers_resolver_for_the_hop(self) -> None:
        s, resolver = self.session()
        s.send(connect_request("192.0.2.5", 443))
        s.reactor.advance(0)
        self.assertEqual(resolver.names, ["proxy.example"])
        host, port, factory, _, _ = s.reactor.tcpClients[-1]
        self.assertEqual((host, port), ("10.0.0.9", 1080))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"\x05\x00")
        self.assertTrue(transport.value().endswith(request_for("192.0.2.5", 443)))
        protocol.dataReceived(codec.build_reply(0, BOUND))
        self.assertEqual(s.take(), codec.build_reply(0, BOUND))
        self.assertEqual(s.protocol.route, "socks5://proxy.example:1080")

    def test_the_hop_is_connected_to_from_the_outgoing_address_of_its_version(self) -> None:
        from twisted.internet.error import ConnectionRefusedError

        s, _ = self.session("10.0.0.9", "2001:db8::9", outgoing_addresses=["192.0.2.1"])
        s.send(connect_request("192.0.2.5", 443))
        s.reactor.advance(0)
        # IPv4 from the outgoing address; then IPv6, for which none was given.
        self.assertEqual(s.reactor.tcpClients[0][:2], ("10.0.0.9", 1080))
        self.assertEqual(s.reactor.tcpClients[0][4], ("192.0.2.1", 0))
        s.fail_connect(ConnectionRefusedError())
        s.reactor.advance(0.3)  # (HostnameEndpoint's pace)
        self.assertEqual(s.reactor.tcpClients[1][:2], ("2001:db8::9", 1080))
        self.assertIsNone(s.reactor.tcpClients[1][4])

    def test_bind_asks_the_servers_resolver_for_the_hop(self) -> None:
        s, resolver = self.session()
        s.send(b"\x05\x02" + request_for("192.0.2.5", 0)[2:])
        s.reactor.advance(0)
        self.assertEqual(resolver.names, ["proxy.example"])
        self.assertEqual(s.reactor.tcpClients[-1][:2], ("10.0.0.9", 1080))


BIND_RULES = """
default = "deny"
[[rule]]
action = "deny"
commands = ["bind"]
destinations = ["192.0.2.66/32"]
[[rule]]
action = "allow"
commands = ["bind"]
via = ["socks5://10.0.0.1:1080"]
"""
PEER = Address(AddressType.IPV4, "192.0.2.5", 40000)
# (A BIND for 0.0.0.0 stays undecided until its peer comes, by the deny rule
# about peers: this proxy listens itself then; see the README.)


class RoutedBindTests(SynchronousTestCase):
    def bind(self, peer: str = "192.0.2.5", **kwargs: Any) -> tuple[Any, Any]:
        """A BIND for C{peer} (an address, or a name the reactor resolves to 127.0.0.1)."""
        s = make_session(rules=rules.parse(BIND_RULES), **kwargs)
        request = b"\x05\x02" + request_for(peer, 0)[2:]
        s.send(NO_AUTH_GREETING + request)
        s.reactor.advance(0)
        _, _, factory, _, _ = s.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        s.take()
        protocol.dataReceived(b"\x05\x00")
        self.assertTrue(transport.value().endswith(request))
        protocol.dataReceived(codec.build_reply(0, BOUND))
        self.assertEqual(s.take(), codec.build_reply(0, BOUND))  # the upstream's listener
        self.assertEqual(s.protocol.bound, "198.51.100.7:5000")
        return s, protocol

    def test_the_peer_the_upstream_reports_is_relayed(self) -> None:
        s, protocol = self.bind()
        protocol.dataReceived(codec.build_reply(0, PEER) + b"hello")
        self.assertEqual(s.take(), codec.build_reply(0, PEER) + b"hello")
        self.assertEqual(s.protocol.connected_to, "192.0.2.5:40000")

    def test_a_peer_the_rules_deny_gets_x02(self) -> None:
        s, protocol = self.bind("peer.example")
        protocol.dataReceived(codec.build_reply(0, Address.for_ip("192.0.2.66", 1)))
        self.assertEqual(s.take()[:2], b"\x05\x02")
        self.assertTrue(s.transport.disconnecting)

    def test_a_peer_other_than_the_one_asked_for_gets_x02(self) -> None:
        s, protocol = self.bind("192.0.2.7")
        protocol.dataReceived(codec.build_reply(0, PEER))
        self.assertEqual(s.take()[:2], b"\x05\x02")

    def test_no_peer_within_the_bind_timeout_is_x04(self) -> None:
        s, protocol = self.bind(bind_timeout=5)
        s.reactor.advance(5)
        self.assertEqual(s.take()[:2], b"\x05\x04")
        self.assertTrue(protocol.transport.disconnecting)
