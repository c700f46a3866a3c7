"""
The services that listen for C{twistd socks5}: one per C{--port}.

A bare port number (and the default, 1080) listens on IPv4 and IPv6 with
two sockets, C{tcp:N} and C{tcp6:N} on C{::} with C{IPV6_V6ONLY} set,
rather than one dual-stack C{::} socket.  Why two:

- One dual-stack socket depends on the machine: Linux's
  C{net.ipv6.bindv6only} (and the BSDs' default) turn it into IPv6 only, and
  Twisted's C{tcp6:} does not set the option either way.  Two sockets, the
  IPv6 one explicitly IPv6-only, serve both families everywhere.
- IPv4 clients arrive as IPv4 addresses, not as C{::ffff:a.b.c.d}: the
  allow-list, rules, limits, logs and the addresses in BIND and UDP
  ASSOCIATE replies see what the client sees.  (Mapped addresses are still
  unwrapped everywhere, by L{socks5twist.policy.ip_of}, for an explicit
  C{tcp6:} port that the kernel makes dual-stack.)
- A machine without IPv6 keeps its IPv4 listener, and the start-up lines say
  so, instead of failing the start.

Explicit descriptions are taken literally: C{tcp:N} is IPv4 only.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application import internet, service, strports
from twisted.internet import defer, error
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

from . import systemd
from .options import PROXY_PREFIX
from .proxylistener import ProxyHeaderFactory

__all__ = ["AdoptedPortService", "IPv6OnlyEndpoint", "listener", "proxy_listener"]


def proxy_listener(description: str, factory: Any) -> tuple[str, Any]:
    """
    The endpoint description and factory to listen with for C{description}:
    a C{haproxy:INNER} port listens on INNER with our own PROXY-protocol
    wrapper (L{ProxyHeaderFactory}, which believes trusted proxies only)
    instead of Twisted's, which believes anyone.
    """
    if description.startswith(PROXY_PREFIX):
        return description[len(PROXY_PREFIX) :], ProxyHeaderFactory(factory)
    return description, factory


@implementer(IStreamServerEndpoint)
class IPv6OnlyEndpoint:
    """
    A TCP listener on an IPv6 address with C{IPV6_V6ONLY} set, so that an
    IPv4 listener on the same port can stand beside it.  Twisted has no
    description for it: the socket is made here and handed to the reactor
    with C{adoptStreamPort} (public API), which makes a port like any other.
    """

    def __init__(self, reactor: Any, port: int, interface: str = "::", backlog: int = 50) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        return defer.execute(self._listen, factory)

    def _listen(self, factory: Any) -> IListeningPort:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as e:
            raise error.CannotListenError(self.interface, self.port, e) from e
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            port: IListeningPort = self.reactor.adoptStreamPort(
                sock.fileno(), socket.AF_INET6, factory
            )
            return port
        except OSError as e:
            raise error.CannotListenError(self.interface, self.port, e) from e
        finally:
            sock.close()  # the port holds its own duplicate


def listener(description: str, factory: Any, ipv6_only: bool = False) -> service.Service:
    """
    The service that listens on C{description} for C{factory}; with
    C{ipv6_only}, C{description} is C{tcp6:N:...} on C{::} made by a bare port.
    Its C{_description} is what the start-up line says it serves.
    """
    child: Any
    if ipv6_only:
        from twisted.internet import reactor

        port = int(description.split(":")[1])
        child = internet.StreamServerEndpointService(IPv6OnlyEndpoint(reactor, port), factory)
        child._description = f"{description} (IPv6 only)"
    else:
        child = strports.service(*proxy_listener(description, factory))
        systemd.adopt_real_family(child.endpoint, description)
        child._description = description
        if description.startswith("tcp:") and "interface=" not in description:
            child._description = f"{description} (IPv4)"
    return child  # type: ignore[no-any-return]


class AdoptedPortService(service.Service):
    """Serves a listening socket inherited from the process that started this one."""

    def __init__(self, fd: int, description: str, factory: Any) -> None:
        self.fd = fd
        self.description = description
        self.factory = factory
        self.port: Any = None

    def privilegedStartService(self) -> None:
        from twisted.internet import reactor

        _, factory = proxy_listener(self.description, self.factory)
        probe = socket.socket(fileno=os.dup(self.fd))
        family = probe.family
        probe.close()
        self.port = reactor.adoptStreamPort(self.fd, family, factory)  # type: ignore[attr-defined]
        os.close(self.fd)  # the port holds its own duplicate
        super().privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None
