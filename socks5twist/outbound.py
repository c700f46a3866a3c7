"""
Reaching destinations: choosing the endpoint for CONNECT, resolving names
(for BIND's expected peer), and turning a failure into the reply code RFC
1928 gives it.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .codec import Address, AddressType, Reply


def literal_ip(address: Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    The IP address a SOCKS address names without DNS, if any.

    Clients (curl among them) send IP literals as ATYP 3 names; those are
    connected to as addresses, never looked up.
    """
    host = address.host
    if address.type is AddressType.DOMAIN and host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def endpoint_for(reactor: Any, address: Address, timeout: float) -> IStreamClientEndpoint:
    """
    The client endpoint that reaches C{address}: plain TCP for an IP (given as
    such or as a literal name), L{HostnameEndpoint} for a name, so that names
    are resolved here, by the proxy, and connected with happy eyeballs.
    """
    ip = literal_ip(address)
    if ip is None:
        name = address.host.encode("utf-8", "surrogateescape")
        return HostnameEndpoint(reactor, name, address.port, timeout=timeout)
    if ip.version == 4:
        return TCP4ClientEndpoint(reactor, str(ip), address.port, timeout=timeout)
    return TCP6ClientEndpoint(reactor, str(ip), address.port, timeout=timeout)


def connect(
    reactor: IReactorTCP,
    address: Address,
    factory: IProtocolFactory,
    timeout: float,
) -> defer.Deferred[IProtocol]:
    """
    Connect to C{address}; the whole attempt, name resolution included, is
    bounded by C{timeout} seconds.  The result can be cancelled.
    """
    try:
        endpoint = endpoint_for(reactor, address, timeout)
        d: defer.Deferred[IProtocol] = endpoint.connect(factory)
    except Exception:
        return defer.fail()
    if timeout > 0:
        clock: IReactorTime = reactor  # type: ignore[assignment]
        d.addTimeout(timeout, clock, onTimeoutCancel=_timed_out)
    return d


def _timed_out(result: object, timeout: float) -> object:
    # Endpoints fail a cancelled attempt with ConnectingCancelledError, which
    # Deferred.addTimeout would pass on as it is; say what happened instead.
    if isinstance(result, Failure):
        raise error.TimeoutError(f"no connection within {timeout:g} seconds")
    return result


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the IP addresses a name resolves to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        self.done: defer.Deferred[list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = (
            defer.Deferred()
        )

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if host is not None:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
            if ip not in self.addresses:
                self.addresses.append(ip)

    def resolutionComplete(self) -> None:
        if self.addresses:
            self.done.callback(self.addresses)
        else:
            self.done.errback(error.DNSLookupError(self.name))


def resolve(
    reactor: Any, name: str, timeout: float
) -> defer.Deferred[list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """
    Every address C{name} resolves to (IPv4 and IPv6), through the reactor's
    name resolver: the lookup runs off the reactor thread and blocks nothing.
    """
    receiver = _Addresses(name)
    try:
        reactor.nameResolver.resolveHostName(receiver, name, 0)
    except Exception:
        return defer.fail()
    if timeout > 0:
        receiver.done.addTimeout(timeout, reactor, onTimeoutCancel=_timed_out)
    return receiver.done


def reply_for_failure(failure: Failure) -> Reply:
    """
    The RFC 1928 reply for a failed connection attempt.

    A timeout is reported as X'04' (host unreachable): the host did not answer,
    which is what clients show their users for it; X'06' (TTL expired) means
    something else on the wire.
    """
    exc = failure.value
    # Order matters: most of these are ConnectError subclasses.
    if isinstance(exc, error.DNSLookupError):
        return Reply.HOST_UNREACHABLE
    if isinstance(exc, error.ConnectionRefusedError):
        return Reply.CONNECTION_REFUSED
    if isinstance(exc, error.NoRouteError):
        return Reply.NETWORK_UNREACHABLE
    if isinstance(exc, (error.TCPTimedOutError, error.TimeoutError, defer.TimeoutError)):
        return Reply.HOST_UNREACHABLE
    if isinstance(exc, error.ConnectError):
        os_error = getattr(exc, "osError", None)
        if os_error == errno.ENETUNREACH:
            return Reply.NETWORK_UNREACHABLE
        if os_error == errno.EHOSTUNREACH:
            return Reply.HOST_UNREACHABLE
        if os_error == errno.ECONNREFUSED:
            return Reply.CONNECTION_REFUSED
    if isinstance(exc, (UnicodeError, ValueError)):
        # A name that cannot even be encoded for DNS cannot resolve.
        return Reply.HOST_UNREACHABLE
    return Reply.GENERAL_FAILURE
