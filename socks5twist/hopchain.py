"""
A chain of upstream proxies as client endpoints nested in one another
(L{endpoint_for}): the first hop is reached over TCP (from
C{--outgoing-address}, if given), each next one through the ones before
(L{socks5twist.client.SOCKS5ClientEndpoint}, with GSSAPI for a Kerberised
hop, or L{socks5twist.client.http.HTTPConnectEndpoint}), over TLS where the
hop wants it, and the destination through the last.  Each inner endpoint's
failure is tagged with the hop it was reaching (L{HopFailed}), so that
L{socks5twist.upstream} can tell an upstream that failed from the
destination's answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IHostnameResolver,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from . import outbound, tlshops
from .addresses import IPAddress
from .client import SOCKS5ClientEndpoint
from .client.http import HTTPConnectEndpoint
from .names import is_address
from .routes import Chain, Hop

__all__ = ["HopFailed", "endpoint_for"]


class HopFailed(Exception):
    """Reaching hop C{index} (0-based) of a chain failed with C{failure}."""

    def __init__(self, index: int, failure: Failure) -> None:
        super().__init__(failure.getErrorMessage() or type(failure.value).__name__)
        self.index = index
        self.failure = failure


@implementer(IStreamClientEndpoint)
class _Tagged:
    """An endpoint whose failures say which hop it was reaching (the innermost wins)."""

    def __init__(self, endpoint: IStreamClientEndpoint, index: int) -> None:
        self.endpoint = endpoint
        self.index = index

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        d = self.endpoint.connect(protocolFactory)
        return d.addErrback(self._tag)

    def _tag(self, failure: Failure) -> Failure:
        if failure.check(HopFailed, defer.CancelledError):
            return failure
        return Failure(HopFailed(self.index, failure))


def _tcp(
    reactor: Any,
    hop: Hop,
    timeout: float,
    outgoing: Mapping[int, str],
    resolver: IHostnameResolver | None,
) -> Any:
    """
    The endpoint to the first hop, from C{outgoing}'s address of its IP
    version (C{--outgoing-address}), if any: an address as it is, a name
    resolved by C{resolver} (L{_ByName}).
    """
    if is_address(hop.host):
        version = 6 if ":" in hop.host else 4
        bind = outgoing.get(version)
        cls = TCP6ClientEndpoint if version == 6 else TCP4ClientEndpoint
        return cls(
            reactor, hop.host, hop.port, timeout=timeout, bindAddress=(bind, 0) if bind else None
        )
    return _ByName(reactor, hop.host, hop.port, timeout, outgoing, resolver)


@implementer(IStreamClientEndpoint)
class _ByName:
    """
    A first hop given by name: resolved by C{resolver} (the server's, so
    that a library user's resolver is the one asked and tests ask no DNS
    server; C{None}: the reactor's), then connected to as a direct
    connection is (happy eyeballs, from C{outgoing}'s address of each IP
    version).  Each of the two steps is bounded by C{timeout}.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        timeout: float,
        outgoing: Mapping[int, str],
        resolver: IHostnameResolver | None,
    ) -> None:
        self._reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout
        self.outgoing = outgoing
        self.resolver = resolver

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        def resolved(addresses: list[IPAddress]) -> defer.Deferred[IProtocol]:
            return outbound.connect(
                self._reactor,
                addresses,
                self.port,
                protocolFactory,
                self.timeout,
                name=self.host,
                bind=self.outgoing,
                fast=False,  # (the factory's protocol is the hop's handshake)
            )

        d = outbound.resolve(self._reactor, self.host, self.timeout, self.resolver)
        return d.addCallback(resolved)


def _tls(hop: Hop, endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
    """
    C{endpoint} (a stream to C{hop}), over TLS if the hop wants it (its
    certificate checked for its host: a failed check fails the attempt with
    the TLS error, blamed on the hop).
    """
    if not hop.tls:
        return endpoint
    return wrapClientTLS(tlshops.client_options(hop.host, hop.ca), endpoint)


def _through(
    hop: Hop,
    proxy: IStreamClientEndpoint,
    host: str,
    port: int,
    timeout: float | None,
    reactor: Any,
) -> SOCKS5ClientEndpoint | HTTPConnectEndpoint:
    """
    The endpoint to C{host}:C{port} through C{hop}, reached by C{proxy}
    (with the process's Kerberos credentials for a GSSAPI hop).
    """
    user, password = hop.credentials or (None, None)
    if hop.scheme == "http":
        return HTTPConnectEndpoint(
            proxy, host, port, user, password, timeout=timeout, reactor=reactor
        )
    return SOCKS5ClientEndpoint(
        proxy,
        host,
        port,
        user,
        password,
        timeout=timeout,
        reactor=reactor,
        gssapi=hop.gssapi,
        gssapi_protection=hop.protection,
    )


def endpoint_for(
    reactor: Any,
    chain: Chain,
    host: str,
    port: int,
    timeout: float,
    outgoing: Mapping[int, str],
    resolver: IHostnameResolver | None = None,
) -> SOCKS5ClientEndpoint | HTTPConnectEndpoint:
    """
    The endpoint to C{host}:C{port} (a name goes unresolved) through the
    hops of C{chain}; its C{timeout} bounds the whole attempt.  The first
    hop's name, if it has one, is resolved by C{resolver} (default: the
    reactor's); the next hops' names go to the hop before, unresolved.
    """
    first = _tls(chain[0], _tcp(reactor, chain[0], timeout, outgoing, resolver))
    endpoint: IStreamClientEndpoint = _Tagged(first, 0)
    for index in range(1, len(chain)):
        hop = chain[index]
        inner = _through(chain[index - 1], endpoint, hop.host, hop.port, None, reactor)
        endpoint = _Tagged(_tls(hop, inner), index)
    return _through(chain[-1], endpoint, host, port, timeout, reactor)
