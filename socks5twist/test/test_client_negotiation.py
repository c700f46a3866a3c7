"""
The client side of the negotiation, sans I/O: the bytes it sends for each
proxy message, the exception for each failure, and a hostile proxy's bytes.
"""

from __future__ import annotations

from twisted.trial import unittest

from socks5twist import codec
from socks5twist.client import errors
from socks5twist.client.negotiation import (
    NEED_DATA,
    TRANSITIONS,
    Bound,
    ClientConnection,
    Established,
    Kind,
    LocalProtocolError,
    Send,
    State,
)
from socks5twist.codec import Address, AddressType, Command

DEST = Address(AddressType.DOMAIN, "example.org", 443)
BOUND = Address(AddressType.IPV4, "198.51.100.9", 40001)
SUCCESS = codec.build_reply(0, BOUND)


def started(credentials: tuple[bytes, bytes] | None = None, command=Command.CONNECT, dest=DEST):
    connection = ClientConnection(command, dest, credentials)
    connection.start()
    return connection


def feed(connection: ClientConnection, data: bytes) -> list[object]:
    """The events after C{data}, up to NEED_DATA or the tunnel's opening."""
    connection.receive_data(data)
    events: list[object] = []
    while True:
        event = connection.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, Established):
            return events


class GreetingTests(unittest.TestCase):
    def test_without_credentials_offers_no_authentication_only(self) -> None:
        self.assertEqual(ClientConnection(Command.CONNECT, DEST).start(), b"\x05\x01\x00")

    def test_with_credentials_offers_both_methods(self) -> None:
        connection = ClientConnection(Command.CONNECT, DEST, (b"u", b"p"))
        self.assertEqual(connection.start(), b"\x05\x02\x00\x02")

    def test_credentials_over_255_bytes_are_refused_at_once(self) -> None:
        with self.assertRaises(ValueError):
            ClientConnection(Command.CONNECT, DEST, (b"u", b"p" * 256))

    def test_a_port_out_of_range_is_refused_at_once(self) -> None:
        with self.assertRaises(ValueError):
            ClientConnection(Command.CONNECT, Address(AddressType.IPV4, "192.0.2.1", 65536))


class SuccessTests(unittest.TestCase):
    def test_no_authentication_then_the_request_then_the_tunnel(self) -> None:
        connection = started()
        [send] = feed(connection, b"\x05\x00")
        self.assertEqual(send, Send(b"\x05\x01\x00\x03\x0bexample.org\x01\xbb"))
        self.assertEqual(feed(connection, SUCCESS), [Established(BOUND)])
        self.assertIs(connection.state, State.OPEN)

    def test_ipv4_and_ipv6_destinations_go_as_addresses(self) -> None:
        for dest, wire in [
            (Address(AddressType.IPV4, "192.0.2.1", 80), b"\x01\xc0\x00\x02\x01\x00\x50"),
            (
                Address(AddressType.IPV6, "2001:db8::1", 80),
                b"\x04" + bytes.fromhex("20010db8" + "00" * 11 + "01") + b"\x00\x50",
            ),
        ]:
            connection = started(dest=dest)
            [send] = feed(connection, b"\x05\x00")
            self.assertEqual(send, Send(b"\x05\x01\x00" + wire))

    def test_password_accepted(self) -> None:
        connection = started((b"alice", b"s3cret"))
        [send] = feed(connection, b"\x05\x02")
        self.assertEqual(send, Send(b"\x01\x05alice\x06s3cret"))
        self.assertNotIn("s3cret", repr(send))
        self.assertIs(connection.state, State.AUTH)
        [request] = feed(connection, b"\x01\x00")
        self.assertEqual(request, Send(codec.build_request(Command.CONNECT, DEST)))

    def test_credentials_given_but_the_proxy_wants_none(self) -> None:
        connection = started((b"alice", b"s3cret"))
        [send] = feed(connection, b"\x05\x00")
        self.assertEqual(send, Send(codec.build_request(Command.CONNECT, DEST)))

    def test_bytes_after_the_reply_are_the_tunnels(self) -> None:
        connection = started()
        feed(connection, b"\x05\x00")
        self.assertEqual(feed(connection, SUCCESS + b"HTTP/1.1 200"), [Established(BOUND)])
        self.assertEqual(connection.take_data(), b"HTTP/1.1 200")
        self.assertEqual(connection.take_data(), b"")

    def test_a_proxy_that_sends_one_byte_at_a_time(self) -> None:
        connection = started((b"u", b"p"))
        events: list[object] = []
        for byte in b"\x05\x02" + b"\x01\x00" + codec.build_reply(0, DEST):
            self.assertNotEqual(connection.state, State.OPEN)
            events += feed(connection, bytes([byte]))
        self.assertEqual(len(events), 3)
        self.assertEqual(events[-1], Established(DEST))
        self.assertEqual(connection.take_data(), b"")

    def test_bound_name_is_canonical(self) -> None:
        connection = started()
        feed(connection, b"\x05\x00")
        reply = b"\x05\x00\x00\x03\x0bEXAMPLE.NET\x00\x50"
        [event] = feed(connection, reply)
        self.assertEqual(event, Established(Address(AddressType.DOMAIN, "example.net", 80)))

    def test_bind_has_two_replies(self) -> None:
        connection = started(command=Command.BIND)
        feed(connection, b"\x05\x00")
        peer = Address(AddressType.IPV4, "192.0.2.7", 20)
        events = feed(connection, SUCCESS + codec.build_reply(0, peer) + b"early")
        self.assertEqual(events, [Bound(BOUND), Established(peer)])
        self.assertEqual(connection.take_data(), b"early")


