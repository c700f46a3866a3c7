"""
The attacks of the security review, one regression test each, at the level of
the session (in memory): hostile names, the unspecified address, forged log
lines, lock-outs, Unix-socket clients and BIND under name rules.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from socks5twist import codec, rules
from socks5twist.auth import portal_for_checkers
from socks5twist.codec import Method, Reply
from socks5twist.gate import MAX_LOGINS_PER_CLIENT
from socks5twist.names import InvalidName, canonical, is_address
from socks5twist.session import State

from .helpers import NO_AUTH_GREETING, connect_request, make_session, memory_portal
from .test_operations import resolving_reactor

ALLOW_ONLY = rules.parse(
    'default = "deny"\n[[rule]]\naction = "allow"\nnames = ["*.allowed.test"]\n'
)
DENY_EVIL = rules.parse('default = "allow"\n[[rule]]\naction = "deny"\nnames = ["evil.test"]\n')
README_RULE = rules.parse(
    'default = "allow"\n[[rule]]\naction = "deny"\n'
    'destinations = ["169.254.169.254/32", "127.0.0.0/8", "::1/128"]\n'
)


def raw_request(name: bytes, port: int = 80, command: int = 1) -> bytes:
    return (
        b"\x05"
        + bytes([command])
        + b"\x00\x03"
        + bytes([len(name)])
        + name
        + struct.pack("!H", port)
    )


def session_recording_lookups() -> tuple[Any, list[str]]:
    """A session whose resolver answers 192.0.2.1 and notes each name it is asked."""
    seen: list[str] = []
    reactor, resolver = resolving_reactor("192.0.2.1")
    original = resolver.resolveHostName

    def recording(receiver: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(name)
        return original(receiver, name, *args, **kwargs)

    resolver.resolveHostName = recording  # type: ignore[method-assign,assignment]
    return make_session(reactor=reactor), seen


def reply_code(wire: bytes) -> int:
    """The REP of the reply after the method selection."""
    return wire[3]


def printable(line: str) -> bool:
    return line.isascii() and line.isprintable()


class HostileNameTests(SynchronousTestCase):
    def attempt(self, name: bytes, rules_: Any, command: int = 1) -> tuple[Any, Any, list[Any]]:
        reactor, resolver = resolving_reactor("127.0.0.1")
        s = make_session(reactor=reactor, rules=rules_)
        with capturedLogs() as logs:
            s.send(NO_AUTH_GREETING + raw_request(name, command=command))
            s.reactor.advance(0)
        return s, resolver, list(logs)

    def test_nul_in_a_name_never_passes_an_allow_rule(self) -> None:
        s, resolver, _ = self.attempt(b"localhost\x00.allowed.test", ALLOW_ONLY)
        self.assertEqual(reply_code(s.take()), Reply.HOST_UNREACHABLE)
        self.assertEqual(resolver.lookups, 0)
        self.assertEqual(s.reactor.tcpClients, [])
        self.assertTrue(s.transport.disconnecting)

    def test_nul_in_a_name_never_slips_past_a_deny_rule(self) -> None:
        deny = rules.parse('default = "allow"\n[[rule]]\naction = "deny"\nnames = ["localhost"]\n')
        for name in (b"localhost\x00evil", b"127.0.0.1\x00"):
            s, resolver, _ = self.attempt(name, deny)
            self.assertEqual(reply_code(s.take()), Reply.HOST_UNREACHABLE, name)
            self.assertEqual(resolver.lookups, 0)

    def test_an_invalid_name_is_answered_at_once_with_one_escaped_line(self) -> None:
        for name in (b"a" * 64 + b".test", b"bad\xff.test", "x\u0085y".encode(), b"x\ny"):
            s, resolver, logs = self.attempt(name, rules.ALLOW_ALL)
            self.assertEqual(reply_code(s.take()), Reply.HOST_UNREACHABLE, name)
            self.assertEqual(resolver.lookups, 0)
            lines = [formatEvent(e) for e in logs if e.get("log_level").name != "debug"]
            malformed = [line for line in lines if "malformed" in line]
            self.assertEqual(len(malformed), 1, lines)
            self.assertTrue(all(printable(line) for line in lines), lines)
            self.assertFalse(any("Unhandled" in line for line in lines))

    def test_unicode_spellings_meet_the_deny_rule(self) -> None:
        for text in ("ｅｖｉｌ.test", "evil。test", "ev\u200bil.test", "ℯvil.test", "EVIL.test."):
            s, resolver, _ = self.attempt(text.encode(), DENY_EVIL)
            self.assertEqual(reply_code(s.take()), Reply.NOT_ALLOWED, text)
            self.assertEqual(resolver.lookups, 0)

    def test_the_resolver_sees_the_canonical_name(self) -> None:
        s, seen = session_recording_lookups()
        s.send(NO_AUTH_GREETING + raw_request("Bücher.TEST.".encode()))
        self.assertEqual(seen, ["xn--bcher-kva.test"])


class UnspecifiedAddressTests(SynchronousTestCase):
    def test_every_spelling_of_the_unspecified_address_is_refused(self) -> None:
        wires = [
            connect_request("0.0.0.0", 80),
            connect_request("::", 80),
            connect_request("::ffff:0.0.0.0", 80),
            raw_request(b"0"),
            raw_request(b"0.0.0.0"),
            raw_request(b"::"),
            raw_request(b"[::]"),
        ]
        for wire in wires:
            reactor, resolver = resolving_reactor("127.0.0.1")
            s = make_session(reactor=reactor, rules=README_RULE)
            with capturedLogs() as logs:
                s.send(NO_AUTH_GREETING + wire)
            self.assertEqual(reply_code(s.take()), Reply.NOT_ALLOWED, wire)
            self.assertEqual(s.reactor.tcpClients, [])
            self.assertEqual(resolver.lookups, 0)
            self.assertTrue(any("unspecified" in str(e.get("rule")) for e in logs))

    def test_a_name_resolving_to_the_unspecified_address_is_refused(self) -> None:
        reactor, _ = resolving_reactor("0.0.0.0")
        s = make_session(reactor=reactor)
        s.send(NO_AUTH_GREETING + connect_request("rebind.example", 80))
        self.assertEqual(reply_code(s.take()), Reply.NOT_ALLOWED)
        self.assertEqual(s.reactor.tcpClients, [])

    def test_nat64_spelling_of_loopback_meets_the_readme_rule(self) -> None:
        s = make_session(rules=README_RULE)
        s.send(NO_AUTH_GREETING + connect_request("64:ff9b::7f00:1", 80))
        self.assertEqual(reply_code(s.take()), Reply.NOT_ALLOWED)


class LogLineTests(SynchronousTestCase):
    def test_a_hostile_username_is_escaped_in_the_failure_line(self) -> None:
        s = make_session(memory_portal(alice="secret"))
        with capturedLogs() as logs:
            s.send(codec.build_greeting([Method.USERNAME_PASSWORD]))
            s.send(codec.build_auth_request(b"x\n2026 session forged\x1b[2J", b"pw"))
        lines = [formatEvent(e) for e in logs]
        failed = [line for line in lines if "authentication failed" in line]
        self.assertEqual(len(failed), 1, lines)
        self.assertIn("user=x\\x0a2026\\x20session\\x20forged\\x1b[2J:", failed[0])
        self.assertNotIn("pw", failed[0].split("user=")[1].split(":")[0])

    def test_the_session_line_escapes_what_a_checker_returned(self) -> None:
        s = make_session(memory_portal(**{"bob\x1b]0;pwned\x07": "pw"}))
        with capturedLogs() as logs:
            s.send(codec.build_greeting([Method.USERNAME_PASSWORD]))
            s.send(codec.build_auth_request(b"bob\x1b]0;pwned\x07", b"pw"))
            s.send(connect_request("127.0.0.1", 80))
            s.protocol.connectionLost()
        lines = [e["session_line"] for e in logs if "session_line" in e]
        self.assertEqual(len(lines), 1)
        self.assertIn("user=bob\\x1b]0;pwned\\x07", lines[0])
        self.assertTrue(printable(lines[0]))

    @settings(max_examples=200)
    @given(st.binary(min_size=1, max_size=255), st.binary(max_size=255))
    def test_no_line_holds_a_raw_control_character_or_loses_a_byte(
        self, name: bytes, username: bytes
    ) -> None:
        """Arbitrary names and usernames: every line stays printable ASCII."""
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(username, b"pw")
        portal = portal_for_checkers([checker])
        reactor, _ = resolving_reactor("192.0.2.1")
        s = make_session(portal, reactor=reactor)
        with capturedLogs() as logs:
            s.send(codec.build_greeting([Method.USERNAME_PASSWORD]))
            s.send(codec.build_auth_request(username, b"wrong" if len(name) % 2 else b"pw"))
            s.send(raw_request(name))
            s.protocol.connectionLost()
        lines = [formatEvent(e) for e in logs]
        event("logged in" if s.protocol.user is not None else "login failed")
        self.assertTrue(lines)
        for line in lines:
            self.assertTrue(printable(line), line)
        failed = [line for line in lines if "authentication failed" in line]
        if failed:
            # Nothing lost: the escaped username decodes back to the bytes.
            shown = failed[0].split(" user=", 1)[1].rsplit(": ", 1)[0]
            self.assertEqual(_unescape(shown), username)


def _unescape(text: str) -> bytes:
    """The inverse of logsafe.escape for bytes."""
    return text.encode("ascii").decode("unicode_escape").encode("latin-1")


class LockOutTests(SynchronousTestCase):
    def test_one_address_cannot_fill_max_clients(self) -> None:
        s = make_session(max_clients=20, max_sessions_per_client=2)
        factory, reactor = s.factory, s.reactor
        with capturedLogs() as logs:
            silent = [_connect(factory, "127.0.0.1") for _ in range(30)]
        self.assertEqual(sum(not t.disconnecting for t in silent), 1)  # 2 with s's own
        other = _connect(factory, "127.0.0.2")
        self.assertFalse(other.disconnecting)
        refused = [e for e in logs if "--max-sessions-per-client" in e.get("log_format", "")]
        self.assertEqual(len(refused), 1, "logged once per burst")
        with capturedLogs() as logs:
            reactor.advance(factory.gate.refusals.window)
        summaries = [formatEvent(e) for e in logs]
        self.assertTrue(any(line.startswith("28 more") for line in summaries), summaries)
        self.assertEqual(factory.gate.refusals.open_bursts, 0)

    def test_refused_connections_do_not_hold_a_count(self) -> None:
        s = make_session(max_sessions_per_client=1)
        for _ in range(5):
            _connect(s.factory, "127.0.0.1")
        s.protocol.connectionLost()
        self.assertEqual(dict(s.factory.gate.client_sessions), {})
        self.assertFalse(_connect(s.factory, "127.0.0.1").disconnecting)


def _connect(factory: Any, host: str) -> Any:
    from .helpers import PROXY_HOST, HalfCloseTransport

    peer = IPv4Address("TCP", host, 50000)
    protocol = factory.buildProtocol(peer)
    transport = HalfCloseTransport(hostAddress=PROXY_HOST, peerAddress=peer)
    protocol.makeConnection(transport)
    transport.protocol = protocol  # type: ignore[attr-defined]
    return transport


class UnixClientTests(SynchronousTestCase):
    def test_unix_clients_follow_the_allow_list_as_loopback(self) -> None:
        for allowed, served in ((None, True), (["10.0.0.0/8"], False), (["::1/128"], True)):
            s = make_session(peer=UNIXAddress(b"/run/s.sock"), allowed_clients=allowed)
            s.send(NO_AUTH_GREETING)
            self.assertEqual(s.take(), b"\x05\x00" if served else b"\x05\xff", allowed)

    def test_rules_on_loopback_clients_match_unix_clients(self) -> None:
        parsed = rules.parse(
            'default = "allow"\n[[rule]]\naction = "deny"\nclients = ["127.0.0.0/8", "::1/128"]\n'
        )
        s = make_session(peer=UNIXAddress(b"/run/s.sock"), rules=parsed)
        s.send(NO_AUTH_GREETING + connect_request("192.0.2.1", 80))
        self.assertEqual(reply_code(s.take()), Reply.NOT_ALLOWED)


class BindNameRuleTests(SynchronousTestCase):
    def test_a_peer_named_by_an_allowed_name_is_admitted(self) -> None:
        parsed = rules.parse(
            'default = "deny"\n[[rule]]\naction = "allow"\nnames = ["ftp.allowed.test"]\n'
        )
        reactor, _ = resolving_reactor("127.0.0.1")
        s = make_session(reactor=reactor, rules=parsed)
        s.send(NO_AUTH_GREETING + raw_request(b"ftp.allowed.test", 21, command=2))
        self.assertEqual(reply_code(s.take()), Reply.SUCCEEDED)
        self.assertIs(s.protocol.state, State.BINDING)
        waiter = s.protocol.handler.waiter
        self.assertIsNotNone(waiter.buildProtocol(IPv4Address("TCP", "127.0.0.1", 20)))


@implementer(ICredentialsChecker)
class _SlowChecker:
    """A checker whose answers never come (a pool busy with hashes)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.asked: list[Any] = []

    def requestAvatarId(self, credentials: Any) -> Any:
        d: Any = defer.Deferred()
        self.asked.append(d)
        return d


