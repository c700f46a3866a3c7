"""
L{SOCKS5ClientEndpoint}: a Twisted client endpoint that connects through a
SOCKS5 proxy (RFC 1928, with RFC 1929 username/password).

The proxy is reached through any client endpoint: TCP, TLS, a Unix socket,
or another L{SOCKS5ClientEndpoint} (so a chain of proxies is endpoints
nested in one another).  The negotiation is the sans-I/O
L{socks5twist.client.negotiation.ClientConnection}; this module only moves
bytes between it and the transport, keeps the deadline, and hands the
connection to the caller's protocol once the tunnel is open (with a
L{socks5twist.client.transport.TunnelTransport}).

Nothing here logs: every failure is the errback of the Deferred that
C{connect()} returned (a L{socks5twist.client.errors.SOCKS5ClientError}, or
the proxy endpoint's own failure to reach the proxy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, NoProtocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..codec import Address, Command
from ..gsswire import Protection
from .errors import HandshakeTimeout, ProxyProtocolError, SOCKS5ClientError
from .negotiation import ClientConnection, Established, NeedData, Send, State
from .protection import GSSAPISettings, settings_for
from .proxied import DEFAULT_TIMEOUT, ProxiedEndpoint, destination
from .transport import TunnelTransport, twisted_address

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
        negotiation = ClientConnection(
            Command.CONNECT, self.destination, self._credentials, self.gssapi
        )
        attempt = _Attempt(protocolFactory, negotiation, self.timeout, self._reactor)
        attempt.start(self.proxy)
        return attempt.result

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
        negotiation = ClientConnection(
            Command.BIND, self.destination, self._credentials, self.gssapi
        )
        attempt = _Attempt(protocolFactory, negotiation, self.timeout, self._reactor, listening)
        attempt.start(self.proxy)
        return attempt.result


class _Attempt(Factory):
    """
    One C{connect()}: the factory the proxy endpoint connects with, the
    Deferred the caller holds, the deadline and the cancellation.
    """

    noisy = False  # no "Starting factory" lines for each connection

    def __init__(
        self,
        user_factory: IProtocolFactory,
        negotiation: ClientConnection,
        timeout: float | None,
        reactor: IReactorTime,
        listening: Callable[[Address], None] | None = None,
    ) -> None:
        self.user_factory = user_factory
        self.negotiation = negotiation
        self.listening = listening  # BIND's first reply goes here
        self.timeout = timeout
        self.result: Deferred[IProtocol] = Deferred(self._cancel)
        self.handshake: _Handshake | None = None
        self._connecting: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        if timeout is not None:
            self._timer = reactor.callLater(timeout, self._time_out)

    def start(self, proxy: IStreamClientEndpoint) -> None:
        connecting = proxy.connect(self)
        if not self.result.called and self.handshake is None:
            self._connecting = connecting  # not reached yet: cancel this
        connecting.addErrback(self._unreachable)

    def reached(self, handshake: _Handshake) -> bool:
        """The proxy is reached; C{False} if this attempt was given up already."""
        if self.result.called:
            return False
        self.handshake, self._connecting = handshake, None
        return True

    def buildProtocol(self, addr: Any) -> _Handshake:
        return _Handshake(self)

    # -- outcomes (the first one counts) -------------------------------------------

    def succeed(self, protocol: IProtocol) -> None:
        self._stop_timer()
        self.result.callback(protocol)

    def fail(self, failure: Failure) -> None:
        if not self.result.called:
            self._stop_timer()
            self.result.errback(failure)

    def _unreachable(self, failure: Failure) -> None:
        # The proxy endpoint's own failure (or the cancellation of it).
        self._connecting = None
        self.fail(failure)

    def bound(self, address: Address) -> None:
        """BIND's first reply: the deadline is met; the caller waits for the peer."""
        self._stop_timer()
        if self.listening is not None:
            self.listening(address)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- giving up -------------------------------------------------------------------

    def _cancel(self, result: Deferred[IProtocol]) -> None:
        self._give_up(Failure(CancelledError("connect() was cancelled")))

    def _time_out(self) -> None:
        self._timer = None
        assert self.timeout is not None
        phase = self.negotiation.state
        what = f"the proxy's {phase.value}"
        if phase is State.START:
            what = "the connection to the proxy"
        address = self.negotiation.request.address
        self._give_up(Failure(HandshakeTimeout(self.timeout, what, address)))

    def _give_up(self, failure: Failure) -> None:
        if self.handshake is not None:
            self.handshake.abort(failure)
            return
        connecting, self._connecting = self._connecting, None
        self.fail(failure)
        if connecting is not None:
            connecting.cancel()  # its errback finds the result already failed


