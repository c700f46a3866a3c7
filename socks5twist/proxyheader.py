"""
The PROXY protocol header (HAProxy's, versions 1 and 2) as bytes in, a typed
header out: no socket, no Twisted.

A load balancer sends this header first on each connection it passes on, to
name the client it accepted.  Everything a header says is checked here before
anyone uses it: addresses are IP addresses of the family the header states
(no names, no scope IDs, no leading zeros), ports are 0-65535, and the buffer
is bounded by the protocol's own maxima (107 bytes for a version 1 line,
16 + 65535 for version 2).  L{parse} says "need more bytes" (C{None}) apart
from "malformed" (L{MalformedHeader}, never an C{IndexError} or a
C{ValueError} of someone else's).

A header that names no client (version 1 C{UNKNOWN}, version 2 C{LOCAL}, or
version 2 C{PROXY} with the C{UNSPEC} family) comes from the balancer's own
connections, such as health checks: its L{ProxyHeader.source} is C{None}, and
the connection's client is the balancer itself, as the specification asks.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

__all__ = ["V1_MAX", "V2_MAX", "V2_SIGNATURE", "MalformedHeader", "ProxyHeader", "parse"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest version 1 line, CRLF included (the specification's figure)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family, length
V2_MAX = V2_FIXED + 0xFFFF
MAX_HEADER = V2_MAX  # the most any header may take: what a buffer is bounded by

_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_UNSPEC, _V2_INET, _V2_INET6 = 0x0, 0x1, 0x2
_V2_STREAM = 0x1


class MalformedHeader(Exception):
    """
    The bytes are not a PROXY header we accept.  C{why} says what is wrong;
    C{offending} is the part of the input to show in a log line (through
    L{socks5twist.logsafe.escape}).
    """

    def __init__(self, why: str, offending: bytes) -> None:
        super().__init__(why)
        self.why = why
        self.offending = offending


@dataclass(frozen=True)
class ProxyHeader:
    """
    A parsed header.  C{source} and C{destination} are C{(ip, port)}, or
    C{None} when the header names no client (the balancer's own connection);
    C{length} is how many bytes of the input the header took.
    """

    version: int
    source: tuple[IPAddress, int] | None
    destination: tuple[IPAddress, int] | None
    length: int


def parse(data: bytes) -> ProxyHeader | None:
    """
    The header at the start of C{data}, or C{None} when C{data} is a
    beginning of one that needs more bytes; raises L{MalformedHeader}.
    """
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data) if len(data) >= V2_FIXED else None
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    raise MalformedHeader("not a PROXY protocol header", data[:V1_MAX])


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise MalformedHeader(f"version 1 line longer than {V1_MAX} bytes", data[:V1_MAX])
        return None
    line = data[:end]
    fields = line.split(b" ")
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        # The specification: the rest of the line is to be ignored.
        return ProxyHeader(1, None, None, end + 2)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise MalformedHeader("version 1 line is not PROXY TCP4|TCP6 SRC DST SPORT DPORT", line)
    version = 4 if fields[1] == b"TCP4" else 6
    source = _v1_endpoint(fields[2], fields[4], version, line)
    destination = _v1_endpoint(fields[3], fields[5], version, line)
    return ProxyHeader(1, source, destination, end + 2)


def _v1_endpoint(host: bytes, port: bytes, version: int, line: bytes) -> tuple[IPAddress, int]:
    ip: IPAddress
    try:
        text = host.decode("ascii")
        ip = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise MalformedHeader(f"an address that is not IPv{version}", line) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise MalformedHeader("an IPv6 address with a scope ID", line)
    if _PORT.fullmatch(port) is None or int(port) > 0xFFFF:
        raise MalformedHeader("a port that is not 0-65535", line)
    return ip, int(port)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    fixed = data[:V2_FIXED]
    version_command, family_transport, length = struct.unpack("!BBH", fixed[12:])
    if version_command >> 4 != 2:
        raise MalformedHeader(f"version 2 signature with version {version_command >> 4}", fixed)
    command = version_command & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise MalformedHeader(f"unknown version 2 command {command}", fixed)
    total = V2_FIXED + length
    if len(data) < total:
        return None
    if command == _V2_LOCAL:
        return ProxyHeader(2, None, None, total)
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family == _V2_UNSPEC:
        return ProxyHeader(2, None, None, total)
    if family not in (_V2_INET, _V2_INET6) or transport != _V2_STREAM:
        raise MalformedHeader(
            f"version 2 family/transport {family_transport:#04x} is not TCP over IPv4 or IPv6",
            fixed,
        )
    size = 4 if family == _V2_INET else 16
    needed = 2 * size + 4
    if length < needed:
        got = f"{length} byte" if length == 1 else f"{length} bytes"
        raise MalformedHeader(f"version 2 address block of {got}, {needed} needed", data[:total])
    block = data[V2_FIXED : V2_FIXED + needed]
    make = ipaddress.IPv4Address if family == _V2_INET else ipaddress.IPv6Address
    source_ip, destination_ip = make(block[:size]), make(block[size : 2 * size])
    source_port, destination_port = struct.unpack("!HH", block[2 * size :])
    # Anything after the addresses is TLVs (ALPN, TLS details...): not used.
    return ProxyHeader(2, (source_ip, source_port), (destination_ip, destination_port), total)
