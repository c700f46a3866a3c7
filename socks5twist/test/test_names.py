"""
Tests for destination names: the one validation and canonical form, in the
codec (where the server first sees a name) and for rule patterns.
"""

from __future__ import annotations

import struct

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import codec
from socks5twist.codec import AddressType, MalformedMessage, Reply
from socks5twist.names import InvalidName, canonical, canonical_pattern


def request_for(raw: bytes, port: int = 80) -> bytes:
    return b"\x05\x01\x00\x03" + bytes([len(raw)]) + raw + struct.pack("!H", port)


def parsed(raw: bytes) -> codec.Address:
    result = codec.parse_request(request_for(raw))
    assert result is not None
    return result[0].address


class CanonicalFormTests(SynchronousTestCase):
    def test_spellings_of_one_host_are_one_name(self) -> None:
        """Every spelling the resolver would read as evil.test is evil.test."""
        spellings = [
            "evil.test",
            "EVIL.TEST",
            "evil.test.",
            "ｅｖｉｌ.test",  # fullwidth letters
            "evil。test",  # U+3002 ideographic full stop
            "evil．test",  # U+FF0E
            "evil｡test",  # U+FF61
            "ev\u200bil.test",  # zero-width space
            "ev\u00adil.test",  # soft hyphen
            "\ufeffevil.test",  # byte order mark
            "ℯvil.test",  # U+212F script e
            "evil.teſt",  # long s
        ]
        for text in spellings:
            self.assertEqual(canonical(text.encode("utf-8")), "evil.test", text)

    def test_unicode_and_punycode_are_one_name(self) -> None:
        self.assertEqual(canonical("bücher.test".encode()), "xn--bcher-kva.test")
        self.assertEqual(canonical(b"XN--BCHER-KVA.test"), "xn--bcher-kva.test")

    def test_underscores_are_kept(self) -> None:
        self.assertEqual(canonical(b"_acme-challenge.Example.org"), "_acme-challenge.example.org")

    def test_ip_spellings_are_addresses(self) -> None:
        for raw, ip in [
            (b"127.0.0.1", "127.0.0.1"),
            (b"127.1", "127.0.0.1"),
            (b"0x7f.1", "127.0.0.1"),
            (b"0177.0.0.1", "127.0.0.1"),
            (b"2130706433", "127.0.0.1"),
            (b"0", "0.0.0.0"),
            (b"::", "::"),
            (b"[::]", "::"),
            (b"[::1]", "::1"),
            (b"::ffff:127.0.0.1", "127.0.0.1"),
            ("１２７．０．０．１".encode(), "127.0.0.1"),
        ]:
            self.assertEqual(canonical(raw), ip, raw)

    def test_invalid_names(self) -> None:
        for raw in [
            b"localhost\x00.allowed.test",
            b"localhost\x00evil",
            b"127.0.0.1\x00",
            b"x\n2026-12-01T20:00:00+0000 session 10.6.6.6:1 user=root",
            b"a\rb",
            b"\x1b]0;title\x07",
            b"bad\xff.test",
            "x\u0085y".encode(),
            "x\u2028y".encode(),
            b"a" * 64 + b".test",
            b"a." * 127 + b"ab",  # 255 bytes
            b"a..b",
            b".",
            b"1.2.3.4.5",
            b"foo bar.test",
            b"fe80::1%eth0",
            b"[127.0.0.1]",
            b"xn--zz.test",
            b"host:80",
            "ev\u200dil.test".encode(),  # a joiner where IDNA 2008 forbids it
        ]:
            with self.assertRaises(InvalidName, msg=repr(raw)) as caught:
                canonical(raw)
            why = caught.exception.why
            self.assertTrue(why.isascii() and why.isprintable(), why)

    def test_a_name_of_253_bytes_is_valid_and_254_not(self) -> None:
        name = ".".join(["a" * 63] * 3 + ["b" * 61])
        self.assertEqual(len(name), 253)
        self.assertEqual(canonical(name.encode()), name)
        with self.assertRaises(InvalidName):
            canonical((name + "b").encode())

    def test_patterns_are_normalised_like_names(self) -> None:
        self.assertEqual(canonical_pattern("*.Bücher.test"), "*.xn--bcher-kva.test")
        self.assertEqual(canonical_pattern("ＥＶＩＬ.test."), "evil.test")
        with self.assertRaises(InvalidName):
            canonical_pattern("127.0.0.1")
        with self.assertRaises(InvalidName):
            canonical_pattern("bad name")


