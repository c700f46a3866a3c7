"""
GSSAPI (RFC 1961) in a session, without a KDC: the real L{Acceptor} and
L{Protector} over a fake security context whose "wrap" marks a message as
encrypted (C{E}) or only signed (C{S}).  The tests with a real MIT KDC and
real tickets are in C{tests/test_gssapi.py}; these reach every failure path
with exact bytes.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides

from socks5twist import codec, gss, gsssession, gsswire
from socks5twist.gss import GSSFailure, ServerSettings, choose_level
from socks5twist.gsstransport import ProtectedTransport
from socks5twist.gsswire import Deframer, Mtyp, Protection, build
from socks5twist.states import State
from socks5twist.test.helpers import connect_request, make_session
from socks5twist.twistedinternals import half_closer, has_producer

GSS_GREETING = codec.build_greeting([codec.Method.GSSAPI])


class FakeContext:
    """A security context as python-gssapi's looks to L{gss}: tokens are labels."""

    def __init__(self, target: str = "rcmd/localhost@SOCKS.TEST") -> None:
        self.complete = False
        self.actual_flags: set[object] = {"replay"}
        self.target_name = target
        self.initiator_name = "alice@SOCKS.TEST"

    def step(self, token: bytes) -> bytes | None:
        if token == b"round1":
            return b"more"
        if token == b"final":
            self.complete = True
            return b"mutual"
        if token == b"silent":
            self.complete = True
            return None
        raise ValueError("Invalid token was supplied \x1b[2J (defective token)")

    def wrap(self, data: bytes, encrypt: bool) -> Any:
        return SimpleNamespace(message=(b"E" if encrypt else b"S") + bytes(data))

    def unwrap(self, token: bytes) -> Any:
        if token[:1] not in (b"E", b"S"):
            raise ValueError("A token had an invalid Message Integrity Check (MIC)")
        return SimpleNamespace(message=token[1:], encrypted=token[:1] == b"E")


class FakeAcceptor(gss.Acceptor):
    """The real acceptor's logic over a L{FakeContext}."""

    contexts: list[FakeContext] = []

    def __init__(self, credentials: Any, settings: ServerSettings) -> None:
        self.rounds = 0
        self._settings = settings
        flags = SimpleNamespace(anonymity="anon", replay_detection="replay")
        self._gssapi = SimpleNamespace(RequirementFlag=flags)
        self._context = FakeContext()
        FakeAcceptor.contexts.append(self._context)


ALL = frozenset({Protection.CLEAR, Protection.INTEGRITY, Protection.CONFIDENTIALITY})


def level_message(level: int, encrypt: bool = False) -> bytes:
    return build(Mtyp.PROTECTION, (b"E" if encrypt else b"S") + bytes((level,)))


def wrapped(data: bytes, label: bytes = b"E") -> bytes:
    return build(Mtyp.MESSAGE, label + data)


class GSSAPISessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(gss, "acceptor_credentials", lambda settings: "credentials")
        self.patch(gsssession, "Acceptor", FakeAcceptor)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def session(self, **settings: Any) -> Any:
        settings.setdefault("levels", ALL)
        return make_session(gssapi=ServerSettings(**settings))

    def lines(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.info]

    def established(self, **settings: Any) -> Any:
        s = self.session(**settings)
        s.send(GSS_GREETING)
        s.send(build(Mtyp.AUTHENTICATION, b"final"))
        self.assertEqual(s.take(), b"\x05\x01" + build(Mtyp.AUTHENTICATION, b"mutual"))
        return s

    def test_a_whole_negotiation_at_confidentiality(self) -> None:
        s = self.session()
        s.send(GSS_GREETING)
        self.assertEqual(s.take(), b"\x05\x01")
        s.send(build(Mtyp.AUTHENTICATION, b"round1"))
        self.assertEqual(s.take(), build(Mtyp.AUTHENTICATION, b"more"))
        s.send(build(Mtyp.AUTHENTICATION, b"final"))
        self.assertEqual(s.take(), build(Mtyp.AUTHENTICATION, b"mutual"))
        self.assertEqual(s.protocol.user, "alice@SOCKS.TEST")
        s.send(level_message(Protection.CONFIDENTIALITY))
        # The answer is wrapped as the request was: signed, not sealed.
        self.assertEqual(s.take(), level_message(Protection.CONFIDENTIALITY))
        from socks5twist.metrics import Metrics

        rendered = Metrics(s.factory).render().decode()
        self.assertIn(
            'socks5_logins_total{method="gssapi",protection="confidentiality"} 1.0', rendered
        )
        self.assertIn('socks5_logins_total{method="password",protection="none"} 0.0', rendered)
        s.send(wrapped(connect_request("10.9.8.7", 80)))
        self.assertIs(s.protocol.state, State.CONNECTING)
        remote = s.remote()
        reply = s.take()
        self.assertEqual(reply[:4], b"\x01\x03\x00\x0b")
        self.assertEqual(reply[4:8], b"E\x05\x00\x00", "the reply is sealed")
        s.send(wrapped(b"hello"))
        self.assertEqual(remote.transport.value(), b"hello")
        remote.dataReceived(b"world")
        self.assertEqual(s.take(), wrapped(b"world"))
        self.assertEqual(s.protocol.relay.kind, "stream", "a wrapped tunnel never splices")

    def test_everything_pipelined_in_one_read(self) -> None:
        s = self.session()
        s.send(
            GSS_GREETING
            + build(Mtyp.AUTHENTICATION, b"final")
            + level_message(Protection.INTEGRITY)
            + wrapped(connect_request("10.9.8.7", 80), b"S")
            + wrapped(b"early", b"S")
        )
        remote = s.remote()
        self.assertEqual(remote.transport.value(), b"early")
        out = s.take()
        self.assertIn(build(Mtyp.PROTECTION, b"S\x01"), out)
        self.assertTrue(out.endswith(b"\x01\x03\x00\x0bS\x05\x00\x00\x01\xc6\x33\x64\x07\xa8\xca"))

    def test_a_clear_level_leaves_the_stream_alone(self) -> None:
        s = self.established()
        s.send(level_message(Protection.CLEAR))
        self.assertEqual(s.take(), level_message(Protection.CLEAR))
        s.send(connect_request("10.9.8.7", 80))
        s.remote()
        self.assertEqual(s.take()[:3], b"\x05\x00\x00")

    def test_the_server_chooses_among_the_levels_allowed(self) -> None:
        s = self.established(levels=frozenset({Protection.CONFIDENTIALITY}))
        s.send(level_message(Protection.CLEAR))
        self.assertEqual(s.take(), level_message(Protection.CONFIDENTIALITY))
        self.assertEqual(s.protocol.protection, Protection.CONFIDENTIALITY)

    def test_a_token_the_library_refuses_aborts_with_one_escaped_line(self) -> None:
        s = self.session()
        s.send(GSS_GREETING)
        s.take()
        s.send(build(Mtyp.AUTHENTICATION, b"\x00garbage\xff"))
        self.assertEqual(s.take(), gsswire.ABORT)
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.protocol.outcome, "GSSAPI authentication failed")
        [line] = [line for line in self.lines() if "GSSAPI" in line]
        self.assertIn("Invalid token was supplied \\x1b[2J", line)
        self.assertTrue(line.isprintable())
        self.assertEqual(s.factory.stats.auth_failures, 1)

    def test_a_context_for_another_service_is_refused(self) -> None:
        s = self.session()
        s.send(GSS_GREETING)
        FakeAcceptor.contexts[-1].target_name = "HTTP/localhost@SOCKS.TEST"
        s.take()
        s.send(build(Mtyp.AUTHENTICATION, b"final"))
        self.assertEqual(s.take(), gsswire.ABORT)
        self.assertIsNone(s.protocol.user)
        self.assertIn("not rcmd/", "".join(self.lines()))

    def test_an_anonymous_initiator_is_refused(self) -> None:
        s = self.session()
        s.send(GSS_GREETING)
        FakeAcceptor.contexts[-1].actual_flags = {"anon"}
        s.take()
        s.send(build(Mtyp.AUTHENTICATION, b"final"))
        self.assertEqual(s.take(), gsswire.ABORT)
        self.assertIsNone(s.protocol.user)

    def test_a_context_that_never_completes_is_cut_short(self) -> None:
        s = self.session()
        s.send(GSS_GREETING)
        s.take()
        for _ in range(gss.MAX_ROUNDS):
            s.send(build(Mtyp.AUTHENTICATION, b"round1"))
            self.assertEqual(s.take(), build(Mtyp.AUTHENTICATION, b"more"))
        s.send(build(Mtyp.AUTHENTICATION, b"round1"))
        self.assertEqual(s.take(), gsswire.ABORT)
        self.assertIn("more than 8 context tokens", "".join(self.lines()))

    def test_a_context_complete_without_a_last_token(self) -> None:
        s = self.session()
        s.send(GSS_GREETING + build(Mtyp.AUTHENTICATION, b"silent"))
        self.assertEqual(s.take(), b"\x05\x01", "nothing more is sent")
        s.send(level_message(Protection.INTEGRITY))
        self.assertEqual(s.take(), level_message(Protection.INTEGRITY))

    def test_a_wrapping_level_needs_replay_detection(self) -> None:
        s = self.established()
        FakeAcceptor.contexts[-1].actual_flags = set()
        s.send(level_message(Protection.INTEGRITY))
        self.assertEqual(s.take(), gsswire.ABORT)
        self.assertIn("does not detect replays", "".join(self.lines()))
        s = self.established()
        FakeAcceptor.contexts[-1].actual_flags = set()
        s.send(level_message(Protection.CLEAR))
        self.assertEqual(s.take(), level_message(Protection.CLEAR), "clear wraps nothing")

    def test_the_nec_level_needs_the_operators_word(self) -> None:
        s = self.established()
        s.send(build(Mtyp.PROTECTION, b"\x02"))
        self.assertEqual(s.take(), gsswire.ABORT)
        self.assertIn("--gssapi-nec", "".join(self.lines()))
        s = self.established(allow_nec=True)
        s.send(build(Mtyp.PROTECTION, b"\x02"))
        self.assertEqual(s.take(), build(Mtyp.PROTECTION, b"\x02"), "answered unwrapped too")

    def test_a_level_that_does_not_unwrap_aborts(self) -> None:
        s = self.established()
        s.send(build(Mtyp.PROTECTION, b"Xforged"))
        self.assertEqual(s.take(), gsswire.ABORT)
        self.assertEqual(s.protocol.outcome, "GSSAPI protection level refused")

    def test_a_level_of_two_bytes_aborts(self) -> None:
        s = self.established()
        s.send(build(Mtyp.PROTECTION, b"S\x01\x02"))
        self.assertEqual(s.take(), gsswire.ABORT)

    def test_a_signed_only_message_at_confidentiality_resets(self) -> None:
        s = self.established()
        s.send(level_message(Protection.CONFIDENTIALITY))
        s.take()
        s.send(wrapped(connect_request(), b"S"))
        self.assertTrue(s.transport.disconnecting or s.transport.disconnected)
        self.assertEqual(s.protocol.outcome, "GSSAPI message refused")
        self.assertIn("not encrypted", "".join(self.lines()))
        self.assertEqual(s.reactor.tcpClients, [], "nothing was connected")

    def test_a_message_that_does_not_unwrap_in_the_tunnel_resets_both_sides(self) -> None:
        s = self.established()
        s.send(level_message(Protection.INTEGRITY) + wrapped(connect_request(), b"S"))
        remote = s.remote()
        s.take()
        s.send(wrapped(b"forged", b"Z"))
        self.assertEqual(s.protocol.outcome, "GSSAPI message refused")
        self.assertEqual(remote.transport.value(), b"", "nothing of it reached the destination")
        self.assertTrue(remote.transport.disconnecting or remote.transport.disconnected)

    def test_a_frame_that_is_not_a_message_resets(self) -> None:
        s = self.established()
        s.send(level_message(Protection.INTEGRITY))
        s.take()
        s.send(b"\x05\x01\x00\x01\x0a\x09\x08\x07\x00\x50")  # a request in the clear
        self.assertEqual(s.protocol.outcome, "GSSAPI message refused")

    def test_a_message_split_across_reads(self) -> None:
        s = self.established()
        s.send(level_message(Protection.INTEGRITY))
        s.take()
        message = wrapped(connect_request(), b"S")
        for i in range(len(message)):
            self.assertIs(s.protocol.state, State.REQUEST)
            s.send(message[i : i + 1])
        self.assertIs(s.protocol.state, State.CONNECTING)

    def late_login(self) -> tuple[Any, list[Any], list[str]]:
        """A session whose realm answers when the test says (the Deferreds, the logouts)."""
        s = self.session()
        logins: list[Any] = []
        logouts: list[str] = []

        def login(credentials: Any, mind: Any, *interfaces: Any) -> Any:
            d: defer.Deferred[Any] = defer.Deferred()
            logins.append(d)
            return d

        s.factory.gss_portal = SimpleNamespace(login=login)
        return s, logins, logouts

    def test_nothing_pipelined_is_acted_on_before_the_realm_answers(self) -> None:
        s, logins, logouts = self.late_login()
        s.send(
            GSS_GREETING
            + build(Mtyp.AUTHENTICATION, b"final")
            + level_message(Protection.INTEGRITY)
            + wrapped(connect_request("10.9.8.7", 80), b"S")
        )
        self.assertEqual(s.take(), b"\x05\x01" + build(Mtyp.AUTHENTICATION, b"mutual"))
        self.assertIs(s.protocol.state, State.AUTHENTICATING)
        self.assertEqual(s.reactor.tcpClients, [])
        avatar = SimpleNamespace(name="alice@SOCKS.TEST")
        logins[0].callback((None, avatar, lambda: logouts.append("alice")))
        self.assertEqual(s.take(), level_message(Protection.INTEGRITY))
        self.assertIs(s.protocol.state, State.CONNECTING)

    def test_a_client_gone_before_the_realm_answers_is_not_logged_in(self) -> None:
        s, logins, logouts = self.late_login()
        s.send(GSS_GREETING + build(Mtyp.AUTHENTICATION, b"final"))
        s.take()
        s.protocol.connectionLost(Failure(ConnectionDone()))
        avatar = SimpleNamespace(name="alice@SOCKS.TEST")
        logins[0].callback((None, avatar, lambda: logouts.append("alice")))  # too late: ignored
        self.assertIsNone(s.protocol.user)
        self.assertEqual(s.take(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_the_session_line_names_the_level(self) -> None:
        s = self.established()
        s.send(level_message(Protection.INTEGRITY) + wrapped(connect_request(), b"S"))
        s.remote()
        s.protocol.connectionLost()
        [line] = [line for line in self.lines() if "session " in line]
        self.assertIn("user=alice@SOCKS.TEST", line)
        self.assertIn(" gssapi=integrity ", line)


class WireTests(SynchronousTestCase):
    def test_levels_chosen(self) -> None:
        c, i, k, s = (Protection.CLEAR, Protection.INTEGRITY, Protection.CONFIDENTIALITY, 3)
        cases = [
            (c, frozenset({c, i, k}), c),
            (k, frozenset({i}), i),
            (c, frozenset({i, k}), k),
            (s, frozenset({c, i}), i),  # selective: the server's choice
            (200, frozenset({i}), i),  # no such level: the server's choice
        ]
        for asked, allowed, chosen in cases:
            self.assertIs(choose_level(asked, allowed), chosen, (asked, allowed))

    def test_the_deframer_takes_messages_split_anywhere(self) -> None:
        stream = build(Mtyp.MESSAGE, b"a" * 300) + build(Mtyp.MESSAGE, b"b") * 3
        for cut in range(len(stream) + 1):
            d = Deframer()
            tokens = d.feed(stream[:cut]) + d.feed(stream[cut:])
            self.assertEqual(tokens, [b"a" * 300, b"b", b"b", b"b"], cut)
            self.assertEqual(d.pending, 0)

    def test_the_deframer_holds_at_most_one_message(self) -> None:
        d = Deframer()
        d.feed(b"\x01\x03\xff\xff" + b"x" * 65534)
        self.assertEqual(d.pending, 65538)
        self.assertEqual(d.feed(b"x"), [b"x" * 65535])
        self.assertEqual(d.pending, 0)

    def test_a_broken_stream_stays_broken(self) -> None:
        d = Deframer()
        with self.assertRaises(codec.MalformedMessage):
            d.feed(b"\x01\x01\x00\x01x")
        self.assertEqual(d.pending, 0)
        with self.assertRaises(codec.MalformedMessage):
            d.feed(build(Mtyp.MESSAGE, b"ok"))

    def test_a_token_too_big_for_a_message_is_our_bug(self) -> None:
        with self.assertRaises(ValueError):
            build(Mtyp.MESSAGE, b"x" * 65536)

    def test_long_writes_are_wrapped_in_chunks_that_fit(self) -> None:
        protector = gss.Protector(FakeContext(), Protection.CONFIDENTIALITY)
        tokens = protector.wrap(b"z" * 100_000)
        self.assertEqual(len(tokens), 4)
        self.assertTrue(all(len(t) <= gss.MAX_CHUNK + 1 for t in tokens))
        self.assertEqual(b"".join(protector.unwrap(t) for t in tokens), b"z" * 100_000)

    def test_unwrap_failures_are_gss_failures(self) -> None:
        protector = gss.Protector(FakeContext(), Protection.INTEGRITY)
        with self.assertRaises(GSSFailure):
            protector.unwrap(b"Qforged")

    def test_the_relay_sees_the_real_transports_producer(self) -> None:
        """C{has_producer} (the relay's half-close unregisters first) looks through."""
        real = StringTransport()
        transport = ProtectedTransport(real, gss.Protector(FakeContext(), Protection.INTEGRITY))
        self.assertFalse(has_producer(transport))
        producer = StringTransport()
        transport.registerProducer(producer, True)
        self.assertIs(real.producer, producer)
        self.assertTrue(has_producer(transport))
        transport.unregisterProducer()
        self.assertFalse(has_producer(transport))

    def test_over_tls_it_cannot_half_close(self) -> None:
        """Over TLS the relay closes whole: the wrapped transport says it is TLS too."""
        protector = gss.Protector(FakeContext(), Protection.INTEGRITY)
        plain = ProtectedTransport(StringTransport(), protector)
        self.assertIsNotNone(half_closer(plain))
        real = StringTransport()
        alsoProvides(real, ISSLTransport)
        self.assertIsNone(half_closer(ProtectedTransport(real, protector)))
