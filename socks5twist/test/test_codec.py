"""
Tests for the sans-I/O wire format: round trips, splits at every byte, and
arbitrary bytes never raising anything but L{MalformedMessage}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import codec
from socks5twist.codec import Address, AddressType, Command, MalformedMessage, Reply

ipv4 = st.builds(
    lambda n, p: Address(AddressType.IPV4, str(ipaddress.IPv4Address(n)), p),
    st.integers(0, 2**32 - 1),
    st.integers(0, 65535),
)
ipv6 = st.builds(
    lambda n, p: Address(AddressType.IPV6, ipaddress.IPv6Address(n).compressed, p),
    st.integers(0, 2**128 - 1),
    st.integers(0, 65535),
)
# Host names in canonical form (what the parser gives back): labels of
# lower-case letters, digits, "-" and "_", the last starting with a letter g-z
label = st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True)
last_label = st.from_regex(r"[g-z][a-z0-9_-]{0,10}", fullmatch=True)  # never hex: 0x...
domain = st.builds(
    lambda labels, last, p: Address(AddressType.DOMAIN, ".".join([*labels, last]), p),
    st.lists(label, max_size=8),
    last_label,
    st.integers(0, 65535),
)
addresses = st.one_of(ipv4, ipv6, domain)
fields = st.binary(max_size=255)

PARSERS: list[Callable[[bytes], Any]] = [
    codec.parse_greeting,
    codec.parse_method_selection,
    codec.parse_auth_request,
    codec.parse_auth_response,
    codec.parse_request,
    codec.parse_reply,
]


def assert_splits_parse_the_same(test: SynchronousTestCase, parse: Any, wire: bytes) -> Any:
    """Every strict prefix needs more bytes; the whole parses; extra bytes are left."""
    for cut in range(len(wire)):
        test.assertIsNone(parse(wire[:cut]), f"prefix of {cut} bytes")
    whole = parse(wire)
    test.assertEqual(parse(wire + b"\x05trailing"), whole)
    return whole


class RoundTripTests(SynchronousTestCase):
    @given(st.lists(st.integers(0, 255), max_size=255))
    def test_greeting(self, methods: list[int]) -> None:
        wire = codec.build_greeting(methods)
        parsed = assert_splits_parse_the_same(self, codec.parse_greeting, wire)
        self.assertEqual(parsed, (codec.Greeting(tuple(methods)), len(wire)))

    @given(st.integers(0, 255))
    def test_method_selection(self, method: int) -> None:
        wire = codec.build_method_selection(method)
        self.assertEqual(codec.parse_method_selection(wire), (codec.MethodSelection(method), 2))

    @given(fields, fields)
    def test_auth_request(self, username: bytes, password: bytes) -> None:
        wire = codec.build_auth_request(username, password)
        parsed = assert_splits_parse_the_same(self, codec.parse_auth_request, wire)
        self.assertEqual(parsed, (codec.AuthRequest(username, password), len(wire)))

    @given(st.integers(0, 255))
    def test_auth_response(self, status: int) -> None:
        wire = codec.build_auth_response(status)
        self.assertEqual(codec.parse_auth_response(wire), (codec.AuthResponse(status), 2))

    @given(st.sampled_from(Command), addresses)
    def test_request(self, command: Command, address: Address) -> None:
        wire = codec.build_request(command, address)
        parsed = assert_splits_parse_the_same(self, codec.parse_request, wire)
        self.assertEqual(parsed, (codec.Request(command, address), len(wire)))

    @given(st.integers(0, 255), addresses)
    def test_reply(self, reply: int, address: Address) -> None:
        wire = codec.build_reply(reply, address)
        parsed = assert_splits_parse_the_same(self, codec.parse_reply, wire)
        self.assertEqual(parsed, (codec.ReplyMessage(reply, address), len(wire)))

    @given(st.integers(0, 255), addresses, st.binary(max_size=600))
    def test_udp_datagram(self, frag: int, address: Address, data: bytes) -> None:
        wire = codec.build_udp_datagram(address, data, frag)
        self.assertEqual(codec.parse_udp_datagram(wire), codec.UDPDatagram(frag, address, data))


class ArbitraryBytesTests(SynchronousTestCase):
    @settings(max_examples=500)
    @given(st.binary(max_size=600))
    def test_parsers_raise_only_their_own_error(self, data: bytes) -> None:
        for parse in [*PARSERS, codec.parse_udp_datagram]:
            try:
                result = parse(data)
            except MalformedMessage as e:
                self.assertIsInstance(e.why, str)
                continue
            if parse is not codec.parse_udp_datagram and result is not None:
                _message, consumed = result
                self.assertTrue(0 < consumed <= len(data))

    # The three tests below start from a legal prefix (the right version
    # byte, a known command and address type, a length byte), so most
    # examples get past the first checks and reach the assertion; the
    # events say how many were parsed and how many were malformed.

    @given(
        st.sampled_from(Command),
        st.sampled_from(AddressType),
        st.binary(min_size=codec.MAX_REQUEST, max_size=codec.MAX_REQUEST + 10),
    )
    def test_request_decides_within_the_largest_message(
        self, command: Command, atyp: AddressType, rest: bytes
    ) -> None:
        """A request parser never asks for more once it has the largest legal request."""
        if atyp is AddressType.DOMAIN and rest[0] % 2:
            # Half the names valid ones (a-z labels of the length the
            # first byte gives), half arbitrary bytes (mostly malformed).
            length = max(rest[1], 3)
            name = (b"ab." * 90)[: length - 2] + b"cd"
            rest = bytes([len(name)]) + name + rest[len(name) + 1 :]
        data = bytes([codec.SOCKS_VERSION, command, 0, atyp]) + rest
        self.assertGreaterEqual(len(data), codec.MAX_REQUEST)
        try:
            parsed = codec.parse_request(data)
        except MalformedMessage:
            event("malformed")
            return
        event(f"parsed {atyp.name}")
        self.assertIsNotNone(parsed)

    @given(st.binary(min_size=codec.MAX_AUTH_REQUEST, max_size=codec.MAX_AUTH_REQUEST + 10))
    def test_auth_decides_within_the_largest_message(self, rest: bytes) -> None:
        data = bytes([codec.AUTH_VERSION]) + rest
        parsed = codec.parse_auth_request(data)
        event("parsed")
        self.assertIsNotNone(parsed)

    @given(st.binary(min_size=codec.MAX_GREETING, max_size=codec.MAX_GREETING + 10))
    def test_greeting_decides_within_the_largest_message(self, rest: bytes) -> None:
        data = bytes([codec.SOCKS_VERSION]) + rest
        parsed = codec.parse_greeting(data)
        event("parsed")
        self.assertIsNotNone(parsed)


class MalformedTests(SynchronousTestCase):
    def assertMalformed(self, parse: Any, data: bytes, reply: Reply | None) -> None:
        with self.assertRaises(MalformedMessage) as caught:
            parse(data)
        self.assertEqual(caught.exception.reply, reply)

    def test_unsupported_command_is_x07(self) -> None:
        self.assertMalformed(codec.parse_request, b"\x05\x04\x00\x01", Reply.COMMAND_NOT_SUPPORTED)
        self.assertMalformed(codec.parse_request, b"\x05\x00", Reply.COMMAND_NOT_SUPPORTED)

    def test_unsupported_address_type_is_x08(self) -> None:
        self.assertMalformed(
            codec.parse_request, b"\x05\x01\x00\x02", Reply.ADDRESS_TYPE_NOT_SUPPORTED
        )
        self.assertMalformed(
            codec.parse_request, b"\x05\x01\x00\xff", Reply.ADDRESS_TYPE_NOT_SUPPORTED
        )

    def test_request_with_wrong_version_is_general_failure(self) -> None:
        self.assertMalformed(codec.parse_request, b"\x04\x01", Reply.GENERAL_FAILURE)

    def test_empty_domain_name_is_general_failure(self) -> None:
        self.assertMalformed(
            codec.parse_request, b"\x05\x01\x00\x03\x00\x00\x50", Reply.GENERAL_FAILURE
        )

    def test_greeting_of_another_version_has_no_reply(self) -> None:
        """A SOCKS4 client, or an HTTP request, is closed without a SOCKS5 reply."""
        self.assertMalformed(codec.parse_greeting, b"\x04\x01\x00\x50", None)
        self.assertMalformed(codec.parse_greeting, b"GET / HTTP/1.1\r\n", None)

    def test_auth_of_another_version_has_no_reply(self) -> None:
        self.assertMalformed(codec.parse_auth_request, b"\x05\x01a\x01b", None)

    def test_truncated_udp_header(self) -> None:
        for data in (b"", b"\x00\x00\x00", b"\x00\x00\x00\x01\x7f\x00", b"\x00\x00\x00\x03\x05ab"):
            self.assertMalformed(codec.parse_udp_datagram, data, None)

    def test_reserved_byte_is_ignored(self) -> None:
        """RSV carries no meaning; clients that set it are still served."""
        parsed = codec.parse_request(b"\x05\x01\xff\x01\x7f\x00\x00\x01\x00\x50")
        self.assertEqual(
            parsed,
            (codec.Request(Command.CONNECT, Address(AddressType.IPV4, "127.0.0.1", 80)), 10),
        )


class WireBytesTests(SynchronousTestCase):
    """Exact bytes, written out from RFC 1928, so that the codec agrees with the RFC and not
    only with itself."""

    def test_failure_reply_is_ten_bytes_with_atyp_1(self) -> None:
        self.assertEqual(
            codec.build_reply(Reply.HOST_UNREACHABLE), b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00"
        )

    def test_ipv6_reply_is_22_bytes(self) -> None:
        wire = codec.build_reply(Reply.SUCCEEDED, Address.for_ip("::1", 443))
        self.assertEqual(wire, b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01\x01\xbb")

    def test_mapped_ipv4_is_atyp_1(self) -> None:
        self.assertEqual(
            Address.for_ip("::ffff:10.1.2.3", 1), Address(AddressType.IPV4, "10.1.2.3", 1)
        )

    def test_domain_request(self) -> None:
        self.assertEqual(
            codec.build_request(Command.CONNECT, Address(AddressType.DOMAIN, "example.com", 80)),
            b"\x05\x01\x00\x03\x0bexample.com\x00\x50",
        )

    def test_auth_request_repr_hides_the_password(self) -> None:
        self.assertNotIn("hunter2", repr(codec.AuthRequest(b"alice", b"hunter2")))

    def test_largest_messages(self) -> None:
        self.assertEqual(len(codec.build_greeting(list(range(255)))), codec.MAX_GREETING)
        self.assertEqual(
            len(codec.build_auth_request(b"u" * 255, b"p" * 255)), codec.MAX_AUTH_REQUEST
        )
        self.assertEqual(
            len(codec.build_request(1, Address(AddressType.DOMAIN, "n" * 255, 1))),
            codec.MAX_REQUEST,
        )