class FailureTests(unittest.TestCase):
    def replied(self, code: int) -> errors.SOCKS5ClientError:
        connection = started()
        feed(connection, b"\x05\x00")
        connection.receive_data(codec.build_reply(code))
        error = self.assertRaises(errors.SOCKS5ClientError, connection.next_event)
        self.assertIs(connection.state, State.CLOSED)
        return error

    def test_each_reply_code_is_its_own_class(self) -> None:
        expected = {
            1: errors.GeneralFailure,
            2: errors.ConnectionNotAllowed,
            3: errors.NetworkUnreachable,
            4: errors.HostUnreachable,
            5: errors.ConnectionRefused,
            6: errors.TTLExpired,
            7: errors.CommandNotSupported,
            8: errors.AddressTypeNotSupported,
        }
        for code, cls in expected.items():
            error = self.replied(code)
            self.assertIs(type(error), cls)
            assert isinstance(error, errors.SOCKS5Error)
            self.assertEqual(error.code, code)
            self.assertIn(f"0x{code:02x}", str(error))
            self.assertIn("example.org:443", str(error))

    def test_unassigned_codes_keep_their_code(self) -> None:
        for code in (9, 0x80, 0xFF):
            error = self.replied(code)
            self.assertIs(type(error), errors.UnknownReply)
            assert isinstance(error, errors.SOCKS5Error)
            self.assertEqual(error.code, code)

    def test_no_acceptable_methods(self) -> None:
        connection = started()
        connection.receive_data(b"\x05\xff")
        error = self.assertRaises(errors.NoAcceptableMethods, connection.next_event)
        self.assertIsInstance(error, errors.AuthenticationError)
        self.assertEqual(error.offered, (0,))

    def test_login_rejected_names_the_user_escaped_but_not_the_password(self) -> None:
        connection = started((b"mal\nlory", b"s3cret"))
        feed(connection, b"\x05\x02")
        connection.receive_data(b"\x01\x01")
        error = self.assertRaises(errors.LoginRejected, connection.next_event)
        self.assertEqual(error.status, 1)
        self.assertIn("mal\\x0alory", str(error))
        self.assertNotIn("s3cret", str(error))
        self.assertIs(connection.state, State.CLOSED)

    def test_a_method_that_was_not_offered(self) -> None:
        for method in (b"\x02", b"\x01", b"\x80"):
            connection = started()
            connection.receive_data(b"\x05" + method)
            error = self.assertRaises(errors.ProxyProtocolError, connection.next_event)
            self.assertIn("not offered", str(error))


