"""
GSSAPI (RFC 1961) in the SOCKS5 client, without a KDC: the negotiation's
messages with a fake initiator (L{fakegss}), a hostile proxy's bytes, the
protected tunnel through the endpoint, and the C{socks5:} string's keywords.
The real library against a real KDC and proxy: C{tests/test_gssapi_client.py}.
"""

from __future__ import annotations

import struct
import sys
from typing import Any
from unittest import mock

from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionAborted
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from socks5twist import codec
from socks5twist.client import SOCKS5ClientEndpoint, errors
from socks5twist.client.negotiation import (
    NEED_DATA,
    ClientConnection,
    Established,
    Send,
    State,
)
from socks5twist.client.protection import GSSAPISettings, ProtectedStream, settings_for
from socks5twist.codec import Address, AddressType, Command
from socks5twist.gsswire import Protection

from .fakegss import FakeInitiator, FakeProtector
from .test_client_endpoint import SUCCESS, EndpointCase

DEST = Address(AddressType.DOMAIN, "example.org", 443)
REQUEST = codec.build_request(Command.CONNECT, DEST)
C, INTEG, P = Protection.CONFIDENTIALITY, Protection.INTEGRITY, Protection.CLEAR


def msg(mtyp: int, token: bytes) -> bytes:
    return struct.pack("!BBH", 1, mtyp, len(token)) + token


def sealed(data: bytes) -> bytes:
    """What the fake protector makes of C{data} (one chunk per 1000 bytes)."""
    return b"".join(msg(3, b"P" + data[i : i + 1000]) for i in range(0, len(data), 1000))


def settings(protection: Protection = C, nec: bool = False, **fake: Any) -> GSSAPISettings:
    return GSSAPISettings(
        "rcmd@proxy.test", protection, nec, initiator=lambda target: FakeInitiator(target, **fake)
    )


def started(
    protection: Protection = C, nec: bool = False, credentials=None, **fake: Any
) -> ClientConnection:
    connection = ClientConnection(
        Command.CONNECT, DEST, credentials, settings(protection, nec, **fake)
    )
    connection.start()
    return connection


def feed(connection: ClientConnection, data: bytes) -> list[object]:
    connection.receive_data(data)
    events: list[object] = []
    while (event := connection.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, Established):
            break
    return events


def through_level(level: Protection = C, answer: bytes | None = None, **kw: Any):
    """A negotiation up to the level's answer; returns it and what it sent then."""
    connection = started(level, **kw)
    feed(connection, b"\x05\x01")
    feed(connection, msg(1, b"s1"))
    return connection, feed(connection, msg(2, answer or b"W" + bytes((level,))))


