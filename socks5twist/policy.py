"""
Which clients may use the proxy, how their addresses are read, and which
destination addresses mean something else than they seem.

The safe default: a server without authentication serves loopback clients
only.  Unix-socket clients are local by construction: wherever client
networks are matched (the allow-list, the rules), a Unix-socket client is in
a network exactly when that network holds a loopback address (127.0.0.1 or
::1).  So narrowing C{--allow-client} to other networks refuses them too.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from .codec import Address, AddressType, ip_text, parse_ip
from .logsafe import escape

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


# A Unix-socket client stands for either loopback address.
_LOCAL_STAND_INS = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))

_THIS_HOST = ipaddress.IPv4Network("0.0.0.0/8")  # "this network": the kernel means itself
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def client_in(client: IPAddress | None, networks: Iterable[IPNetwork]) -> bool:
    """
    Whether a client is in one of C{networks}; C{None} is a Unix-socket
    client, which is in a network that holds a loopback address.
    """
    candidates = _LOCAL_STAND_INS if client is None else (client,)
    return any(in_networks(ip, networks) for ip in candidates)


def in_networks(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """Whether C{ip} is in one of C{networks} (of its own IP version)."""
    return any(ip.version == n.version and ip in n for n in networks)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """
    The IPv4 address an IPv6 address carries and may lead to: IPv4-mapped
    (C{::ffff:a.b.c.d}, unwrapped by L{parse_ip} already), IPv4-compatible
    (C{::a.b.c.d}, deprecated), NAT64 (C{64:ff9b::a.b.c.d}), 6to4
    (C{2002:AABB:CCDD::}) and Teredo (the client's address).
    """
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


@functools.lru_cache(maxsize=4096)
def spellings(ip: IPAddress) -> tuple[IPAddress, ...]:
    """
    C{ip}, and the IPv4 address it carries if any (see L{embedded_ipv4}).
    Cached: every request's destination is checked, and a proxy sees the
    same few addresses again and again.
    """
    inner = embedded_ipv4(ip)
    return (ip,) if inner is None else (ip, inner)


def is_unspecified_destination(ip: IPAddress) -> bool:
    """
    Whether connecting or sending to C{ip} reaches this host whatever it
    seems to name: C{0.0.0.0/8} and C{::} (the kernel connects the
    unspecified address to itself), in any IPv6 spelling.
    """
    return any(a.is_unspecified or (a.version == 4 and a in _THIS_HOST) for a in spellings(ip))


def is_group_destination(ip: IPAddress) -> bool:
    """Multicast or the limited broadcast, in any spelling: a LAN, not a host."""
    return any(a.is_multicast or a == _LIMITED_BROADCAST for a in spellings(ip))


def parse_network(text: str) -> IPNetwork:
    """
    Parse an allow-list entry: a CIDR network or a single address.

    Host bits must be zero (C{10.0.0.1/8} is refused): a typo in an
    allow-list should stop the server, not silently widen or narrow it.
    """
    return ipaddress.ip_network(text.strip(), strict=True)


def ip_of(address: IAddress) -> IPAddress | None:
    """The IP of a Twisted address (see L{parse_ip}); C{None} for Unix sockets."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return parse_ip(address.host)
    return None


def describe(address: IAddress) -> str:
    """A short text for logs: C{1.2.3.4:5}, C{[::1]:5} or C{unix:PATH}."""
    ip = ip_of(address)
    if ip is not None:
        port = getattr(address, "port", 0)
        text = ip_text(ip)
        return f"[{text}]:{port}" if ip.version == 6 else f"{text}:{port}"
    if isinstance(address, UNIXAddress):
        return f"unix:{escape(address.name) if address.name else '?'}"
    return escape(str(address))


def show(address: Address | None) -> str:
    """A SOCKS address for logs: C{host:port}, C{[v6]:port}, or C{-}."""
    if address is None:
        return "-"
    if address.type is AddressType.IPV6:
        return f"[{address.host}]:{address.port}"
    return f"{address.host}:{address.port}"


class ClientPolicy:
    """An allow-list of client networks."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks: Sequence[IPNetwork] = tuple(networks)

    def allows(self, address: IAddress, ip: IPAddress | None = None) -> bool:
        """Whether a client at C{address} (whose IP may be given) may use the proxy."""
        if ip is None:
            ip = ip_of(address)
        if ip is None:
            # Unix sockets are local; anything else without an IP is refused.
            return isinstance(address, UNIXAddress) and client_in(None, self.networks)
        return client_in(ip, self.networks)

    def __repr__(self) -> str:
        return f"ClientPolicy({', '.join(map(str, self.networks))})"


ALLOW_ANY = ClientPolicy((ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")))
LOOPBACK_ONLY = ClientPolicy(LOOPBACK_NETWORKS)