class HostileProxyTests(unittest.TestCase):
    def violation(self, *messages: bytes, credentials=None) -> str:
        connection = started(credentials)
        for message in messages[:-1]:
            feed(connection, message)
        connection.receive_data(messages[-1])
        error = self.assertRaises(errors.ProxyProtocolError, connection.next_event)
        self.assertIs(connection.state, State.CLOSED)
        self.assertEqual(connection.take_data(), b"")  # nothing kept
        text = str(error)
        self.assertTrue(text.isascii() and text.isprintable(), text)
        return text

    def test_bad_versions(self) -> None:
        self.assertIn("bad method selection version 0x04", self.violation(b"\x04\x00"))
        self.assertIn("0x05", self.violation(b"\x05\x02", b"\x05\x00", credentials=(b"u", b"p")))
        self.assertIn("bad reply version 0x04", self.violation(b"\x05\x00", b"\x04\x00\x00\x01"))

    def test_bad_address_type_in_the_reply(self) -> None:
        message = self.violation(b"\x05\x00", b"\x05\x00\x00\x07" + b"\x00" * 6)
        self.assertIn("unsupported address type 0x07", message)

    def test_a_bound_name_that_is_no_name(self) -> None:
        message = self.violation(b"\x05\x00", b"\x05\x00\x00\x03\x05a\x00\x1b[b\x00\x50")
        self.assertIn("a\\x00\\x1b[b", message)

    def test_overlong_method_selection(self) -> None:
        message = self.violation(b"\x05\x00\x05\x00\x00\x01")
        self.assertIn("4 bytes after the method selection 0x00", message)

    def test_overlong_status(self) -> None:
        self.violation(b"\x05\x02", b"\x01\x00\x05", credentials=(b"u", b"p"))

    def test_a_megabyte_of_garbage_is_decided_at_once_and_dropped(self) -> None:
        self.violation(b"\x05\x00", b"\x05\x00\x00\x09" + b"\xff" * (1 << 20))

    def test_truncated_reply(self) -> None:
        connection = started()
        feed(connection, b"\x05\x00")
        feed(connection, b"\x05\x00\x00\x01\x7f")
        connection.receive_data(b"")
        error = self.assertRaises(errors.ProxyProtocolError, connection.next_event)
        self.assertIn("in the middle of its reply: \\x05\\x00\\x00\\x01\\x7f", str(error))

    def test_close_before_each_message(self) -> None:
        for before, phase in [
            ([], "method selection"),
            ([b"\x05\x02"], "username/password status"),
            ([b"\x05\x02", b"\x01\x00"], "reply"),
        ]:
            connection = started((b"u", b"p"))
            for message in before:
                feed(connection, message)
            connection.receive_data(b"")
            error = self.assertRaises(errors.ProxyClosedError, connection.next_event)
            self.assertEqual(error.phase, phase)
            self.assertIn(f"closed the connection before its {phase}", str(error))


class TransitionTests(unittest.TestCase):
    def test_every_pair_outside_the_table_is_refused(self) -> None:
        for state in State:
            for kind in Kind:
                connection = ClientConnection(Command.CONNECT, DEST)
                connection.state = state
                if (state, kind) in TRANSITIONS:
                    connection._move(kind)
                    self.assertIs(connection.state, TRANSITIONS[state, kind])
                else:
                    self.assertRaises(LocalProtocolError, connection._move, kind)

    def test_we_may_give_up_anywhere(self) -> None:
        for state in State:
            self.assertIs(TRANSITIONS[state, Kind.CLOSE], State.CLOSED)

    def test_the_tunnels_bytes_are_not_for_the_negotiation(self) -> None:
        connection = started()
        feed(connection, b"\x05\x00")
        feed(connection, SUCCESS)
        self.assertRaises(LocalProtocolError, connection.receive_data, b"more")

    def test_start_twice_is_a_bug(self) -> None:
        self.assertRaises(LocalProtocolError, started().start)