class MessageTests(unittest.TestCase):
    def test_gssapi_is_offered_instead_of_no_authentication(self) -> None:
        self.assertEqual(started().methods, (1,))
        connection = ClientConnection(Command.CONNECT, DEST, None, settings())
        self.assertEqual(connection.start(), b"\x05\x01\x01")
        connection = ClientConnection(Command.CONNECT, DEST, (b"u", b"p"), settings())
        self.assertEqual(connection.start(), b"\x05\x02\x01\x02")

    def test_context_level_then_a_protected_request_and_reply(self) -> None:
        connection = started()
        self.assertEqual(feed(connection, b"\x05\x01"), [Send(msg(1, b"c1"))])
        self.assertIs(connection.state, State.GSS_CONTEXT)
        # The server's token completes the context: the level follows at once.
        self.assertEqual(feed(connection, msg(1, b"s1")), [Send(msg(2, b"W\x02"))])
        self.assertIs(connection.state, State.GSS_LEVEL)
        self.assertEqual(feed(connection, msg(2, b"W\x02")), [Send(sealed(REQUEST))])
        self.assertIs(connection.state, State.REPLY)
        events = feed(connection, sealed(SUCCESS + b"early") + msg(3, b"Pmore")[:5])
        self.assertIsInstance(events[-1], Established)
        self.assertEqual(connection.take_data(), b"early")
        assert connection.protection is not None
        self.assertEqual(connection.protection.level, C)
        self.assertEqual(connection.protection.pending, 5)  # handed on to the tunnel

    def test_a_reply_split_across_messages_and_reads(self) -> None:
        connection, _ = through_level(INTEG)
        wire = msg(3, b"P" + SUCCESS[:3]) + msg(3, b"P" + SUCCESS[3:])
        events: list[object] = []
        for i in range(len(wire)):
            events += feed(connection, wire[i : i + 1])
        self.assertEqual(len(events), 1)
        self.assertIsInstance(events[0], Established)

    def test_several_rounds(self) -> None:
        connection = started(rounds=3)
        feed(connection, b"\x05\x01")
        self.assertEqual(feed(connection, msg(1, b"s1")), [Send(msg(1, b"c2"))])
        self.assertEqual(feed(connection, msg(1, b"s2")), [Send(msg(1, b"c3"))])
        self.assertEqual(feed(connection, msg(1, b"s3")), [Send(msg(2, b"W\x02"))])

    def test_clear_sends_and_reads_the_request_and_reply_as_they_are(self) -> None:
        connection, sent = through_level(P)
        self.assertEqual(sent, [Send(REQUEST)])
        self.assertIsNone(connection.protection)
        self.assertIsInstance(feed(connection, SUCCESS)[0], Established)

    def test_nec_mode_sends_and_reads_one_unwrapped_byte(self) -> None:
        connection = started(INTEG, nec=True)
        feed(connection, b"\x05\x01")
        self.assertEqual(feed(connection, msg(1, b"s1")), [Send(msg(2, b"\x01"))])
        self.assertEqual(feed(connection, msg(2, b"\x01")), [Send(sealed(REQUEST))])

    def test_a_stronger_level_than_asked_is_accepted(self) -> None:
        connection, sent = through_level(INTEG, answer=b"W\x02")
        self.assertEqual(sent, [Send(sealed(REQUEST))])
        assert connection.protection is not None
        self.assertEqual(connection.protection.level, C)

    def test_password_still_works_beside_gssapi(self) -> None:
        connection = started(credentials=(b"u", b"p"))
        [send] = feed(connection, b"\x05\x02")
        self.assertEqual(send, Send(codec.build_auth_request(b"u", b"p")))