class CodecNameTests(SynchronousTestCase):
    def test_invalid_name_is_x04_at_once(self) -> None:
        with self.assertRaises(MalformedMessage) as caught:
            codec.parse_request(request_for(b"localhost\x00.allowed.test"))
        self.assertEqual(caught.exception.reply, Reply.HOST_UNREACHABLE)
        self.assertIn("localhost\\x00.allowed.test", caught.exception.why)

    def test_a_name_that_spells_an_address_is_that_address(self) -> None:
        self.assertEqual(parsed(b"0"), codec.Address(AddressType.IPV4, "0.0.0.0", 80))
        self.assertEqual(parsed(b"[::1]"), codec.Address(AddressType.IPV6, "::1", 80))

    def test_udp_datagram_names_are_checked_too(self) -> None:
        with self.assertRaises(MalformedMessage):
            codec.parse_udp_datagram(b"\x00\x00\x00\x03\x04a\x00bc\x00\x35data")
        datagram = codec.parse_udp_datagram(b"\x00\x00\x00\x03\x04A.Bc\x00\x35data")
        self.assertEqual(datagram.address.host, "a.bc")


def _assert_canonical(test: SynchronousTestCase, address: codec.Address) -> None:
    host = address.host
    test.assertTrue(host.isascii() and host.isprintable(), host)
    if address.type is AddressType.DOMAIN:
        test.assertEqual(host, host.lower())
        test.assertLessEqual(len(host), 253)
        test.assertTrue(all(1 <= len(label) <= 63 for label in host.split(".")))
        # Canonical means a fixed point.
        test.assertEqual(canonical(host.encode()), host)


class NamePropertyTests(SynchronousTestCase):
    @settings(max_examples=400)
    @given(st.binary(min_size=1, max_size=255))
    def test_arbitrary_bytes_are_a_canonical_name_or_x04(self, raw: bytes) -> None:
        try:
            address = parsed(raw)
        except MalformedMessage as e:
            event("invalid")
            self.assertEqual(e.reply, Reply.HOST_UNREACHABLE)
            self.assertTrue(e.why.isascii() and e.why.isprintable())
            return
        event(f"valid {address.type.name}")
        _assert_canonical(self, address)

    @settings(max_examples=400)
    @given(
        st.lists(
            st.one_of(
                # Mostly Latin letters (many valid U-labels), sometimes any
                # character at all.
                st.text(
                    st.one_of(
                        st.characters(min_codepoint=0x61, max_codepoint=0x7A),
                        st.characters(
                            min_codepoint=0xC0, max_codepoint=0x17F, categories=["Ll", "Lu"]
                        ),
                    ),
                    min_size=1,
                    max_size=12,
                ),
                st.text(
                    st.characters(codec="utf-8", exclude_characters="."), min_size=1, max_size=12
                ),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def test_unicode_names_are_canonical_or_invalid(self, labels: list[str]) -> None:
        raw = ".".join(labels).encode("utf-8", "surrogatepass")[:255]
        try:
            address = parsed(raw)
        except MalformedMessage:
            event("invalid")
            return
        event("valid")
        _assert_canonical(self, address)

    @settings(max_examples=300)
    @given(st.from_regex(r"[A-Za-z0-9_-]{1,20}(\.[A-Za-z0-9_-]{1,20}){0,4}\.?", fullmatch=True))
    def test_ascii_host_names_are_lower_cased(self, text: str) -> None:
        raw = text.encode()
        try:
            name = canonical(raw)
        except InvalidName:
            # Only a numeric last label that is no address is refused here.
            event("numeric last label")
            self.assertTrue(text.rstrip(".").rpartition(".")[2].isdigit() or "0x" in text.lower())
            return
        event("valid")
        self.assertEqual(name.rstrip("."), name)
        if not name[-1].isdigit():
            self.assertEqual(name, text.lower().rstrip("."))
