"""
The session protocol, driven through in-memory transports and a fake clock:
negotiation, authentication, CONNECT and its failures, timeouts and limits.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import codec
from socks5twist.codec import Method, Reply
from socks5twist.connection import MAX_PENDING
from socks5twist.relay import FLUSH_GRACE
from socks5twist.session import State

from .helpers import (
    NO_AUTH_GREETING,
    connect_request,
    make_session,
    memory_portal,
)

FAILURE_REPLY = b"\x05%c\x00\x01\x00\x00\x00\x00\x00\x00"


class NegotiationTests(SynchronousTestCase):
    def test_no_auth_server_selects_no_authentication(self) -> None:
        s = make_session()
        s.send(NO_AUTH_GREETING)
        self.assertEqual(s.take(), b"\x05\x00")
        self.assertIs(s.protocol.state, State.REQUEST)

    def test_no_auth_server_picks_x00_when_client_offers_both(self) -> None:
        s = make_session()
        s.send(codec.build_greeting([Method.USERNAME_PASSWORD, Method.NO_AUTHENTICATION]))
        self.assertEqual(s.take(), b"\x05\x00")

    def test_no_auth_server_refuses_client_offering_only_password(self) -> None:
        s = make_session()
        s.send(codec.build_greeting([Method.USERNAME_PASSWORD]))
        self.assertEqual(s.take(), b"\x05\xff")
        self.assertTrue(s.transport.disconnecting)

    def test_auth_server_picks_x02_and_never_x00(self) -> None:
        s = make_session(memory_portal(alice="secret"))
        s.send(codec.build_greeting([Method.NO_AUTHENTICATION, Method.USERNAME_PASSWORD]))
        self.assertEqual(s.take(), b"\x05\x02")
        s = make_session(memory_portal(alice="secret"))
        s.send(codec.build_greeting([Method.NO_AUTHENTICATION]))
        self.assertEqual(s.take(), b"\x05\xff")
        self.assertTrue(s.transport.disconnecting)

    def test_empty_method_list_gets_xff(self) -> None:
        s = make_session()
        s.send(b"\x05\x00")
        self.assertEqual(s.take(), b"\x05\xff")
        self.assertTrue(s.transport.disconnecting)

    def test_socks4_client_is_closed_without_reply(self) -> None:
        s = make_session()
        s.send(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")
        self.assertEqual(s.take(), b"")
        self.assertTrue(s.transport.disconnecting)

    def test_client_outside_loopback_is_refused_without_auth(self) -> None:
        outsider = IPv4Address("TCP", "192.0.2.1", 5555)
        s = make_session(peer=outsider)
        with capturedLogs() as logs:
            s.send(NO_AUTH_GREETING)
        self.assertEqual(s.take(), b"\x05\xff")
        self.assertTrue(s.transport.disconnecting)
        self.assertTrue(any("192.0.2.1" in str(e.get("client")) for e in logs))

    def test_mapped_loopback_and_ipv6_loopback_and_unix_are_local(self) -> None:
        for peer in (
            IPv6Address("TCP", "::ffff:127.0.0.1", 1),
            IPv6Address("TCP", "::1", 1),
            UNIXAddress(b"/tmp/s"),
        ):
            s = make_session(peer=peer)
            s.send(NO_AUTH_GREETING)
            self.assertEqual(s.take(), b"\x05\x00", peer)

    def test_allow_client_widens_the_default(self) -> None:
        outsider = IPv4Address("TCP", "192.0.2.1", 5555)
        s = make_session(peer=outsider, allowed_clients=["192.0.2.0/24"])
        s.send(NO_AUTH_GREETING)
        self.assertEqual(s.take(), b"\x05\x00")

    def test_auth_server_serves_any_client_by_default(self) -> None:
        outsider = IPv4Address("TCP", "192.0.2.1", 5555)
        s = make_session(memory_portal(alice="secret"), peer=outsider)
        s.send(codec.build_greeting([Method.USERNAME_PASSWORD]))
        self.assertEqual(s.take(), b"\x05\x02")

    def test_one_byte_at_a_time(self) -> None:
        s = make_session(memory_portal(alice="secret"))
        wire = (
            codec.build_greeting([0, 2])
            + codec.build_auth_request(b"alice", b"secret")
            + connect_request("10.9.8.7", 80)
        )
        for i in range(len(wire)):
            s.send(wire[i : i + 1])
        self.assertEqual(s.take(), b"\x05\x02\x01\x00")
        self.assertIs(s.protocol.state, State.CONNECTING)
        self.assertEqual(s.reactor.tcpClients[0][:2], ("10.9.8.7", 80))


class AuthenticationTests(SynchronousTestCase):
    def test_good_password(self) -> None:
        s = make_session(memory_portal(alice="secret"))
        s.send(codec.build_greeting([2]) + codec.build_auth_request(b"alice", b"secret"))
        self.assertEqual(s.take(), b"\x05\x02\x01\x00")
        self.assertEqual(s.protocol.user, "alice")
        self.assertIs(s.protocol.state, State.REQUEST)

    def test_bad_password_gets_failure_status_and_close(self) -> None:
        s = make_session(memory_portal(alice="secret"))
        with capturedLogs() as logs:
            s.send(codec.build_greeting([2]) + codec.build_auth_request(b"alice", b"wrong"))
        self.assertEqual(s.take(), b"\x05\x02\x01\x01")
        self.assertTrue(s.transport.disconnecting)
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertFalse([e for e in logs if "wrong" in repr(e)], "the password reached a log")

    def test_empty_and_255_byte_fields_reach_the_checker(self) -> None:
        long_name, long_password = "u" * 255, "p" * 255
        portal = memory_portal(**{"": "", long_name: long_password})
        for username, password in ((b"", b""), (long_name.encode(), long_password.encode())):
            s = make_session(portal)
            s.send(codec.build_greeting([2]) + codec.build_auth_request(username, password))
            self.assertEqual(s.take(), b"\x05\x02\x01\x00")
        s = make_session(portal)
        s.send(codec.build_greeting([2]) + codec.build_auth_request(b"", b"x"))
        self.assertEqual(s.take(), b"\x05\x02\x01\x01")

    def test_malformed_auth_version_is_refused(self) -> None:
        s = make_session(memory_portal(alice="secret"))
        s.send(codec.build_greeting([2]) + b"\x05\x05alice\x06secret")
        self.assertEqual(s.take(), b"\x05\x02\x01\x01")
        self.assertTrue(s.transport.disconnecting)

    def test_pipelined_greeting_auth_request_and_payload(self) -> None:
        """Tor-style optimistic data: all of it in one segment, none of it lost."""
        s = make_session(memory_portal(alice="secret"))
        s.send(
            codec.build_greeting([2])
            + codec.build_auth_request(b"alice", b"secret")
            + connect_request("10.9.8.7", 80)
            + b"GET / HTTP/1.0\r\n\r\n"
        )
        self.assertEqual(s.take(), b"\x05\x02\x01\x00")
        self.assertEqual(s.transport.producerState, "paused")
        remote = s.remote()
        self.assertEqual(s.take()[:2], b"\x05\x00")
        self.assertEqual(remote.transport.value(), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(s.transport.producerState, "producing")


class ConnectTests(SynchronousTestCase):
    def negotiated(self, **kwargs: object):  # type: ignore[no-untyped-def]
        s = make_session(**kwargs)  # type: ignore[arg-type]
        s.send(NO_AUTH_GREETING)
        s.take()
        return s

    def test_success_reply_carries_the_outbound_local_address(self) -> None:
        s = self.negotiated()
        s.send(connect_request("10.9.8.7", 80))
        s.remote(host="198.51.100.7", port=43210)
        self.assertEqual(s.take(), b"\x05\x00\x00\x01\xc6\x33\x64\x07\xa8\xca")
        self.assertIs(s.protocol.state, State.RELAYING)

    def test_ipv6_destination_and_reply(self) -> None:
        s = self.negotiated()
        s.send(connect_request("2001:db8::1", 443))
        self.assertEqual(s.reactor.tcpClients[0][:2], ("2001:db8::1", 443))
        s.remote(host="2001:db8::2", port=1)
        reply = s.take()
        self.assertEqual(len(reply), 22)
        self.assertEqual(reply[:4], b"\x05\x00\x00\x04")

    def test_ip_literal_names_connect_without_dns(self) -> None:
        for name, expected in (("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("[::1]", "::1")):
            s = self.negotiated()
            s.send(
                codec.build_request(
                    codec.Command.CONNECT, codec.Address(codec.AddressType.DOMAIN, name, 80)
                )
            )
            # The fake reactor records the connection at once: no resolver was asked.
            self.assertEqual(s.reactor.tcpClients[0][:2], (expected, 80), name)

    def test_domain_name_is_resolved_by_the_proxy(self) -> None:
        s = self.negotiated()
        s.send(connect_request("example.com", 8080))
        s.reactor.advance(0)
        self.assertEqual(s.reactor.tcpClients[0][:2], ("127.0.0.1", 8080))
        s.remote()
        self.assertEqual(s.take()[:2], b"\x05\x00")

    def check_failure(self, reason: Exception, reply: Reply) -> None:
        s = self.negotiated()
        s.send(connect_request("10.9.8.7", 80))
        s.fail_connect(reason)
        self.assertEqual(s.take(), FAILURE_REPLY % reply)
        self.assertTrue(s.transport.disconnecting)

    def test_refused_is_x05(self) -> None:
        self.check_failure(error.ConnectionRefusedError(), Reply.CONNECTION_REFUSED)

    def test_network_unreachable_is_x03(self) -> None:
        self.check_failure(error.NoRouteError(), Reply.NETWORK_UNREACHABLE)

    def test_host_unreachable_is_x04(self) -> None:
        e = error.ConnectError(osError=errno.EHOSTUNREACH)
        self.check_failure(e, Reply.HOST_UNREACHABLE)

    def test_kernel_timeout_is_x04(self) -> None:
        self.check_failure(error.TCPTimedOutError(), Reply.HOST_UNREACHABLE)

    def test_name_that_does_not_resolve_is_x04(self) -> None:
        self.check_failure(error.DNSLookupError("nope"), Reply.HOST_UNREACHABLE)

    def test_other_errors_are_x01(self) -> None:
        self.check_failure(error.ConnectBindError(), Reply.GENERAL_FAILURE)

    def test_connect_timeout_is_x04_and_stops_the_attempt(self) -> None:
        s = self.negotiated(connect_timeout=3)
        s.send(connect_request("10.9.8.7", 80))
        s.reactor.advance(2.9)
        self.assertEqual(s.take(), b"")
        s.reactor.advance(0.2)
        self.assertEqual(s.take(), FAILURE_REPLY % Reply.HOST_UNREACHABLE)
        self.assertTrue(s.reactor.connectors[0].stoppedConnecting)

    def test_unknown_command_and_address_type(self) -> None:
        s = self.negotiated()
        s.send(b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50")
        self.assertEqual(s.take(), FAILURE_REPLY % Reply.COMMAND_NOT_SUPPORTED)
        s = self.negotiated()
        s.send(b"\x05\x01\x00\x07")
        self.assertEqual(s.take(), FAILURE_REPLY % Reply.ADDRESS_TYPE_NOT_SUPPORTED)

    def test_client_leaving_while_connecting_cancels_the_attempt(self) -> None:
        s = self.negotiated()
        s.send(connect_request("10.9.8.7", 80))
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertTrue(s.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(s.factory.sessions, set())

    def test_client_eof_after_pipelined_request_still_relays(self) -> None:
        """C{printf REQUEST | nc}: the request arrives with EOF and must still run."""
        s = self.negotiated()
        s.send(connect_request("10.9.8.7", 80) + b"ping")
        s.protocol.readConnectionLost()
        self.assertIs(s.protocol.state, State.CONNECTING)
        remote = s.remote()
        self.assertEqual(remote.transport.value(), b"ping")
        self.assertTrue(remote.transport.write_closed)

    def test_buffer_is_bounded_while_waiting(self) -> None:
        s = self.negotiated()
        s.send(connect_request("10.9.8.7", 80))
        s.send(b"x" * MAX_PENDING)
        self.assertFalse(s.transport.disconnecting)
        s.send(b"x")
        self.assertTrue(s.transport.disconnecting)


class RelayTests(SynchronousTestCase):
    def relaying(self, **kwargs: object):  # type: ignore[no-untyped-def]
        s = make_session(**kwargs)  # type: ignore[arg-type]
        s.send(NO_AUTH_GREETING + connect_request())
        remote = s.remote()
        s.take()
        return s, remote

    def test_bytes_flow_both_ways_and_are_counted(self) -> None:
        s, remote = self.relaying()
        s.send(b"up")
        remote.dataReceived(b"down!")
        self.assertEqual(remote.transport.value(), b"up")
        self.assertEqual(s.take(), b"down!")
        self.assertEqual((s.protocol.relay.up, s.protocol.relay.down), (2, 5))

    def test_each_side_is_the_others_producer(self) -> None:
        s, remote = self.relaying()
        self.assertIs(s.transport.producer, remote.transport)
        self.assertIs(remote.transport.producer, s.transport)
        self.assertTrue(s.transport.streaming)

    def test_half_close_from_client(self) -> None:
        s, remote = self.relaying()
        s.protocol.readConnectionLost()
        self.assertTrue(remote.transport.write_closed)
        self.assertIsNone(remote.transport.producer, "a paused producer would hold the FIN")
        self.assertFalse(s.transport.disconnecting)
        remote.dataReceived(b"still flowing")
        self.assertEqual(s.take(), b"still flowing")
        remote.readConnectionLost()
        self.assertTrue(s.transport.disconnecting)
        self.assertTrue(remote.transport.disconnecting)

    def test_half_close_from_remote(self) -> None:
        s, remote = self.relaying()
        remote.readConnectionLost()
        self.assertTrue(s.transport.write_closed)
        s.send(b"more")
        self.assertEqual(remote.transport.value(), b"more")

    def test_eof_reported_twice_is_harmless(self) -> None:
        s, _remote = self.relaying()
        s.protocol.readConnectionLost()
        s.protocol.readConnectionLost()
        self.assertFalse(s.transport.disconnecting)

    def test_remote_lost_closes_client(self) -> None:
        s, remote = self.relaying()
        remote.connectionLost(error.ConnectionDone())
        self.assertTrue(s.transport.disconnecting)

    def test_client_lost_closes_remote(self) -> None:
        s, remote = self.relaying()
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertTrue(remote.transport.disconnecting)

    def test_idle_timeout_closes_a_quiet_tunnel_only(self) -> None:
        s, remote = self.relaying(idle_timeout=5)
        s.reactor.advance(4)
        s.send(b"x")
        s.reactor.advance(4)
        remote.dataReceived(b"y")
        s.reactor.advance(4.9)
        self.assertFalse(s.transport.disconnecting)
        s.reactor.advance(0.2)
        self.assertTrue(s.transport.disconnecting)
        self.assertTrue(remote.transport.disconnecting)
        # Only the reset of what does not close within the grace is left,
        # and it goes once both sides are gone.
        [reset] = s.reactor.getDelayedCalls()
        self.assertEqual(reset.getTime(), s.reactor.seconds() + FLUSH_GRACE)
        s.protocol.connectionLost()
        remote.connectionLost(error.ConnectionDone())
        self.assertEqual(s.reactor.getDelayedCalls(), [])

    def test_no_idle_timeout_by_default(self) -> None:
        s, _remote = self.relaying()
        self.assertEqual(s.reactor.getDelayedCalls(), [])


class TimeoutAndLimitTests(SynchronousTestCase):
    def test_silent_client_is_closed_by_handshake_timeout(self) -> None:
        s = make_session(handshake_timeout=10)
        s.reactor.advance(9.9)
        self.assertFalse(s.transport.disconnecting)
        s.reactor.advance(0.2)
        self.assertTrue(s.transport.disconnecting)

    def test_a_close_the_peer_stalls_is_reset_after_the_grace(self) -> None:
        """
        A TLS connection closes once the peer answers close_notify: one that
        never does (or never reads) is reset, and its session ends.
        """
        s = make_session(handshake_timeout=10)
        s.reactor.advance(10)
        self.assertTrue(s.transport.disconnecting)
        self.assertFalse(s.transport.disconnected)  # (StringTransport: not aborted)
        s.reactor.advance(FLUSH_GRACE)
        self.assertTrue(s.transport.disconnected)

    def test_a_close_that_completes_leaves_no_timer(self) -> None:
        s = make_session(handshake_timeout=10)
        s.reactor.advance(10)
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertEqual(s.reactor.getDelayedCalls(), [])

    def test_dribbling_client_is_closed_by_handshake_timeout(self) -> None:
        s = make_session(handshake_timeout=10)
        wire = NO_AUTH_GREETING + connect_request("example.com", 80)
        for byte in wire[:11]:
            s.send(bytes([byte]))
            s.reactor.advance(1)
        self.assertTrue(s.transport.disconnecting)

    def test_handshake_timer_stops_once_the_request_is_in(self) -> None:
        s = make_session(handshake_timeout=10)
        s.send(NO_AUTH_GREETING + connect_request())
        s.remote()
        s.reactor.advance(100)
        self.assertFalse(s.transport.disconnecting)

    def test_max_clients(self) -> None:
        s = make_session(max_clients=2)
        second: Any = s.factory.buildProtocol(s.transport.getPeer())
        from .helpers import HalfCloseTransport

        second.makeConnection(HalfCloseTransport(peerAddress=s.transport.getPeer()))
        third_transport = HalfCloseTransport(peerAddress=s.transport.getPeer())
        third: Any = s.factory.buildProtocol(s.transport.getPeer())
        with capturedLogs() as logs:
            third.makeConnection(third_transport)
        self.assertTrue(third_transport.disconnected)
        self.assertEqual(len(s.factory.sessions), 2)
        self.assertTrue(any("max-clients" in e.get("log_format", "") for e in logs))
        third.connectionLost(error.ConnectionDone())
        self.assertEqual(len(s.factory.sessions), 2)
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertEqual(len(s.factory.sessions), 1)

    def test_no_timer_outlives_its_session(self) -> None:
        s = make_session(handshake_timeout=10, idle_timeout=30)
        s.send(NO_AUTH_GREETING + connect_request())
        s.remote()
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertEqual(s.reactor.getDelayedCalls(), [])


class LogTests(SynchronousTestCase):
    def test_one_line_per_session_with_its_facts(self) -> None:
        s = make_session(memory_portal(alice="s3cret-pw"))
        with capturedLogs() as logs:
            s.send(
                codec.build_greeting([2])
                + codec.build_auth_request(b"alice", b"s3cret-pw")
                + connect_request("example.com", 80)
            )
            s.reactor.advance(0)
            remote = s.remote()
            s.send(b"abc")
            remote.dataReceived(b"defgh")
            s.protocol.connectionLost(error.ConnectionDone())
        lines = [e for e in logs if "session_line" in e]
        self.assertEqual(len(lines), 1)
        line = lines[0]
        self.assertEqual(line["client"], "127.0.0.1:40000")
        self.assertEqual(line["user"], "alice")
        self.assertEqual(line["command"], "CONNECT")
        self.assertEqual(line["destination"], "example.com:80")
        self.assertEqual(line["connected"], "10.9.8.7:80")
        self.assertEqual(line["reply"], "0x00")
        self.assertEqual(line["bound"], "198.51.100.7:43210")
        self.assertEqual((line["up"], line["down"]), (3, 5))
        self.assertGreaterEqual(line["duration"], 0)
        from twisted.logger import formatEvent

        self.assertFalse([e for e in logs if "s3cret-pw" in formatEvent(e) + repr(e)])
