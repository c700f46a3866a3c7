"""
The keytab parser: keytabs MIT's ktutil wrote read as klist reads them;
holes are skipped; truncated and hostile bytes are a L{KeytabError} (never
another exception, never a read past what a length may claim).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socks5twist import keytab
from socks5twist.keytab import Entry, KeytabError, Principal

# Written by MIT ktutil 1.20 (Debian 12):
#   addent -password -p rcmd/localhost@SOCKS.TEST -k 1 -e aes256-cts-hmac-sha1-96
#   addent -password -p host/a.b@OTHER.REALM -k 3 -e aes128-cts-hmac-sha1-96
KTUTIL_KEYTAB = bytes.fromhex(
    "0502000000500002000a534f434b532e54455354000472636d6400096c6f63616c686f7374000000016b0f"
    "76bd010012002087b7e879f3709222940be6f744f3418ebd33eb3674d5453d4eafbcba87786c0600000001"
    "0000003b0002000b4f544845522e5245414c4d0004686f73740003612e62000000016b0f76bd0300110010"
    "9df99e9bd666b396d073fa91314c1fb400000003"
)
RCMD = Principal(("rcmd", "localhost"), "SOCKS.TEST")
HOST = Principal(("host", "a.b"), "OTHER.REALM")
# Where the first record ends (its size field, then 0x50 bytes).
FIRST_END = 2 + 4 + 0x50


def record(body: bytes, order: str = "!") -> bytes:
    return struct.pack(order + "i", len(body)) + body


def counted(text: bytes, order: str = "!") -> bytes:
    return struct.pack(order + "H", len(text)) + text


def entry_v2(components: list[bytes], realm: bytes, kvno: int = 1, tail: bytes = b"") -> bytes:
    body = struct.pack("!H", len(components)) + counted(realm)
    body += b"".join(counted(c) for c in components)
    body += struct.pack("!IIBH", 1, 0, kvno & 0xFF, 18) + counted(b"k" * 32) + tail
    return record(body)


class KtutilKeytabTests(SynchronousTestCase):
    def test_a_keytab_ktutil_wrote(self) -> None:
        self.assertEqual(
            keytab.parse(KTUTIL_KEYTAB),
            [Entry(RCMD, 1, 18), Entry(HOST, 3, 17)],
        )
        self.assertEqual(str(RCMD), "rcmd/localhost@SOCKS.TEST")

    def test_what_ktutil_writes_now_reads_as_klist_lists_it(self) -> None:
        """Several components, a principal without an instance, a kvno above 255."""
        ktutil, klist = tools("ktutil", "klist")
        path = Path(self.mktemp())
        commands = []
        for principal, kvno, enctype in [
            ("rcmd/proxy.socks.test@SOCKS.TEST", 300, "aes256-cts-hmac-sha1-96"),
            ("alice@SOCKS.TEST", 2, "aes128-cts-hmac-sha1-96"),
            ("a/b/c@R", 7, "aes256-cts-hmac-sha384-192"),
            ("rcmd/proxy.socks.test@SOCKS.TEST", 301, "aes128-cts-hmac-sha1-96"),
        ]:
            commands += [f"addent -password -p {principal} -k {kvno} -e {enctype}", "secret"]
        commands += [f"wkt {path}", "quit"]
        subprocess.run(
            [ktutil], input="\n".join(commands) + "\n", text=True, capture_output=True, timeout=30
        )
        listed = subprocess.run(
            [klist, "-k", str(path)], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        expected = re.findall(r"^\s*(\d+) (\S+)$", listed, re.MULTILINE)
        self.assertEqual(len(expected), 4, listed)
        entries = keytab.parse(path.read_bytes())
        self.assertEqual([(str(e.kvno), str(e.principal)) for e in entries], expected)
        self.assertEqual(
            [str(p) for p in keytab.principals(entries)],
            ["rcmd/proxy.socks.test@SOCKS.TEST", "alice@SOCKS.TEST", "a/b/c@R"],
        )


def tools(*names: str) -> list[str]:
    """The programs' paths; a missing one fails in CI, skips elsewhere."""
    paths = [shutil.which(name) for name in names]
    missing = [name for name, path in zip(names, paths, strict=True) if path is None]
    if missing:
        message = f"{', '.join(missing)} not installed (Debian: krb5-user; see .ci/run)"
        if os.environ.get("CI"):
            raise AssertionError(f"{message}; tests may not be skipped in CI")
        raise SkipTest(message)
    return [path for path in paths if path is not None]


