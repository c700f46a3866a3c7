"""
MIT Kerberos keytab files, parsed sans I/O: which principals a keytab holds.

Used at start-up only (L{socks5twist.startchecks}), so that C{--gssapi}
with a keytab that has no key for the service stops the start with a line
that says which principals it does hold, rather than every client failing
later with the library's "no key table entry found".  The keys themselves
are never looked at: python-gssapi reads the keytab for the real work.

The format (MIT's C{kt_file.c}, and Heimdal's, which is the same)::

    0x05 VERSION              VERSION 0x02: big-endian; 0x01: the host's order
    then records, each:
    int32 SIZE                negative: a hole of -SIZE bytes (a deleted entry);
                              0 or the end of the file: no more records
    SIZE bytes:
      uint16 COUNT            components (version 1: components + 1)
      uint16 LEN, REALM
      COUNT x (uint16 LEN, COMPONENT)
      uint32 NAME_TYPE        (not in version 1)
      uint32 TIMESTAMP
      uint8  KVNO
      uint16 ENCTYPE, uint16 LEN, KEY
      [uint32 KVNO]           when 4 more bytes remain: the whole key version
      [uint32 FLAGS]

No length is trusted: each is checked against the record it is in and the
record against the file, and the file's size is bounded (L{MAX_KEYTAB}).
Anything malformed is L{KeytabError}, whose message says where and what.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAX_KEYTAB", "Entry", "KeytabError", "Principal", "parse", "principals"]

# Far beyond any real keytab (a few hundred bytes per key): a bound on what a
# start-up check reads (it reads at most one byte more), not a limit anyone
# should meet.
MAX_KEYTAB = 4 * 1024 * 1024
_MAGIC = 0x05
_VERSIONS = (0x01, 0x02)


class KeytabError(Exception):
    """Not a keytab MIT Kerberos could read; C{str()} says where and why."""


@dataclass(frozen=True, slots=True)
class Principal:
    """
    A principal as a keytab stores it: components and a realm, each as
    decoded with C{surrogateescape} (no byte is lost; escape them to log).
    """

    components: tuple[str, ...]
    realm: str

    def __str__(self) -> str:
        """MIT's display form: C{rcmd/proxy.example.org@EXAMPLE.ORG}."""
        return "/".join(_quote(c) for c in self.components) + "@" + _quote(self.realm)


@dataclass(frozen=True, slots=True)
class Entry:
    """One key of a keytab: whose, which version, which encryption type."""

    principal: Principal
    kvno: int
    enctype: int


def _quote(part: str) -> str:
    """A component as MIT displays it: its separators escaped."""
    for char in ("\\", "/", "@"):
        part = part.replace(char, "\\" + char)
    return part


class _Reader:
    """Reads fields of one record; every read is checked against its end."""

    __slots__ = ("_data", "_end", "_order", "offset")

    def __init__(self, data: bytes, offset: int, end: int, order: str) -> None:
        self._data = data
        self.offset = offset
        self._end = end
        self._order = order

    @property
    def left(self) -> int:
        return self._end - self.offset

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise KeytabError(
                f"at byte {self.offset}: the {what} needs {n} bytes, the entry has {self.left} left"
            )
        start = self.offset
        self.offset += n
        return self._data[start : self.offset]

    def number(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        (value,) = struct.unpack(self._order + fmt, self.take(size, what))
        return int(value)

    def text(self, what: str) -> str:
        length = self.number("H", f"length of the {what}")
        return self.take(length, what).decode("utf-8", "surrogateescape")


def parse(data: bytes) -> list[Entry]:
    """
    The entries of a keytab's bytes, in the file's order (holes skipped).

    @raise KeytabError: not a keytab, an unknown version, or a record that
        does not fit (truncated, or lengths that point outside it).
    """
    if len(data) > MAX_KEYTAB:
        raise KeytabError(f"{len(data)} bytes: more than a keytab holds ({MAX_KEYTAB} at most)")
    if len(data) < 2:
        raise KeytabError("empty" if not data else "1 byte: too short for a keytab")
    if data[0] != _MAGIC or data[1] not in _VERSIONS:
        raise KeytabError(f"it starts with {data[:2].hex()}, a keytab with 0501 or 0502")
    version = data[1]
    # Version 1 was written in the host's byte order (and so only ever read
    # back on the machine that wrote it).
    order = "!" if version == 0x02 else "="
    size_of = struct.Struct(order + "i")
    entries = []
    offset = 2
    while offset + 4 <= len(data):
        (size,) = size_of.unpack_from(data, offset)
        offset += 4
        if size == 0:
            break
        if size < 0:
            if size == -(2**31):
                raise KeytabError(f"at byte {offset - 4}: a record size of -2**31")
            if -size > len(data) - offset:
                # A hole that runs past the end: MIT stops reading there.
                break
            offset += -size
            continue
        if size > len(data) - offset:
            raise KeytabError(
                f"at byte {offset - 4}: a record of {size} bytes, {len(data) - offset} left"
                " (truncated)"
            )
        entries.append(_entry(_Reader(data, offset, offset + size, order), version))
        offset += size
    return entries


def _entry(reader: _Reader, version: int) -> Entry:
    count = reader.number("H", "component count")
    if version == 0x01:
        if count == 0:
            raise KeytabError(f"at byte {reader.offset - 2}: a principal with no realm")
        count -= 1  # version 1 counted the realm too
    # Each component takes at least its two bytes of length: a count the
    # record cannot hold is refused before anything is built for it.
    if 2 * count > reader.left:
        raise KeytabError(
            f"at byte {reader.offset - 2}: {count} components cannot fit"
            f" in the {reader.left} bytes left of the entry"
        )
    realm = reader.text("realm")
    components = tuple(reader.text("component") for _ in range(count))
    if version != 0x01:
        reader.number("I", "name type")
    reader.number("I", "timestamp")
    kvno = reader.number("B", "key version")
    enctype = reader.number("H", "encryption type")
    key_length = reader.number("H", "key length")
    reader.take(key_length, "key")
    if reader.left >= 4:
        # The full 32-bit key version; 0 means "use the 8-bit one".
        kvno = reader.number("I", "key version") or kvno
    if not components:
        raise KeytabError("an entry's principal has a realm and no name")
    return Entry(Principal(components, realm), kvno, enctype)


def principals(entries: Iterable[Entry]) -> list[Principal]:
    """The distinct principals of C{entries}, in the order they first appear."""
    return list(dict.fromkeys(entry.principal for entry in entries))
