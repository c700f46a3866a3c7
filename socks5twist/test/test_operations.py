"""
Operator features through in-memory reactors: rules applied to every command,
names checked where they lead, authentication by network, limits, outgoing
addresses, reload, draining on shutdown, and metrics.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from socks5twist import codec, rules
from socks5twist.codec import Address, AddressType, Method
from socks5twist.service import SOCKS5Service

from .helpers import (
    NO_AUTH_GREETING,
    HalfCloseTransport,
    connect_request,
    make_session,
    memory_portal,
)
from .test_bind import arrive, bind_session
from .test_udp import CLIENT, associate, datagram

NOT_ALLOWED = b"\x05\x02\x00\x01" + b"\x00" * 6

NO_LOOPBACK = rules.parse(
    """
default = "allow"
[[rule]]
name = "no loopback"
action = "deny"
destinations = ["127.0.0.0/8", "::1/128"]
"""
)


@implementer(IHostnameResolver)
class FixedResolver:
    """Resolves every name to the given addresses, and counts lookups (C{names}: each name)."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts
        self.lookups = 0
        self.names: list[str] = []

    def resolveHostName(
        self,
        receiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        self.lookups += 1
        self.names.append(hostName)
        receiver.resolutionBegan(None)
        for host in self.hosts:
            cls = IPv6Address if ":" in host else IPv4Address
            receiver.addressResolved(cls("TCP", host, portNumber))
        receiver.resolutionComplete()
        return None


def resolving_reactor(*hosts: str) -> tuple[MemoryReactorClock, FixedResolver]:
    reactor = MemoryReactorClock()
    resolver = FixedResolver(*hosts)
    reactor.installNameResolver(resolver)
    return reactor, resolver


class RuleTests(SynchronousTestCase):
    def test_denied_ip_destination_gets_x02_and_a_log_line_naming_the_rule(self) -> None:
        s = make_session(rules=NO_LOOPBACK)
        with capturedLogs() as logs:
            s.send(NO_AUTH_GREETING + connect_request("127.0.0.1", 80))
        self.assertEqual(s.take()[2:], NOT_ALLOWED)
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.reactor.tcpClients, [])
        self.assertTrue(any(e.get("rule") == "#1 (no loopback)" for e in logs))
        self.assertEqual(s.factory.gate.denials["#1 (no loopback)"], 1)

    def test_name_resolving_into_a_denied_network_is_refused(self) -> None:
        reactor, _ = resolving_reactor("127.0.0.1", "::1")
        s = make_session(reactor=reactor, rules=NO_LOOPBACK)
        s.send(NO_AUTH_GREETING + connect_request("rebind.example", 80))
        s.reactor.advance(0)
        self.assertEqual(s.take()[2:], NOT_ALLOWED)
        self.assertEqual(s.reactor.tcpClients, [])

    def test_mapped_ipv6_answer_meets_ipv4_rules(self) -> None:
        """A name answering ::ffff:127.0.0.1 is denied by a rule on 127.0.0.0/8."""
        parsed = rules.parse(
            'default = "allow"\n[[rule]]\naction = "deny"\ndestinations = ["127.0.0.0/8"]\n'
        )
        reactor, _ = resolving_reactor("::ffff:127.0.0.1")
        s = make_session(reactor=reactor, rules=parsed)
        s.send(NO_AUTH_GREETING + connect_request("mapped.example", 80))
        s.reactor.advance(0)
        self.assertEqual(s.take()[2:], NOT_ALLOWED)
        self.assertEqual(s.reactor.tcpClients, [])

    def test_only_the_checked_addresses_are_connected_to(self) -> None:
        reactor, resolver = resolving_reactor("127.0.0.1", "192.0.2.10", "192.0.2.11")
        s = make_session(reactor=reactor, rules=NO_LOOPBACK)
        s.send(NO_AUTH_GREETING + connect_request("mixed.example", 80))
        for _ in range(5):
            s.reactor.advance(0.3)
        attempted = [c[0] for c in s.reactor.tcpClients]
        self.assertEqual(sorted(set(attempted)), ["192.0.2.10", "192.0.2.11"])
        self.assertEqual(resolver.lookups, 1, "a second lookup could answer differently")

    def test_name_rules_decide_before_resolution(self) -> None:
        parsed = rules.parse(
            'default = "allow"\n[[rule]]\naction = "deny"\nnames = ["*.blocked.example"]\n'
        )
        reactor, resolver = resolving_reactor("192.0.2.10")
        s = make_session(reactor=reactor, rules=parsed)
        s.send(NO_AUTH_GREETING + connect_request("www.blocked.example", 80))
        self.assertEqual(s.take()[2:], NOT_ALLOWED)
        self.assertEqual(resolver.lookups, 0)

    def test_rules_apply_to_users_and_commands(self) -> None:
        parsed = rules.parse(
            'default = "deny"\n[[rule]]\naction = "allow"\n'
            'users = ["alice"]\ncommands = ["connect"]\n'
        )
        s = make_session(memory_portal(alice="a", bob="b"), rules=parsed)
        s.send(
            codec.build_greeting([2]) + codec.build_auth_request(b"bob", b"b") + connect_request()
        )
        self.assertEqual(s.take()[4:], NOT_ALLOWED)
        s = make_session(memory_portal(alice="a", bob="b"), rules=parsed)
        s.send(
            codec.build_greeting([2]) + codec.build_auth_request(b"alice", b"a") + connect_request()
        )
        self.assertEqual(s.take(), b"\x05\x02\x01\x00")
        self.assertEqual(len(s.reactor.tcpClients), 1)

    def test_bind_peer_from_a_denied_network_is_closed(self) -> None:
        parsed = rules.parse(
            'default = "allow"\n[[rule]]\naction = "deny"\ncommands = ["bind"]\n'
            'destinations = ["192.0.2.0/24"]\n'
        )
        s = bind_session(Address.for_ip("0.0.0.0", 0), rules=parsed)
        s.take()
        self.assertIsNone(arrive(s, IPv4Address("TCP", "192.0.2.5", 1)))
        self.assertTrue(s.reactor.ports[0].listening)
        self.assertIsNotNone(arrive(s, IPv4Address("TCP", "198.51.100.5", 1)))

    def test_bind_to_a_denied_address_is_refused_at_once(self) -> None:
        s = bind_session(Address.for_ip("127.0.0.1", 0), rules=NO_LOOPBACK)
        self.assertEqual(s.take(), NOT_ALLOWED)
        self.assertEqual(s.reactor.tcpServers, [])

    def test_udp_datagrams_to_denied_destinations_are_dropped(self) -> None:
        s, relay = associate(rules=NO_LOOPBACK)
        relay.receive(datagram("127.0.0.1", 53, b"no"), CLIENT)
        relay.receive(datagram("192.0.2.1", 53, b"yes"), CLIENT)
        self.assertEqual(s.reactor.udp[1].sent, [(b"yes", ("192.0.2.1", 53))])
        self.assertEqual(s.protocol.udp.dropped["denied"], 1)
        name = codec.build_udp_datagram(Address(AddressType.DOMAIN, "localhost", 53), b"x")
        relay.receive(name, CLIENT)  # resolves to 127.0.0.1 in the memory reactor
        self.assertEqual(s.protocol.udp.dropped["denied"], 2)

    def test_udp_command_denied(self) -> None:
        parsed = rules.parse('default = "allow"\n[[rule]]\naction = "deny"\ncommands = ["udp"]\n')
        s, relay = associate(rules=parsed)
        self.assertIsNone(relay)
        self.assertEqual(s.take(), NOT_ALLOWED)


