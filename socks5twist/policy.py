"""
Which clients may use the proxy (the allow-list, L{ClientPolicy}), and how
a client's Twisted address is read (L{ip_of}) and shown in logs
(L{describe}, and L{show} for a SOCKS address).

The safe default: a server without authentication serves loopback clients
only.  Unix-socket clients are local by construction: wherever client
networks are matched (the allow-list, the rules), a Unix-socket client is in
a network exactly when that network holds a loopback address (127.0.0.1 or
::1; see L{socks5twist.networks.client_in}).  So narrowing C{--allow-client}
to other networks refuses them too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from .addresses import Address, AddressType, IPAddress, ip_text, parse_ip
from .logsafe import escape
from .networks import LOOPBACK_NETWORKS, IPNetwork, client_in

__all__ = ["ALLOW_ANY", "LOOPBACK_ONLY", "ClientPolicy", "describe", "ip_of", "show"]


def ip_of(address: IAddress) -> IPAddress | None:
    """
    The IP of a Twisted address, unwrapped (L{socks5twist.addresses.parse_ip});
    C{None} for Unix sockets.
    """
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
