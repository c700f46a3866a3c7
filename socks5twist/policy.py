"""
Which clients may use the proxy, and how their addresses are read.

The safe default: a server without authentication serves loopback clients
only.  Unix-socket clients are local by construction and count as loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from .codec import ip_text, parse_ip

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


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
        raw = address.name
        name = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
        return f"unix:{name or '?'}"
    return str(address)


class ClientPolicy:
    """An allow-list of client networks."""

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks: Sequence[IPNetwork] = tuple(networks)

    def allows(self, address: IAddress, ip: IPAddress | None = None) -> bool:
        """Whether a client at C{address} (whose IP may be given) may use the proxy."""
        if ip is None:
            ip = ip_of(address)
        if ip is None:
            # Unix sockets (and anything without an IP) are local.
            return isinstance(address, UNIXAddress)
        return any(ip in network for network in self.networks)

    def __repr__(self) -> str:
        return f"ClientPolicy({', '.join(map(str, self.networks))})"


ALLOW_ANY = ClientPolicy((ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")))
LOOPBACK_ONLY = ClientPolicy(LOOPBACK_NETWORKS)