class RefusalTests(unittest.TestCase):
    def refused(self, connection: ClientConnection, data: bytes, cls: type[Exception]) -> str:
        connection.receive_data(data)
        error = self.assertRaises(cls, connection.next_event)
        self.assertIs(connection.state, State.CLOSED)
        self.assertEqual(connection.take_data(), b"")
        text = str(error)
        self.assertTrue(text.isascii() and text.isprintable(), text)
        return text

    def test_a_weaker_or_unknown_level_is_refused(self) -> None:
        for asked, answer in [(C, 1), (C, 0), (INTEG, 0), (INTEG, 3), (P, 3), (C, 7)]:
            connection = started(asked)
            feed(connection, b"\x05\x01")
            feed(connection, msg(1, b"s1"))
            text = self.refused(
                connection, msg(2, b"W" + bytes((answer,))), errors.ProtectionLevelRefused
            )
            self.assertIn(f"chose protection level {answer}", text)

    def test_the_proxys_abort_at_each_step(self) -> None:
        for before in ([], [msg(1, b"s1")]):
            connection = started(rounds=2)
            feed(connection, b"\x05\x01")
            for message in before:
                feed(connection, message)
            text = self.refused(connection, b"\x01\xff", errors.GSSAPIAborted)
            self.assertIn("the proxy refused", text)
        connection = started()
        feed(connection, b"\x05\x01")
        feed(connection, msg(1, b"s1"))
        self.refused(connection, b"\x01\xff", errors.GSSAPIAborted)
        connection, _ = through_level()
        self.refused(connection, b"\x01\xff", errors.GSSAPIAborted)

    def test_our_library_fails_at_the_first_step(self) -> None:
        connection = started(fail="No Kerberos credentials available\n\x1b[31m")
        text = self.refused(connection, b"\x05\x01", errors.GSSAPIError)
        self.assertIn("No Kerberos credentials available", text)

    def test_a_garbage_token_is_our_librarys_refusal(self) -> None:
        connection = started()
        feed(connection, b"\x05\x01")
        text = self.refused(connection, msg(1, b"\xff" * 0xFFFF), errors.GSSAPIError)
        self.assertIn("defective token", text)

    def test_wrong_version_type_and_bytes_after_a_token(self) -> None:
        for data, expected in [
            (b"\x05\x01\x00\x02s1", "GSSAPI message version 5"),
            (msg(2, b"W\x02"), "GSSAPI message type 2 (expected 1)"),
            (msg(1, b"s1") + b"\x00", "1 bytes after the GSSAPI context token"),
        ]:
            connection = started()
            feed(connection, b"\x05\x01")
            self.assertIn(expected, self.refused(connection, data, errors.ProxyProtocolError))

    def test_a_level_that_does_not_unwrap(self) -> None:
        connection = started()
        feed(connection, b"\x05\x01")
        feed(connection, msg(1, b"s1"))
        self.refused(connection, msg(2, b"\x02"), errors.GSSAPIError)

    def test_a_reply_that_does_not_unwrap_or_is_not_protected(self) -> None:
        connection, _ = through_level()
        self.assertIn("bad MIC", self.refused(connection, msg(3, SUCCESS), errors.GSSAPIError))
        connection, _ = through_level()
        text = self.refused(connection, SUCCESS, errors.ProxyProtocolError)
        self.assertIn("GSSAPI message version 5", text)

    def test_close_in_each_gssapi_phase(self) -> None:
        connection = started()
        feed(connection, b"\x05\x01")
        error = self.refused(connection, b"", errors.ProxyClosedError)
        self.assertIn("before its GSSAPI context token", error)
        connection = started()
        feed(connection, b"\x05\x01")
        feed(connection, msg(1, b"s1")[:3])
        self.assertIn("in the middle", self.refused(connection, b"", errors.ProxyProtocolError))
        connection, _ = through_level()
        feed(connection, msg(3, b"P" + SUCCESS)[:6])
        text = self.refused(connection, b"", errors.ProxyProtocolError)
        self.assertIn("middle of its reply: 6 bytes of a protected message", text)


class ProtectedStreamTests(unittest.TestCase):
    def test_byte_by_byte_and_bounded(self) -> None:
        stream = ProtectedStream(FakeProtector(C), C)
        data = bytes(range(256)) * 10
        wire = stream.seal(data)
        self.assertEqual(wire, sealed(data))
        out = b""
        for i in range(len(wire)):
            out += stream.open(wire[i : i + 1])
            self.assertLessEqual(stream.pending, 4 + 0xFFFF)
        self.assertEqual(out, data)
        self.assertEqual(stream.pending, 0)

    def test_a_broken_header_breaks_the_stream(self) -> None:
        stream = ProtectedStream(FakeProtector(C), C)
        self.assertRaises(errors.ProxyProtocolError, stream.open, b"\x02\x03\x00\x00")
        self.assertRaises(errors.ProxyProtocolError, stream.open, msg(3, b"Pok"))


class SettingsTests(unittest.TestCase):
    def test_mistakes_are_value_errors(self) -> None:
        self.assertRaises(ValueError, GSSAPISettings, "")
        self.assertRaises(ValueError, GSSAPISettings, "rcmd@host\n")
        self.assertRaises(ValueError, GSSAPISettings, "rcmd@host", Protection.SELECTIVE)
        self.assertRaises(ValueError, settings_for, None, C, None)
        self.assertRaises(ValueError, settings_for, settings(), None, True)


