"""
IP networks and what an address means, sans I/O: whether a client is in a
network (a Unix-socket client counts as loopback), and which destination
addresses mean more than they seem (the unspecified address, multicast and
broadcast, IPv4 addresses carried inside IPv6 ones).

The rules (L{socks5twist.ruleset}) and the allow-list
(L{socks5twist.policy.ClientPolicy}) both decide by these functions, so a
Unix-socket client or an embedded IPv4 address means the same to each.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from .addresses import IPAddress

__all__ = [
    "LOOPBACK_NETWORKS",
    "IPNetwork",
    "client_in",
    "embedded_ipv4",
    "in_networks",
    "is_group_destination",
    "is_unspecified_destination",
    "parse_network",
    "spellings",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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
    (C{::ffff:a.b.c.d}, unwrapped by L{socks5twist.addresses.parse_ip} already), IPv4-compatible
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
    return destination_classes(ip)[0]


def is_group_destination(ip: IPAddress) -> bool:
    """Multicast or the limited broadcast, in any spelling: a LAN, not a host."""
    return destination_classes(ip)[1]


# (version, address as an int) -> destination_classes' answer.  Keyed by
# integers: hashing an ipaddress object costs more than the rest of a hit.
_CLASSES: dict[tuple[int, int], tuple[bool, bool]] = {}
_MAX_CLASSES = 4096


def destination_classes(ip: IPAddress) -> tuple[bool, bool]:
    """
    (L{is_unspecified_destination}, L{is_group_destination}) at once: every
    request's destination is checked, and C{ipaddress}'s properties build
    networks each time (about 4 microseconds for the two); the answers of
    the last few thousand addresses are kept.
    """
    key = (ip.version, int(ip))
    classes = _CLASSES.get(key)
    if classes is None:
        forms = spellings(ip)
        unspecified = any(a.is_unspecified or (a.version == 4 and a in _THIS_HOST) for a in forms)
        group = any(a.is_multicast or a == _LIMITED_BROADCAST for a in forms)
        if len(_CLASSES) >= _MAX_CLASSES:
            _CLASSES.clear()
        classes = _CLASSES[key] = (unspecified, group)
    return classes


def parse_network(text: str) -> IPNetwork:
    """
    Parse an allow-list entry: a CIDR network or a single address.

    Host bits must be zero (C{10.0.0.1/8} is refused): a typo in an
    allow-list should stop the server, not silently widen or narrow it.
    """
    return ipaddress.ip_network(text.strip(), strict=True)
