"""
The SOCKS5 wire format (RFC 1928 and RFC 1929), sans I/O.

Everything that turns bytes into messages or messages into bytes lives here, and
nothing here touches a socket, a reactor or Twisted: the session protocol feeds
bytes in and gets typed messages out, so the format can be tested exhaustively
on its own.  The SOCKS address inside requests, replies and datagrams (and
the one spelling of an IP address) is L{socks5twist.addresses}'s.

The rules this module keeps:

- A ``parse_*`` function takes the bytes received so far and returns either
  ``None`` ("need more bytes": nothing is wrong yet) or ``(message, consumed)``,
  where ``consumed`` is how many bytes of the input the message took.  Bytes
  after ``consumed`` belong to whatever comes next (clients pipeline).
- Input that can never become a valid message raises L{MalformedMessage},
  whose C{reply} names the reply code RFC 1928 gives that case, or C{None}
  where the RFC has no reply for it and the connection is simply closed.
  No other exception escapes a parser, whatever the bytes.
- ``build_*`` functions are pure and return bytes.
- A parser never needs more than the largest legal message to decide, so a
  caller that buffers only until a parser answers buffers at most
  L{MAX_GREETING}, L{MAX_AUTH_REQUEST} or L{MAX_REQUEST} bytes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

from .addresses import UNSPECIFIED, Address, AddressType, ip_form, ip_text, parse_ip
from .names import InvalidName, canonical, is_address

# The wire format's names, and the SOCKS address's (L{socks5twist.addresses}
# holds it; importable from here, where it lived first).
__all__ = [
    "AUTH_VERSION",
    "MAX_AUTH_REQUEST",
    "MAX_GREETING",
    "MAX_REQUEST",
    "SOCKS_VERSION",
    "UNSPECIFIED",
    "Address",
    "AddressType",
    "AuthRequest",
    "AuthResponse",
    "AuthStatus",
    "Command",
    "Greeting",
    "MalformedMessage",
    "Method",
    "MethodSelection",
    "Reply",
    "ReplyMessage",
    "Request",
    "UDPDatagram",
    "build_auth_request",
    "build_auth_response",
    "build_greeting",
    "build_method_selection",
    "build_reply",
    "build_request",
    "build_udp_datagram",
    "ip_text",
    "parse_auth_request",
    "parse_auth_response",
    "parse_greeting",
    "parse_ip",
    "parse_method_selection",
    "parse_reply",
    "parse_request",
    "parse_udp_datagram",
]

SOCKS_VERSION = 5
AUTH_VERSION = 1

# Largest legal messages: VER NMETHODS METHODS[255]; VER ULEN UNAME[255] PLEN
# PASSWD[255]; VER CMD RSV ATYP LEN NAME[255] PORT[2].
MAX_GREETING = 2 + 255
MAX_AUTH_REQUEST = 3 + 255 + 255
MAX_REQUEST = 4 + 1 + 255 + 2


class Method(IntEnum):
    """Authentication methods (RFC 1928 section 3)."""

    NO_AUTHENTICATION = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(IntEnum):
    """Request commands (RFC 1928 section 4)."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class Reply(IntEnum):
    """Reply codes (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class AuthStatus(IntEnum):
    """RFC 1929 status: zero is success, anything else is failure."""

    SUCCESS = 0x00
    FAILURE = 0x01


class MalformedMessage(Exception):
    """
    The bytes can never become a legal message.

    @ivar reply: the reply code RFC 1928 gives this case, or C{None} when the
        RFC defines no reply and the connection should just be closed.
    """

    def __init__(self, why: str, reply: Reply | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.reply = reply


def _parse_address(data: bytes, offset: int) -> tuple[Address, int] | None:
    """Parse ATYP ADDR PORT at C{offset}; return the address and the end offset."""
    if len(data) <= offset:
        return None
    atyp = data[offset]
    start = offset + 1
    if atyp == AddressType.IPV4:
        end = start + 4
        if len(data) < end + 2:
            return None
        host = socket.inet_ntoa(data[start:end])  # as str(IPv4Address), in C
        kind = AddressType.IPV4
    elif atyp == AddressType.IPV6:
        end = start + 16
        if len(data) < end + 2:
            return None
        host = ipaddress.IPv6Address(data[start:end]).compressed
        kind = AddressType.IPV6
    elif atyp == AddressType.DOMAIN:
        if len(data) <= start:
            return None
        length = data[start]
        if length == 0:
            raise MalformedMessage("empty domain name", Reply.GENERAL_FAILURE)
        start += 1
        end = start + length
        if len(data) < end + 2:
            return None
        try:
            host = canonical(bytes(data[start:end]))
        except InvalidName as e:
            # RFC 1928 has no code for a malformed name; no host can be
            # reached by it.
            raise MalformedMessage(e.why, Reply.HOST_UNREACHABLE) from None
        if is_address(host):
            kind, host = ip_form(host)
        else:
            kind = AddressType.DOMAIN
    else:
        raise MalformedMessage(
            f"unsupported address type {atyp:#04x}", Reply.ADDRESS_TYPE_NOT_SUPPORTED
        )
    (port,) = struct.unpack_from("!H", data, end)
    return Address(kind, host, port), end + 2


@dataclass(frozen=True, slots=True)
class Greeting:
    """The client's version identifier/method selection message."""

    methods: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MethodSelection:
    """The server's METHOD selection message."""

    method: int


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """RFC 1929 username/password request; both fields are raw bytes."""

    username: bytes
    password: bytes

    def __repr__(self) -> str:
        # Never let a password reach a log line through a repr.
        return f"AuthRequest(username={self.username!r}, password=<{len(self.password)} bytes>)"


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """RFC 1929 status message."""

    status: int