class LoginFloodTests(SynchronousTestCase):
    def login(self, factory: Any, host: str) -> Any:
        transport = _connect(factory, host)
        protocol = transport.protocol
        protocol.dataReceived(codec.build_greeting([Method.USERNAME_PASSWORD]))
        protocol.dataReceived(codec.build_auth_request(b"mallory", b"x"))
        return transport

    def test_one_address_cannot_queue_more_than_a_few_logins(self) -> None:
        checker = _SlowChecker()
        s = make_session(portal_for_checkers([checker]))
        waiting = [self.login(s.factory, "192.0.2.1") for _ in range(MAX_LOGINS_PER_CLIENT)]
        self.assertEqual(len(checker.asked), MAX_LOGINS_PER_CLIENT)
        refused = self.login(s.factory, "192.0.2.1")
        self.assertEqual(refused.value()[-2:], b"\x01\x01")
        self.assertTrue(refused.disconnecting)
        self.assertEqual(len(checker.asked), MAX_LOGINS_PER_CLIENT, "no check was queued")
        other = self.login(s.factory, "192.0.2.2")
        self.assertFalse(other.disconnecting)
        # Clients that leave release their place (their checks are cancelled).
        for transport in waiting:
            transport.protocol.connectionLost()
        self.assertTrue(all(d.called for d in checker.asked[:MAX_LOGINS_PER_CLIENT]))
        self.assertEqual(dict(s.factory.gate.logins), {ipaddress.ip_address("192.0.2.2"): 1})


class ResolverPropertyTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(
        st.one_of(
            st.binary(min_size=1, max_size=255),
            st.from_regex(r"[A-Za-z0-9_.-]{1,60}", fullmatch=True).map(str.encode),
        )
    )
    def test_only_valid_canonical_names_reach_the_resolver(self, raw: bytes) -> None:
        s, seen = session_recording_lookups()
        s.send(NO_AUTH_GREETING + raw_request(raw))
        try:
            expected = canonical(raw)
        except InvalidName:
            event("invalid: never looked up")
            self.assertEqual(seen, [])
            self.assertEqual(reply_code(s.take()), Reply.HOST_UNREACHABLE)
            return
        if seen:
            event("looked up")
            self.assertEqual(seen, [expected])
            self.assertTrue(expected.isascii() and expected == expected.lower())
        else:
            event("an address: never looked up")
            self.assertTrue(is_address(expected))


class MidLoginTests(SynchronousTestCase):
    def login(self, factory: Any, host: str) -> Any:
        return LoginFloodTests.login(self, factory, host)  # type: ignore[arg-type]

    def test_a_client_that_leaves_mid_login_cancels_its_check(self) -> None:
        checker = _SlowChecker()
        s = make_session(portal_for_checkers([checker]))
        transport = self.login(s.factory, "192.0.2.1")
        protocol = transport.protocol
        self.assertEqual(len(checker.asked), 1)
        protocol.readConnectionLost()  # the client half-closes: it left
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.assertTrue(checker.asked[0].called, "the check was cancelled")
        self.assertEqual(dict(s.factory.gate.logins), {})
        self.assertEqual(protocol.outcome, "client left during authentication")

    def test_a_client_that_pipelined_its_request_may_half_close_during_login(self) -> None:
        checker = _SlowChecker()
        s = make_session(portal_for_checkers([checker]))
        transport = self.login(s.factory, "192.0.2.1")
        protocol = transport.protocol
        protocol.dataReceived(connect_request("192.0.2.9", 80))
        protocol.readConnectionLost()
        self.assertFalse(transport.disconnecting, "its request is still to be served")
        checker.asked[0].callback(b"mallory")
        self.assertIs(protocol.state, State.CONNECTING)