@implementer(IHalfCloseableProtocol)
class _Handshake(Protocol):
    """
    The protocol on the connection to the proxy: negotiates, then passes
    every event on to the caller's protocol.  It is always half-closeable
    (the proxy endpoint decides that when it wraps us); a caller's protocol
    that is not sees EOF as the connection's close, as TCP would give it.
    """

    def __init__(self, attempt: _Attempt) -> None:
        self._attempt = attempt
        self._negotiation = attempt.negotiation
        self._user: IProtocol | None = None
        self._tunnel: TunnelTransport | None = None  # the user's transport, once open
        self._proxy: Any = None  # the connection to the proxy, once made

    def logPrefix(self) -> str:
        return "SOCKS5Client"

    def connectionMade(self) -> None:
        if not self._attempt.reached(self):
            # Cancelled or timed out while the proxy endpoint could not stop.
            _abort(self.transport)
            return
        self._proxy = self.transport
        self._proxy.write(self._negotiation.start())

    def dataReceived(self, data: bytes) -> None:
        if self._user is not None:
            tunnel = self._tunnel
            if tunnel is not None and tunnel.protection is not None:
                if tunnel.failure is not None:
                    return  # aborted: the rest of this read is dropped
                try:
                    data = tunnel.protection.open(data)
                except SOCKS5ClientError as e:
                    tunnel.fail(e)
                    return
                if not data:
                    return
            self._user.dataReceived(data)
        elif self._negotiation.state is not State.CLOSED:
            self._negotiation.receive_data(data)
            self._advance()

    def readConnectionLost(self) -> None:
        user, tunnel = self._user, self._tunnel
        if user is None:
            self._eof()
        elif tunnel is not None and tunnel.protection is not None and tunnel.protection.pending:
            pending = tunnel.protection.pending
            why = f"the proxy closed in the middle of a protected message ({pending} bytes)"
            tunnel.fail(ProxyProtocolError(why, tunnel.destination))
        elif IHalfCloseableProtocol.providedBy(user):
            user.readConnectionLost()  # type: ignore[attr-defined]
        else:
            self._proxy.loseConnection()

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self._user):
            self._user.writeConnectionLost()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if self._user is not None:
            if self._tunnel is not None:
                reason = self._tunnel.lost(reason)
            self._user.connectionLost(reason)
        elif reason.check(ConnectionDone, ConnectionLost) or self._negotiation.state in (
            State.START,
            State.CLOSED,
        ):
            self._eof()
        else:
            # Not a close, but the way to the proxy failing: a TLS proxy
            # endpoint's certificate check, say.  Its own error says why,
            # as when the proxy cannot be reached at all.
            self._negotiation.close()
            self._attempt.handshake = None
            self._attempt.fail(reason)

    # -- the negotiation -------------------------------------------------------------

    def _eof(self) -> None:
        if self._negotiation.state in (State.START, State.CLOSED):
            return
        self._negotiation.receive_data(b"")
        self._advance()

    def _advance(self) -> None:
        try:
            while True:
                event = self._negotiation.next_event()
                if isinstance(event, NeedData):
                    return
                if isinstance(event, Send):
                    self._proxy.write(event.data)
                elif isinstance(event, Established):
                    self._open(event.address)
                    return
                else:  # BIND's first reply (a CONNECT never gets one)
                    self._attempt.bound(event.address)
                    if self._negotiation.state is State.CLOSED:
                        return  # the caller gave up meanwhile
        except SOCKS5ClientError as e:
            self.abort(Failure(e))

    def _open(self, bound: Address) -> None:
        destination = self._negotiation.request.address
        try:
            user = self._attempt.user_factory.buildProtocol(twisted_address(destination))
            if user is None:
                raise NoProtocol()
        except Exception:
            self.abort(Failure())
            return
        protection = self._negotiation.protection
        tunnel = TunnelTransport(self._proxy, destination, bound, user, protection)
        self._user, self._tunnel = user, tunnel
        self._attempt.handshake = None
        user.makeConnection(tunnel)
        self._attempt.succeed(user)
        early = self._negotiation.take_data()
        if early:
            tunnel.deliver_early(early)

    def abort(self, failure: Failure) -> None:
        """Give up the negotiation: close the connection, fail the attempt."""
        if self._negotiation.state is not State.CLOSED:
            self._negotiation.close()
        self._attempt.handshake = None
        _abort(self._proxy)
        self._attempt.fail(failure)


def _abort(transport: Any) -> None:
    abort = getattr(transport, "abortConnection", None)
    if abort is None:
        transport.loseConnection()
    else:
        abort()