@dataclass(frozen=True, slots=True)
class Request:
    """A SOCKS request: a command and its destination."""

    command: Command
    address: Address


@dataclass(frozen=True, slots=True)
class ReplyMessage:
    """A SOCKS reply: a code and the bound address."""

    reply: int
    address: Address


@dataclass(frozen=True, slots=True)
class UDPDatagram:
    """A UDP datagram with its RFC 1928 section 7 header."""

    frag: int
    address: Address
    data: bytes


def parse_greeting(data: bytes) -> tuple[Greeting, int] | None:
    """Parse VER NMETHODS METHODS."""
    if not data:
        return None
    if data[0] != SOCKS_VERSION:
        raise MalformedMessage(f"not SOCKS5 (version byte {data[0]:#04x})")
    if len(data) < 2:
        return None
    end = 2 + data[1]
    if len(data) < end:
        return None
    return Greeting(tuple(data[2:end])), end


def _version_and_byte(data: bytes, version: int, what: str) -> int | None:
    """The second byte of a two-byte message after checking its version byte."""
    if not data:
        return None
    if data[0] != version:
        raise MalformedMessage(f"bad {what} version {data[0]:#04x}")
    if len(data) < 2:
        return None
    return data[1]


def parse_method_selection(data: bytes) -> tuple[MethodSelection, int] | None:
    """Parse the server's VER METHOD (for clients and tests)."""
    method = _version_and_byte(data, SOCKS_VERSION, "method selection")
    return None if method is None else (MethodSelection(method), 2)


def parse_auth_request(data: bytes) -> tuple[AuthRequest, int] | None:
    """Parse RFC 1929 VER ULEN UNAME PLEN PASSWD; empty fields are legal."""
    if not data:
        return None
    if data[0] != AUTH_VERSION:
        raise MalformedMessage(f"bad username/password version {data[0]:#04x}")
    if len(data) < 2:
        return None
    ulen = data[1]
    plen_at = 2 + ulen
    if len(data) <= plen_at:
        return None
    end = plen_at + 1 + data[plen_at]
    if len(data) < end:
        return None
    return AuthRequest(data[2:plen_at], data[plen_at + 1 : end]), end


def parse_auth_response(data: bytes) -> tuple[AuthResponse, int] | None:
    """Parse RFC 1929 VER STATUS (for clients and tests)."""
    status = _version_and_byte(data, AUTH_VERSION, "username/password status")
    return None if status is None else (AuthResponse(status), 2)


def parse_request(data: bytes) -> tuple[Request, int] | None:
    """Parse VER CMD RSV ATYP DST.ADDR DST.PORT."""
    if not data:
        return None
    if data[0] != SOCKS_VERSION:
        raise MalformedMessage(f"bad request version {data[0]:#04x}", Reply.GENERAL_FAILURE)
    if len(data) < 2:
        return None
    try:
        command = Command(data[1])
    except ValueError:
        raise MalformedMessage(
            f"unsupported command {data[1]:#04x}", Reply.COMMAND_NOT_SUPPORTED
        ) from None
    # RSV is "X'00'", but clients in the wild are not all careful; the byte
    # carries no meaning, so it is ignored rather than refused.
    parsed = _parse_address(data, 3)
    if parsed is None:
        return None
    address, end = parsed
    return Request(command, address), end


def parse_reply(data: bytes) -> tuple[ReplyMessage, int] | None:
    """Parse VER REP RSV ATYP BND.ADDR BND.PORT (for clients and tests)."""
    if not data:
        return None
    if data[0] != SOCKS_VERSION:
        raise MalformedMessage(f"bad reply version {data[0]:#04x}")
    parsed = _parse_address(data, 3)
    if parsed is None:
        return None
    address, end = parsed
    return ReplyMessage(data[1], address), end


def parse_udp_datagram(data: bytes) -> UDPDatagram:
    """
    Parse a whole UDP datagram: RSV FRAG ATYP DST.ADDR DST.PORT DATA.

    A datagram arrives whole, so a short one is malformed, not incomplete.
    """
    if len(data) < 4:
        raise MalformedMessage("truncated UDP header")
    parsed = _parse_address(data, 3)
    if parsed is None:
        raise MalformedMessage("truncated UDP header")
    address, end = parsed
    return UDPDatagram(data[2], address, data[end:])


def build_greeting(methods: bytes | tuple[int, ...] | list[int]) -> bytes:
    """VER NMETHODS METHODS."""
    methods = bytes(methods)
    if len(methods) > 255:
        raise ValueError("at most 255 methods")
    return bytes([SOCKS_VERSION, len(methods)]) + methods


def build_method_selection(method: int) -> bytes:
    """VER METHOD."""
    return bytes([SOCKS_VERSION, method])


def build_auth_request(username: bytes, password: bytes) -> bytes:
    """RFC 1929 VER ULEN UNAME PLEN PASSWD."""
    if len(username) > 255 or len(password) > 255:
        raise ValueError("username and password are at most 255 bytes")
    return bytes([AUTH_VERSION, len(username)]) + username + bytes([len(password)]) + password


def build_auth_response(status: int) -> bytes:
    """RFC 1929 VER STATUS."""
    return bytes([AUTH_VERSION, status])


def build_request(command: int, address: Address) -> bytes:
    """VER CMD RSV ATYP DST.ADDR DST.PORT."""
    return bytes([SOCKS_VERSION, command, 0]) + address.pack()


def build_reply(reply: int, address: Address = UNSPECIFIED) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT."""
    return bytes([SOCKS_VERSION, reply, 0]) + address.pack()


def build_udp_datagram(address: Address, data: bytes, frag: int = 0) -> bytes:
    """RSV FRAG ATYP DST.ADDR DST.PORT DATA."""
    return bytes([0, 0, frag]) + address.pack() + data