class AuthByRuleTests(SynchronousTestCase):
    parsed = rules.parse(
        'default = "allow"\n[[auth]]\nclients = ["127.0.0.2/32"]\nmethod = "none"\n'
    )

    def test_office_network_skips_authentication(self) -> None:
        office = IPv4Address("TCP", "127.0.0.2", 5000)
        s = make_session(memory_portal(alice="a"), peer=office, rules=self.parsed)
        s.send(codec.build_greeting([Method.NO_AUTHENTICATION]))
        self.assertEqual(s.take(), b"\x05\x00")

    def test_others_must_authenticate(self) -> None:
        s = make_session(memory_portal(alice="a"), rules=self.parsed)
        s.send(codec.build_greeting([Method.NO_AUTHENTICATION, Method.USERNAME_PASSWORD]))
        self.assertEqual(s.take(), b"\x05\x02")


class LimitTests(SynchronousTestCase):
    def test_per_client_limit_closes_before_negotiating(self) -> None:
        s = make_session(max_sessions_per_client=1)
        s.send(NO_AUTH_GREETING)
        s.take()
        second: Any = s.factory.buildProtocol(s.transport.getPeer())
        transport = HalfCloseTransport(peerAddress=s.transport.getPeer())
        second.makeConnection(transport)
        second.dataReceived(NO_AUTH_GREETING)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        second.connectionLost(error.ConnectionDone())
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertEqual(s.factory.gate.client_sessions, {})

    def test_per_user_limit_gets_x02(self) -> None:
        portal = memory_portal(alice="a")
        s = make_session(portal, max_sessions_per_user=1)
        login = codec.build_greeting([2]) + codec.build_auth_request(b"alice", b"a")
        s.send(login + connect_request())
        second: Any = s.factory.buildProtocol(s.transport.getPeer())
        transport = HalfCloseTransport(peerAddress=s.transport.getPeer())
        second.makeConnection(transport)
        second.dataReceived(login + connect_request())
        self.assertEqual(transport.value()[4:], NOT_ALLOWED)
        s.protocol.connectionLost(error.ConnectionDone())
        second.connectionLost(error.ConnectionDone())
        self.assertEqual(s.factory.gate.user_sessions, {})


