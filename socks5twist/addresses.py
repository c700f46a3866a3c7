"""
Addresses as values, sans I/O: the SOCKS address (ATYP, DST.ADDR, DST.PORT)
and the IP addresses it holds.

A SOCKS address is an IPv4 or IPv6 address or a domain name, with a port.
An IP is always unwrapped the same way (an IPv4-mapped IPv6 address is its
IPv4 address, a scope ID is dropped: L{parse_ip}), so that the rules, the
allow-list and the session line meet one spelling of each address.  How an
address is read from and packed onto the wire is here too (L{Address.pack}
and the codec's parsers use it); how a Twisted address is read is
L{socks5twist.policy}'s.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "UNSPECIFIED",
    "Address",
    "AddressType",
    "IPAddress",
    "ip_text",
    "literal_ip",
    "parse_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressType(IntEnum):
    """Address types (RFC 1928 section 5)."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


@dataclass(frozen=True, slots=True)
class Address:
    """
    A SOCKS address: an IPv4 or IPv6 address, or a domain name, and a port.

    C{host} is the textual form: a compressed IP address, or a domain name.
    An address parsed from the wire holds a domain name only in the
    canonical form of L{socks5twist.names.canonical} (lower-case ASCII, a
    checked host name); a name that spells an IP address is parsed as that
    address (ATYP 1 or 4), so a DOMAIN address never hides a literal.
    """

    type: AddressType
    host: str
    port: int

    @classmethod
    def for_ip(cls, host: str, port: int) -> Address:
        """The ATYP 1 or 4 address for an IP literal (mapped IPv4 unwrapped)."""
        kind, text = ip_form(host)
        return cls(kind, text, port)

    def pack(self) -> bytes:
        """ATYP, DST.ADDR and DST.PORT as they go on the wire."""
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port out of range: {self.port}")
        if self.type is AddressType.IPV4:
            raw = _packed(self.host, 4)
        elif self.type is AddressType.IPV6:
            raw = _packed(self.host, 6)
        else:
            name = self.host.encode("utf-8", "surrogateescape")
            if not 1 <= len(name) <= 255:
                raise ValueError("domain name must be 1 to 255 bytes")
            raw = bytes([len(name)]) + name
        return bytes([self.type]) + raw + struct.pack("!H", self.port)


UNSPECIFIED = Address(AddressType.IPV4, "0.0.0.0", 0)


def literal_ip(address: Address) -> IPAddress | None:
    """
    The IP address a SOCKS address names without DNS, if any.

    A name that spells an address (clients, curl among them, send IP
    literals as ATYP 3 names) was parsed as that address by the codec, so a
    DOMAIN address is always a name to look up.
    """
    if address.type is AddressType.DOMAIN:
        return None
    return parse_ip(address.host)


@functools.lru_cache(maxsize=4096)
def parse_ip(host: str) -> IPAddress:
    """
    An IP address from text, with an IPv4-mapped IPv6 address unwrapped and
    any scope ID dropped; raises C{ValueError}.  Cached: a proxy sees the same
    few addresses again and again, and parsing is not cheap.
    """
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@functools.lru_cache(maxsize=4096)
def ip_text(ip: IPAddress) -> str:
    """C{str(ip)}, cached: formatting an address is slower than a lookup."""
    return str(ip)


@functools.lru_cache(maxsize=4096)
def ip_form(host: str) -> tuple[AddressType, str]:
    """The address type and compressed text of the IP literal C{host}."""
    ip = parse_ip(host)
    return (AddressType.IPV4 if ip.version == 4 else AddressType.IPV6), ip.compressed


@functools.lru_cache(maxsize=4096)
def _packed(host: str, version: int) -> bytes:
    if version == 4:
        return ipaddress.IPv4Address(host).packed
    return ipaddress.IPv6Address(host).packed