class FormatTests(SynchronousTestCase):
    def test_holes_are_skipped(self) -> None:
        """kadmin's ktremove leaves a negative size and the old bytes: skipped."""
        hole = struct.pack("!i", -0x50) + KTUTIL_KEYTAB[6:FIRST_END]
        data = KTUTIL_KEYTAB[:2] + hole + KTUTIL_KEYTAB[FIRST_END:]
        self.assertEqual(keytab.parse(data), [Entry(HOST, 3, 17)])

    def test_a_zero_size_or_a_partial_size_ends_the_entries(self) -> None:
        rest = KTUTIL_KEYTAB[FIRST_END:]
        self.assertEqual(
            keytab.parse(KTUTIL_KEYTAB[:FIRST_END] + b"\0\0\0\0" + rest), [Entry(RCMD, 1, 18)]
        )
        self.assertEqual(keytab.parse(KTUTIL_KEYTAB[:FIRST_END] + b"\0\0"), [Entry(RCMD, 1, 18)])
        self.assertEqual(keytab.parse(b"\x05\x02"), [])

    def test_a_hole_past_the_end_ends_the_entries(self) -> None:
        data = KTUTIL_KEYTAB[:FIRST_END] + struct.pack("!i", -1000) + b"old"
        self.assertEqual(keytab.parse(data), [Entry(RCMD, 1, 18)])

    def test_version_1_in_the_hosts_byte_order_counts_the_realm(self) -> None:
        body = struct.pack("=H", 3) + counted(b"R", "=") + counted(b"rcmd", "=")
        body += counted(b"h", "=") + struct.pack("=IBH", 0, 5, 17) + counted(b"k" * 16, "=")
        self.assertEqual(
            keytab.parse(b"\x05\x01" + record(body, "=")),
            [Entry(Principal(("rcmd", "h"), "R"), 5, 17)],
        )

    def test_the_32_bit_kvno_wins_unless_it_is_zero(self) -> None:
        for tail, kvno in [
            (struct.pack("!I", 300), 300),
            (struct.pack("!I", 0), 44),
            (b"\0\0\x01", 44),
            (b"", 44),
        ]:
            data = b"\x05\x02" + entry_v2([b"rcmd", b"h"], b"R", 300, tail)
            self.assertEqual(keytab.parse(data)[0].kvno, kvno, tail)

    def test_separators_in_names_are_shown_escaped_and_bytes_kept(self) -> None:
        data = b"\x05\x02" + entry_v2([b"a/b", b"c@d", b"\xff"], b"R")
        [entry] = keytab.parse(data)
        self.assertEqual(str(entry.principal), "a\\/b/c\\@d/\udcff@R")
        self.assertEqual(entry.principal.components[2].encode("utf-8", "surrogateescape"), b"\xff")


class MalformedTests(SynchronousTestCase):
    def assertMalformed(self, data: bytes, *fragments: str) -> None:
        with self.assertRaises(KeytabError) as caught:
            keytab.parse(data)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))

    def test_not_a_keytab(self) -> None:
        self.assertMalformed(b"", "empty")
        self.assertMalformed(b"\x05", "too short")
        self.assertMalformed(b"root:x:0:0", "starts with 726f")
        self.assertMalformed(b"\x05\x03" + KTUTIL_KEYTAB[2:], "0501 or 0502")

    def test_every_truncation_is_refused_or_a_shorter_list(self) -> None:
        """Cut anywhere: MIT reads the whole records before the cut, or says it is broken."""
        for cut in range(2, len(KTUTIL_KEYTAB)):
            data = KTUTIL_KEYTAB[:cut]
            try:
                entries = keytab.parse(data)
            except KeytabError as e:
                self.assertRegex(str(e), r"^at byte \d+: ", cut)
                continue
            self.assertIn(cut, (2, 3, 4, 5, FIRST_END, FIRST_END + 1, FIRST_END + 2, FIRST_END + 3))
            self.assertEqual(entries, [Entry(RCMD, 1, 18)][: len(entries)])

    def test_a_record_longer_than_the_file_is_truncated(self) -> None:
        data = KTUTIL_KEYTAB[:2] + struct.pack("!i", 0x7FFFFFFF) + KTUTIL_KEYTAB[6:]
        self.assertMalformed(data, "at byte 2", "a record of 2147483647 bytes", "truncated")

    def test_lengths_inside_a_record_never_reach_past_it(self) -> None:
        """A realm's length that would reach into the next record is refused."""
        body = struct.pack("!H", 1) + struct.pack("!H", 0xFFFF) + b"R"
        data = b"\x05\x02" + record(body) + KTUTIL_KEYTAB[6:]
        self.assertMalformed(data, "the realm needs 65535 bytes, the entry has 1 left")

    def test_a_component_count_the_record_cannot_hold(self) -> None:
        body = struct.pack("!H", 0xFFFF) + counted(b"R") + b"\0" * 20
        self.assertMalformed(b"\x05\x02" + record(body), "65535 components cannot fit")

    def test_a_principal_without_a_name(self) -> None:
        self.assertMalformed(b"\x05\x02" + entry_v2([], b"R"), "a realm and no name")
        body = struct.pack("=H", 0) + b"\0" * 20
        self.assertMalformed(b"\x05\x01" + record(body, "="), "no realm")

    def test_the_most_negative_size(self) -> None:
        self.assertMalformed(b"\x05\x02" + struct.pack("!i", -(2**31)), "-2**31")

    def test_a_file_beyond_the_bound_is_refused_whole(self) -> None:
        data = KTUTIL_KEYTAB + b"\0" * keytab.MAX_KEYTAB
        self.assertMalformed(data, "more than a keytab holds")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.sampled_from([b"\x05\x02", b"\x05\x01", b""]))
    def test_hostile_bytes_are_entries_or_a_keytab_error(self, tail: bytes, head: bytes) -> None:
        try:
            entries = keytab.parse(head + tail)
        except KeytabError:
            return
        for entry in entries:
            self.assertIsInstance(entry.principal.realm, str)
            self.assertTrue(entry.principal.components)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=2, max_value=len(KTUTIL_KEYTAB) - 1), st.integers(0, 255))
    def test_one_changed_byte_is_entries_or_a_keytab_error(self, at: int, value: int) -> None:
        data = bytearray(KTUTIL_KEYTAB)
        data[at] = value
        try:
            keytab.parse(bytes(data))
        except KeytabError:
            pass