class OutgoingAddressTests(SynchronousTestCase):
    def test_connect_binds_the_outgoing_address_of_its_family(self) -> None:
        s = make_session(outgoing_addresses=["192.0.2.200", "2001:db8::200"])
        s.send(NO_AUTH_GREETING + connect_request("198.51.100.1", 80))
        self.assertEqual(s.reactor.tcpClients[0][4], ("192.0.2.200", 0))
        s = make_session(outgoing_addresses=["192.0.2.200", "2001:db8::200"])
        s.send(NO_AUTH_GREETING + connect_request("2001:db8::1", 80))
        self.assertEqual(s.reactor.tcpClients[0][4], ("2001:db8::200", 0))

    def test_bind_and_udp_listen_on_it(self) -> None:
        s = bind_session(Address.for_ip("0.0.0.0", 0), outgoing_addresses=["127.0.0.9"])
        self.assertEqual(s.reactor.tcpServers[0][3], "127.0.0.9")
        s, relay = associate(outgoing_addresses=["127.0.0.9"])
        relay.receive(datagram("192.0.2.1", 53, b"q"), CLIENT)
        self.assertEqual(relay.interface, "127.0.0.1")  # the client side stays inside
        self.assertEqual(s.reactor.udp[1].interface, "127.0.0.9")

    def test_one_per_family(self) -> None:
        with self.assertRaises(ValueError):
            make_session(outgoing_addresses=["192.0.2.1", "192.0.2.2"])


