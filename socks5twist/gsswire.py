"""
RFC 1961's messages (GSSAPI for SOCKS5), sans I/O: bytes in, typed values out.

Every GSSAPI message after the method selection has one shape::

    +------+------+------+.......................+
    + ver  | mtyp | len  |       token           |
    +------+------+------+.......................+
    + 0x01 | 0x01 |  2   | up to 2^16 - 1 octets |

C{mtyp} 1 carries context-establishment tokens (section 3), 2 the
protection level (section 4), 3 a protected message (section 5: the request,
the reply, every chunk of the tunnel and every UDP datagram once the level is
integrity or confidentiality).  A failure is C{ver=1, mtyp=0xFF} alone,
followed by a close.  Nothing here touches GSSAPI itself
(L{socks5twist.gss} does): this module only frames and checks, so the server
connection and the client's negotiation can parse tokens without the
C{gssapi} package, and a hostile peer's bytes are bounded before anything
cryptographic sees them.
"""

from __future__ import annotations

import enum
import struct

from .codec import MalformedMessage

__all__ = [
    "ABORT",
    "MAX_TOKEN",
    "Aborted",
    "Deframer",
    "Mtyp",
    "Protection",
    "build",
    "parse",
]

VERSION = 0x01
MAX_TOKEN = 0xFFFF  # LEN is two octets
_HEADER = struct.Struct("!BBH")


class Mtyp(enum.IntEnum):
    """The message types of RFC 1961."""

    AUTHENTICATION = 0x01  # a context-establishment token
    PROTECTION = 0x02  # the protection level, asked and answered
    MESSAGE = 0x03  # a protected (wrapped) message
    ABORT = 0xFF  # the context failed; a close follows


class Protection(enum.IntEnum):
    """
    Protection levels, as they travel (section 4, and Dante's C{clear}).

    RFC 1961 names 1 (integrity), 2 (confidentiality) and 3 (selective,
    "per-message": each side decides per message); Dante adds 0, clear: the
    context authenticates, nothing after it is wrapped.
    """

    CLEAR = 0x00
    INTEGRITY = 0x01
    CONFIDENTIALITY = 0x02
    SELECTIVE = 0x03

    @property
    def wraps(self) -> bool:
        """Whether messages after the level's negotiation are wrapped."""
        return self is not Protection.CLEAR


# The names operators and logs use for the levels a server may choose.
PROTECTION_NAMES = {
    "clear": Protection.CLEAR,
    "integrity": Protection.INTEGRITY,
    "confidentiality": Protection.CONFIDENTIALITY,
}
LEVEL_NAMES = {level: name for name, level in PROTECTION_NAMES.items()}
LEVEL_NAMES[Protection.SELECTIVE] = "selective"

# A failure: sent instead of a token, then the connection closes.
ABORT = bytes((VERSION, Mtyp.ABORT))


class Aborted(MalformedMessage):
    """
    The peer sent an abort (C{ver=1, mtyp=0xFF}): it gave up, and closes
    (nothing is answered to it).
    """

    def __init__(self) -> None:
        super().__init__("the peer aborted the GSSAPI negotiation")


def build(mtyp: Mtyp, token: bytes) -> bytes:
    """One message; a token that does not fit two octets of length is a bug."""
    if len(token) > MAX_TOKEN:
        raise ValueError(f"a GSSAPI token of {len(token)} bytes (at most {MAX_TOKEN})")
    return _HEADER.pack(VERSION, mtyp, len(token)) + token


def parse(data: bytes | bytearray | memoryview, expected: Mtyp) -> tuple[bytes, int] | None:
    """
    The token of the message of type C{expected} at the start of C{data} and
    the bytes it took, or C{None} while it is incomplete.

    @raise MalformedMessage: not version 1, or another type; L{Aborted} (a
        subclass) for an abort: the peer gave up.
    """
    if len(data) < 2:
        return None
    version, mtyp = data[0], data[1]
    if version != VERSION:
        raise MalformedMessage(f"GSSAPI message version {version} (expected 1)")
    if mtyp == Mtyp.ABORT:
        raise Aborted()
    if mtyp != expected:
        raise MalformedMessage(f"GSSAPI message type {mtyp} (expected {int(expected)})")
    if len(data) < 4:
        return None
    (length,) = struct.unpack_from("!H", data, 2)
    end = 4 + length
    if len(data) < end:
        return None
    return bytes(data[4:end]), end


class Deframer:
    """
    Cuts a stream of C{mtyp=3} messages into tokens, across reads.

    Holds at most one incomplete message (4 + 65535 bytes): the bound of
    what a peer can make it keep.  After a malformed header it keeps
    nothing and refuses everything (the stream cannot be resynchronised).
    """

    __slots__ = ("_broken", "_buffer")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken = False

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """
        The tokens that C{data} completes, in order.

        @raise MalformedMessage: a header that is not version 1, type 3
            (L{Aborted} for an abort).
        """
        if self._broken:
            raise MalformedMessage("GSSAPI stream already broken")
        buffer = self._buffer
        buffer += data
        tokens = []
        start = 0
        try:
            while True:
                parsed = parse(memoryview(buffer)[start:], Mtyp.MESSAGE)
                if parsed is None:
                    break
                token, used = parsed
                tokens.append(token)
                start += used
        except MalformedMessage:
            self._broken = True
            self._buffer = bytearray()
            raise
        del buffer[:start]
        return tokens
