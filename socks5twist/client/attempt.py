"""
One attempt of a client endpoint's (L{Attempt}): the factory the proxy
endpoint connects with, the Deferred the caller holds, the deadline and the
cancellation; and the protocol on the connection to the proxy
(L{Handshake}), which moves bytes between the transport and the sans-I/O
negotiation, then hands the connection to the caller's protocol.

Shared by L{socks5twist.client.SOCKS5ClientEndpoint} and
L{socks5twist.client.http.HTTPConnectEndpoint}.  Nothing here logs: every
failure is the errback of the attempt's Deferred.
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

from ..codec import Address
from .errors import HandshakeTimeout, ProxyProtocolError, SOCKS5ClientError
from .negotiation import ClientConnection, Established, NeedData, Send, State
from .protection import PreparedGSSAPI
from .transport import TunnelTransport, twisted_address

__all__ = ["Attempt", "Handshake"]


class Attempt(Factory):
    """
    One C{connect()}: the factory the proxy endpoint connects with, the
    Deferred the caller holds, the deadline and the cancellation.  Its
    phases: GSSAPI's first step in a thread (L{prepare}, when wanted), the
    connection to the proxy (L{start}), the negotiation (L{handshake}).
    """

    noisy = False  # no "Starting factory" lines for each connection

    def __init__(
        self,
        user_factory: IProtocolFactory,
        address: Address,
        timeout: float | None,
        reactor: IReactorTime,
        listening: Callable[[Address], None] | None = None,
    ) -> None:
        self.user_factory = user_factory
        self.address = address
        self.negotiation: ClientConnection | None = None  # once the proxy is connected to
        self.listening = listening  # BIND's first reply goes here
        self.timeout = timeout
        self.result: Deferred[IProtocol] = Deferred(self._cancel)
        self.handshake: Handshake | None = None
        self._preparing: Deferred[PreparedGSSAPI] | None = None
        self._connecting: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        if timeout is not None:
            self._timer = reactor.callLater(timeout, self._time_out)

    def prepare(
        self, preparing: Deferred[PreparedGSSAPI], then: Callable[[PreparedGSSAPI], None]
    ) -> None:
        """
        Waits for GSSAPI's first step (a thread's), then C{then(prepared)}
        (which starts the attempt); its failure is the attempt's.  Giving up
        meanwhile cancels C{preparing}: the thread's late result is dropped.
        """
        self._preparing = preparing

        def prepared(result: PreparedGSSAPI) -> None:
            self._preparing = None
            then(result)

        def failed(failure: Failure) -> None:
            self._preparing = None
            self.fail(failure)  # nothing when the attempt was given up already

        preparing.addCallback(prepared).addErrback(failed)

    def start(self, proxy: IStreamClientEndpoint, negotiation: ClientConnection) -> None:
        """Connects to the proxy, to negotiate C{negotiation} there."""
        self.negotiation = negotiation
        connecting = proxy.connect(self)
        if not self.result.called and self.handshake is None:
            self._connecting = connecting  # not reached yet: cancel this
        connecting.addErrback(self._unreachable)

    def reached(self, handshake: Handshake) -> bool:
        """The proxy is reached; C{False} if this attempt was given up already."""
        if self.result.called:
            return False
        self.handshake, self._connecting = handshake, None
        return True

    def buildProtocol(self, addr: Any) -> Handshake:
        return Handshake(self)

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
        negotiation = self.negotiation
        if negotiation is None:
            what = "GSSAPI's first context step (the KDC)"
        elif negotiation.state is State.START:
            what = "the connection to the proxy"
        else:
            what = f"the proxy's {negotiation.state.value}"
        self._give_up(Failure(HandshakeTimeout(self.timeout, what, self.address)))

    def _give_up(self, failure: Failure) -> None:
        if self.handshake is not None:
            self.handshake.abort(failure)
            return
        preparing, self._preparing = self._preparing, None
        connecting, self._connecting = self._connecting, None
        self.fail(failure)
        # Their errbacks find the result already failed.
        if preparing is not None:
            preparing.cancel()
        if connecting is not None:
            connecting.cancel()


@implementer(IHalfCloseableProtocol)
class Handshake(Protocol):
    """
    The protocol on the connection to the proxy: negotiates, then passes
    every event on to the caller's protocol.  It is always half-closeable
    (the proxy endpoint decides that when it wraps us); a caller's protocol
    that is not sees EOF as the connection's close, as TCP would give it.
    """

    def __init__(self, attempt: Attempt) -> None:
        assert attempt.negotiation is not None  # built by Attempt.start
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