class ServiceTests(SynchronousTestCase):
    def service(
        self, rules_text: str = 'default = "allow"\n', **kwargs: Any
    ) -> tuple[SOCKS5Service, Any]:
        path = FilePath(self.mktemp())
        path.setContent(rules_text.encode())
        s = make_session(rules=rules.load(path.path), **kwargs)
        service = SOCKS5Service(s.factory, path.path, shutdown_grace=10)
        return service, (s, path)

    def test_reload_changes_the_rules_and_a_bad_file_keeps_them(self) -> None:
        service, (s, path) = self.service()
        path.setContent(NO_LOOPBACK_TEXT.encode())
        self.assertTrue(service.reload_rules())
        self.assertEqual(len(s.factory.rules.rules), 1)
        path.setContent(b'default = "allw"\n')
        with capturedLogs() as logs:
            self.assertFalse(service.reload_rules())
        self.assertEqual(len(s.factory.rules.rules), 1)
        [line] = [e for e in logs if "NOT reloaded" in e.get("log_format", "")]
        self.assertIn("line 1", str(line["error"]))

    def test_reload_refuses_an_auth_method_the_server_does_not_offer(self) -> None:
        """Else its clients would be refused every method until the next reload."""
        service, (s, path) = self.service()
        path.setContent(
            b'default = "allow"\n[[auth]]\nclients = ["10.0.0.0/8"]\nmethod = "gssapi"\n'
        )
        with capturedLogs() as logs:
            self.assertFalse(service.reload_rules())
        self.assertEqual(s.factory.rules.auth, ())
        [line] = [formatEvent(e) for e in logs if "NOT reloaded" in e.get("log_format", "")]
        self.assertEqual(
            line,
            "rules NOT reloaded, the previous rules stay in force: "
            f'{path.path}, line 4: [[auth]] #1: method "gssapi" needs --gssapi',
        )

    def test_shutdown_waits_for_sessions_then_closes_them(self) -> None:
        service, (s, _) = self.service()
        service.startService()
        s.send(NO_AUTH_GREETING + connect_request())
        s.remote()
        d = service.stopService()
        self.assertNoResult(d)
        s.reactor.advance(9)
        self.assertNoResult(d)
        self.assertFalse(s.transport.disconnecting)
        with capturedLogs() as logs:
            s.reactor.advance(1.5)
        # Closed cleanly (flush, then FIN), not reset.
        self.assertTrue(s.transport.disconnecting)
        self.assertFalse(s.transport.disconnected)
        [closing] = [e for e in logs if "closing" in e.get("log_format", "")]
        self.assertEqual(formatEvent(closing), "closing 1 session still open")
        # Its peer takes nothing: after FLUSH_WAIT it is reset.
        s.reactor.advance(service.FLUSH_WAIT)
        self.assertTrue(s.transport.disconnected)  # aborted
        # The stop waits for the closed session to report its end (its log
        # line), as a real transport does a reactor turn later.
        self.assertNoResult(d)
        with capturedLogs() as logs:
            s.protocol.connectionLost(error.ConnectionAborted())
            s.reactor.advance(0)
        self.successResultOf(d)
        self.assertEqual(len([e for e in logs if "session_line" in e]), 1)

    def test_a_closed_session_that_never_ends_holds_the_stop_briefly(self) -> None:
        service, (s, _) = self.service()
        service.startService()
        s.send(NO_AUTH_GREETING + connect_request())
        s.remote()
        d = service.stopService()
        s.reactor.advance(10)  # the grace: the session is closed
        self.assertNoResult(d)
        s.reactor.advance(service.FLUSH_WAIT)  # then reset
        self.assertNoResult(d)
        s.reactor.advance(service.CLOSE_WAIT)
        self.successResultOf(d)

    def test_a_session_that_ends_when_closed_at_the_grace_is_not_reset(self) -> None:
        service, (s, _) = self.service()
        service.startService()
        s.send(NO_AUTH_GREETING + connect_request())
        remote = s.remote()
        d = service.stopService()
        s.reactor.advance(10)
        self.assertTrue(s.transport.disconnecting and remote.transport.disconnecting)
        # Both transports flush and close, as real ones do.
        remote.connectionLost(error.ConnectionDone())
        s.protocol.connectionLost(error.ConnectionDone())
        s.reactor.advance(0)
        self.successResultOf(d)
        self.assertFalse(s.transport.disconnected or remote.transport.disconnected)
        self.assertEqual(s.reactor.getDelayedCalls(), [])

    def test_shutdown_ends_early_when_sessions_finish(self) -> None:
        service, (s, _) = self.service()
        service.startService()
        s.send(NO_AUTH_GREETING + connect_request())
        s.remote()
        d = service.stopService()
        s.protocol.connectionLost(error.ConnectionDone())
        s.reactor.advance(0)
        self.successResultOf(d)
        self.assertEqual(s.reactor.getDelayedCalls(), [])


NO_LOOPBACK_TEXT = """
default = "allow"
[[rule]]
name = "no loopback"
action = "deny"
destinations = ["127.0.0.0/8", "::1/128"]
"""


class MetricsTests(SynchronousTestCase):
    def test_counters_follow_sessions_without_labels_for_users_or_destinations(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        s = make_session(memory_portal(alice="a"), rules=NO_LOOPBACK)
        metrics = s.factory.enable_metrics()
        s.send(codec.build_greeting([2]) + codec.build_auth_request(b"alice", b"a"))
        s.send(connect_request("192.0.2.1", 80))
        remote = s.remote()
        s.send(b"12345")
        remote.dataReceived(b"abc")
        text = metrics.render().decode()
        self.assertNotIn("alice", text)
        self.assertNotIn("192.0.2.1", text)
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        self.assertEqual(samples[("socks5_sessions_active", (("command", "connect"),))], 1)
        self.assertEqual(samples[("socks5_bytes_total", (("direction", "up"),))], 5)
        self.assertEqual(samples[("socks5_bytes_total", (("direction", "down"),))], 3)
        s.protocol.connectionLost(error.ConnectionDone())
        text = metrics.render().decode()
        self.assertIn('socks5_sessions_ended_total{command="connect",reply="0x00"} 1.0', text)
        self.assertIn('socks5_bytes_total{direction="up"} 5.0', text)
        self.assertIn("socks5_handshake_seconds_count 1.0", text)
