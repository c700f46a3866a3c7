"""
L{SOCKS5ClientEndpoint}: a Twisted client endpoint that connects through a
SOCKS5 proxy (RFC 1928, with RFC 1929 username/password).

The proxy is reached through any client endpoint: TCP, TLS, a Unix socket,
or another L{SOCKS5ClientEndpoint} (so a chain of proxies is endpoints
nested in one another).  The negotiation is the sans-I/O
L{socks5twist.client.negotiation.ClientConnection}; an
L{socks5twist.client.attempt.Attempt} moves bytes between it and the
transport, keeps the deadline, and hands the connection to the caller's
protocol once the tunnel is open (with a
L{socks5twist.client.transport.TunnelTransport}).

With GSSAPI, the context's first step may wait for the KDC (seconds, when it
is slow or unreachable): it runs in the reactor's thread pool before the
proxy is connected to (L{socks5twist.client.protection.prepare}), and the
negotiation starts with its result; the reactor thread alone uses the
context from then on.

Nothing here logs: every failure is the errback of the Deferred that
C{connect()} returned (a L{socks5twist.client.errors.SOCKS5ClientError}, or
the proxy endpoint's own failure to reach the proxy).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorThreads,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from ..codec import Address, Command
from ..gsswire import Protection
from .attempt import Attempt
from .negotiation import ClientConnection
from .protection import GSSAPISettings, PreparedGSSAPI, prepare, settings_for
from .proxied import DEFAULT_TIMEOUT, ProxiedEndpoint, destination

__all__ = ["DEFAULT_TIMEOUT", "ProxiedEndpoint", "SOCKS5ClientEndpoint", "destination"]


@implementer(IStreamClientEndpoint)
class SOCKS5ClientEndpoint(ProxiedEndpoint):
    """
    Connects to C{host}:C{port} through the SOCKS5 proxy that C{proxy}
    reaches.

    C{connect(factory)} returns a Deferred that fires with the protocol that
    C{factory} built, once the proxy replied success (its transport is a
    L{TunnelTransport}: C{getHost()} is the proxy's bound address), or fails
    with a L{socks5twist.client.errors.SOCKS5ClientError}, or with the proxy
    endpoint's own failure.  Cancelling it cancels the connection to the
    proxy, or aborts the negotiation.

    @ivar proxy: the endpoint that reaches the proxy.
    @ivar destination: the destination, as it is sent to the proxy.
    @ivar timeout: seconds from C{connect()} to the proxy's reply, the
        connection to the proxy included (C{None}: no limit of our own).
    """

    def __init__(
        self,
        proxy: IStreamClientEndpoint,
        host: str,
        port: int,
        username: str | bytes | None = None,
        password: str | bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        reactor: IReactorTime | None = None,
        *,
        gssapi: str | GSSAPISettings | None = None,
        gssapi_protection: Protection | None = None,
        gssapi_nec: bool | None = None,
    ) -> None:
        """
        The arguments of L{ProxiedEndpoint}, and GSSAPI (RFC 1961):

        @param gssapi: the proxy's service, a host-based name
            (C{rcmd@proxy.example.org}) or a principal (with a C{/}); GSSAPI
            is then offered instead of no authentication (beside
            username/password when given), with the ticket of the default
            credentials cache (C{KRB5CCNAME}).
        @param gssapi_protection: the level asked for (default:
            confidentiality); the proxy's answer must be that or stronger.
        @param gssapi_nec: send the level as one unwrapped byte (NEC mode).
        """
        super().__init__(proxy, host, port, username, password, timeout, reactor)
        self.gssapi = settings_for(gssapi, gssapi_protection, gssapi_nec)

    def __repr__(self) -> str:
        text = super().__repr__()
        return text if self.gssapi is None else f"{text[:-1]} gssapi={self.gssapi.target}>"

    @staticmethod
    def _credential(value: str | bytes | None, what: str) -> bytes | None:
        raw = ProxiedEndpoint._credential(value, what)
        if raw is not None and len(raw) > 255:
            raise ValueError(f"the {what} is at most 255 bytes (RFC 1929)")
        return raw

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return self._attempt(Command.CONNECT, protocolFactory)

    def bind(
        self, protocolFactory: IProtocolFactory, listening: Callable[[Address], None]
    ) -> Deferred[IProtocol]:
        """
        BIND (RFC 1928 section 4) for the peer C{destination} names: the
        proxy listens, and C{listening} is called with its first reply's
        address (where the peer is to connect); the Deferred fires once the
        peer has connected, with the protocol built for it (its transport's
        C{getHost()} is the peer's address, as the second reply gave it).
        C{timeout} bounds the time to the first reply only: how long to
        wait for the peer is the caller's (cancel the Deferred).
        """
        return self._attempt(Command.BIND, protocolFactory, listening)

    def _attempt(
        self,
        command: Command,
        factory: IProtocolFactory,
        listening: Callable[[Address], None] | None = None,
    ) -> Deferred[IProtocol]:
        """
        Starts one attempt: at once, or once GSSAPI's first step is done in
        the reactor's thread pool (when the settings want a thread and the
        reactor has threads; else the negotiation makes it, synchronously).
        """
        gssapi, reactor = self.gssapi, self._reactor
        attempt = Attempt(factory, self.destination, self.timeout, reactor, listening)

        def start(gss: GSSAPISettings | PreparedGSSAPI | None) -> None:
            negotiation = ClientConnection(command, self.destination, self._credentials, gss)
            attempt.start(self.proxy, negotiation)

        threads = IReactorThreads(reactor, None)
        if gssapi is not None and gssapi.threaded and threads is not None:
            preparing = deferToThreadPool(threads, threads.getThreadPool(), prepare, gssapi)
            attempt.prepare(preparing, start)
        else:
            start(gssapi)
        return attempt.result