class EndpointTests(EndpointCase):
    def gss_connect(self, **fake: Any) -> tuple[Any, Any, Any]:
        d, protocol, transport = self.connect(gssapi=settings(**fake))
        self.assertEqual(transport.value(), b"\x05\x01\x01")
        for answer in [b"\x05\x01", msg(1, b"s1"), msg(2, b"W\x02")]:
            transport.clear()
            protocol.dataReceived(answer)
        self.assertEqual(transport.value(), sealed(REQUEST))
        transport.clear()
        return d, protocol, transport

    def test_every_byte_of_the_tunnel_is_wrapped_and_unwrapped(self) -> None:
        d, protocol, transport = self.gss_connect()
        protocol.dataReceived(sealed(SUCCESS + b"early") + sealed(b"later")[:4])
        self.assertIs(self.successResultOf(d), self.recorder)
        protocol.dataReceived(sealed(b"later")[4:])
        self.assertEqual(self.recorder.received, b"earlylater")
        tunnel: Any = self.recorder.transport
        tunnel.write(b"x" * 2500)
        tunnel.writeSequence([b"a", b"b"])
        self.assertEqual(transport.value(), sealed(b"x" * 2500) + sealed(b"ab"))

    def test_a_message_that_does_not_unwrap_closes_with_the_reason(self) -> None:
        d, protocol, transport = self.gss_connect()
        protocol.dataReceived(sealed(SUCCESS))
        self.successResultOf(d)
        protocol.dataReceived(msg(3, b"forged") + sealed(b"after"))
        self.assertTrue(transport.disconnecting or transport.aborted)
        protocol.dataReceived(sealed(b"ignored"))
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(self.recorder.received, b"")
        self.assertEqual(self.recorder.events[-1], ("lost", errors.GSSAPIError))

    def test_eof_in_the_middle_of_a_protected_message(self) -> None:
        d, protocol, _ = self.gss_connect()
        protocol.dataReceived(sealed(SUCCESS) + sealed(b"cut")[:5])
        self.successResultOf(d)
        protocol.readConnectionLost()
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(self.recorder.events[-1], ("lost", errors.ProxyProtocolError))

    def test_the_proxys_abort_fails_the_connection(self) -> None:
        d, protocol, _ = self.connect(gssapi=settings())
        protocol.dataReceived(b"\x05\x01")
        protocol.dataReceived(b"\x01\xff")
        self.failed(d, errors.GSSAPIAborted)


class EndpointStringTests(unittest.TestCase):
    def test_gssapi_keywords(self) -> None:
        description = r"socks5:example.org:443:proxy=tcp\:127.0.0.1\:1080:gssapi=rcmd@proxy.test"
        endpoint: Any = clientFromString(Clock(), description)
        self.assertEqual(endpoint.gssapi.target, "rcmd@proxy.test")
        self.assertEqual((endpoint.gssapi.protection, endpoint.gssapi.nec), (C, False))
        endpoint = clientFromString(
            Clock(), description + ":gssapi_protection=Integrity:gssapi_nec=yes"
        )
        self.assertEqual((endpoint.gssapi.protection, endpoint.gssapi.nec), (INTEG, True))
        self.assertIn("gssapi=rcmd@proxy.test", repr(endpoint))
        for bad in [":gssapi_protection=selective", ":gssapi_nec=maybe"]:
            self.assertRaises(ValueError, clientFromString, Clock(), description + bad)
        self.assertRaises(
            ValueError,
            clientFromString,
            Clock(),
            r"socks5:a.test:1:proxy=tcp\:127.0.0.1\:1080:gssapi_protection=clear",
        )

    def test_without_the_gssapi_package_the_error_says_how_to_get_it(self) -> None:
        from socks5twist.gss import MissingGSSAPI

        with mock.patch.dict(sys.modules, {"gssapi": None}):  # import gssapi fails
            error = self.assertRaises(
                MissingGSSAPI, SOCKS5ClientEndpoint, Factory(), "a.test", 1, gssapi="rcmd@a.test"
            )
        self.assertIn("pip install 'socks5twist[gssapi]'", str(error))
