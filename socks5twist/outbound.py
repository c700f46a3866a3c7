"""
Reaching destinations: resolving names (L{resolve}), connecting a Twisted
transport to exactly the addresses that were resolved and checked
(L{connect}), and turning a failure into the reply code RFC 1928 gives it
(L{reply_for_failure}).  A tunnel that will splice connects a bare socket
instead (L{socks5twist.socketconnect}).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address as TwistedIPv4Address
from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .addresses import IPAddress, literal_ip, parse_ip
from .codec import Reply
from .logs import seconds
from .socketconnect import connect_socket
from .twistedinternals import HostResolution

# (connect_socket and literal_ip live in socketconnect and addresses; they
# stay importable from here, where they lived first.)
__all__ = ["connect", "connect_socket", "literal_ip", "reply_for_failure", "resolve"]


class _OneConnection(ClientFactory):
    """
    Connects one protocol and fires C{deferred} with it once connected.  The
    protocol (a L{socks5twist.relay.RemoteProtocol}) reports its connection
    through its C{on_connected} hook.
    """

    noisy = False

    def __init__(self, factory: IProtocolFactory) -> None:
        self.factory: IProtocolFactory | None = factory
        self.connector: Any = None
        self.deferred: defer.Deferred[IProtocol] | None = defer.Deferred(self._cancel)

    def startedConnecting(self, connector: Any) -> None:
        self.connector = connector

    def buildProtocol(self, addr: IAddress | None) -> Any:
        assert self.factory is not None
        protocol = self.factory.buildProtocol(addr)  # type: ignore[arg-type]
        protocol.on_connected = self._connected  # type: ignore[union-attr]
        return protocol

    def _connected(self, protocol: Any) -> None:
        protocol.on_connected = None
        # The connector keeps this factory for the connection's lifetime:
        # keep nothing else alive with it.
        deferred, self.deferred = self.deferred, None
        self.factory = self.connector = None
        if deferred is not None and not deferred.called:
            deferred.callback(protocol)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self.deferred is not None and not self.deferred.called:
            self.deferred.errback(reason)

    def _cancel(self, deferred: defer.Deferred[IProtocol]) -> None:
        if self.connector is not None:
            self.connector.stopConnecting()


@implementer(IHostnameResolver)
class _CheckedAddresses:
    """
    A name resolver that knows only the addresses already resolved and
    checked: L{HostnameEndpoint} connects (with happy eyeballs) to exactly
    those, and no second lookup can answer differently.
    """

    def __init__(self, addresses: Sequence[IPAddress]) -> None:
        self._addresses = list(addresses)

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = HostResolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        for ip in self._addresses:
            kind = TwistedIPv4Address if ip.version == 4 else TwistedIPv6Address
            if addressTypes is None or kind in addressTypes:
                resolutionReceiver.addressResolved(kind("TCP", str(ip), portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class _ReactorWithResolver:
    """The reactor, with a different name resolver."""

    def __init__(self, reactor: Any, resolver: IHostnameResolver) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def connect(
    reactor: Any,
    addresses: Sequence[IPAddress],
    port: int,
    factory: IProtocolFactory,
    timeout: float,
    name: str = "",
    bind: Mapping[int, str] | None = None,
    fast: bool = True,
) -> defer.Deferred[IProtocol]:
    """
    Connect to C{port} on one of C{addresses}, already resolved and checked.

    One address is connected to by the reactor directly (C{fast}: the
    factory's protocol must be a L{socks5twist.relay.RemoteProtocol}, whose
    C{on_connected} hook says when; without C{fast}, any protocol, through
    an endpoint); several get L{HostnameEndpoint}'s happy eyeballs over
    exactly those.  C{bind} gives the local address to
    bind outbound sockets to, per IP version; families whose bind differs are
    tried one after the other.  The whole attempt is bounded by C{timeout}
    seconds, and the result can be cancelled.
    """
    bind = bind or {}
    families: dict[str | None, list[IPAddress]] = {}
    for ip in addresses:
        families.setdefault(bind.get(ip.version), []).append(ip)
    attempts = list(families.items())

    def attempt(index: int) -> defer.Deferred[IProtocol]:
        local, group = attempts[index]
        binding = (local, 0) if local is not None else None
        endpoint: IStreamClientEndpoint
        if len(group) == 1 and fast:
            # One address: the reactor directly, without an endpoint's
            # wrappers, which cost more than the rest of a short session.
            one = _OneConnection(factory)
            connecting = one.deferred
            assert connecting is not None
            reactor.connectTCP(str(group[0]), port, one, timeout=timeout or 30, bindAddress=binding)
            return connecting
        else:
            endpoint = HostnameEndpoint(
                _ReactorWithResolver(reactor, _CheckedAddresses(group)),
                name or str(group[0]),
                port,
                timeout=timeout,
                bindAddress=binding,
            )
        d: defer.Deferred[IProtocol] = endpoint.connect(factory)
        if index + 1 < len(attempts):
            d.addErrback(_next_family, attempt, index + 1)
        return d

    try:
        d = attempt(0)
    except Exception:
        return defer.fail()
    if timeout > 0:
        d.addTimeout(timeout, reactor, onTimeoutCancel=_timed_out)
    return d


def _next_family(
    failure: Failure, attempt: Callable[[int], defer.Deferred[IProtocol]], index: int
) -> object:
    if failure.check(defer.CancelledError, error.ConnectingCancelledError):
        return failure
    return attempt(index)


def _timed_out(result: object, timeout: float) -> object:
    # Endpoints fail a cancelled attempt with ConnectingCancelledError, which
    # Deferred.addTimeout would pass on as it is; say what happened instead.
    if isinstance(result, Failure):
        raise error.TimeoutError(f"no connection within {seconds(timeout)}")
    return result


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the IP addresses a name resolves to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.addresses: list[IPAddress] = []
        self.done: defer.Deferred[list[IPAddress]] = defer.Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if host is not None:
            # Unwrapped like every other address: an AAAA record holding
            # ::ffff:127.0.0.1 must meet the rules as 127.0.0.1.
            ip = parse_ip(host)
            if ip not in self.addresses:
                self.addresses.append(ip)

    def resolutionComplete(self) -> None:
        if self.addresses:
            self.done.callback(self.addresses)
        else:
            self.done.errback(error.DNSLookupError(self.name))


def resolve(
    reactor: Any, name: str, timeout: float, resolver: IHostnameResolver | None = None
) -> defer.Deferred[list[IPAddress]]:
    """
    Every address C{name} (a canonical name: see L{socks5twist.names})
    resolves to, IPv4 and IPv6, through C{resolver} (by default the
    reactor's, whose lookups run off the reactor thread and block nothing).
    """
    receiver = _Addresses(name)
    try:
        (resolver or reactor.nameResolver).resolveHostName(receiver, name, 0)
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
