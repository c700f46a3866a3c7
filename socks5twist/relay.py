"""
The stream relay: two connected transports joined both ways.

Flow control is Twisted's producer/consumer: each transport is registered as
the streaming producer of the other, so when one side's write buffer fills
(a slow reader), reading from the other side pauses, and memory stays bounded
by the transports' own buffers.

Half-close: when one side sends EOF, the other side's write half is shut
(after unregistering its producer: a paused producer would otherwise hold the
FIN back forever) and the opposite direction keeps flowing.  When both sides
have sent EOF, or either side is gone, both connections are closed.

From a side's EOF (or loss) on, what is left for the other side is watched
(L{socks5twist.drain}): if it stops moving for the drain timeout, because
that side reads nothing, both connections are reset.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from .client.transport import TunnelTransport
from .drain import CHECKS, Drain, Verdict, kernel_unsent
from .shaping import Shaping, ThrottledProducer
from .twistedinternals import half_closer, plain_and_idle, unsent, write_to_socket

__all__ = [
    "IdleClock",
    "RemoteProtocol",
    "Side",
    "StreamRelay",
    "no_delay",
    "send_now",
]


class Side(enum.StrEnum):
    """The two ends of a relay."""

    CLIENT = "client"
    REMOTE = "remote"


class Ending(enum.Enum):
    """How far a relay is in ending (apart from each side's EOF and loss)."""

    OPEN = "open"  # relaying (perhaps half-closed)
    CLOSING = "closing"  # both sides asked to close once flushed
    RESET = "reset"  # both sides reset: nothing is closed cleanly after this


class IdleClock:
    """
    Calls C{on_idle} once nothing has happened for C{timeout} seconds.

    L{touch} records activity by storing the time, so the hot path never
    reschedules a timer; the one timer looks at that time when it fires and
    sleeps again for what is left.
    """

    __slots__ = ("_call", "_last", "_on_idle", "_reactor", "_timeout")

    def __init__(self, reactor: IReactorTime, timeout: float, on_idle: Callable[[], None]) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._on_idle = on_idle
        self._call: IDelayedCall | None = None
        self._last = 0.0

    def start(self) -> None:
        self._last = self._reactor.seconds()
        self._call = self._reactor.callLater(self._timeout, self._check)

    def touch(self) -> None:
        self._last = self._reactor.seconds()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        idle_for = self._reactor.seconds() - self._last
        if idle_for >= self._timeout:
            self._call = None
            self._on_idle()
        else:
            self._call = self._reactor.callLater(self._timeout - idle_for, self._check)


# Seconds an idle tunnel's clean close may take before what is left is reset.
FLUSH_GRACE = 5.0


class StreamRelay:
    """
    Relays bytes between C{client} and C{remote} transports.

    The protocols on each side report to it: L{from_client} / L{from_remote}
    for data, L{eof} for a half-close, L{lost} for a lost connection.

    @ivar up: bytes relayed from the client to the remote side.
    @ivar down: bytes relayed from the remote side to the client.
    """

    kind = "stream"
    __slots__ = (
        "_drain_call", "_drain_timeout", "_drains", "_ending", "_eof", "_idle", "_lost",
        "_on_drain", "_on_idle", "_reactor", "_reset_call", "_throttles", "_transports", "down",
        "up",
    )  # fmt: skip

    def __init__(
        self,
        reactor: IReactorTime,
        client: ITransport,
        remote: ITransport,
        idle_timeout: float = 0.0,
        on_idle: Callable[[], None] | None = None,
        shaping: Shaping | None = None,
        drain_timeout: float = 0.0,
        on_drain: Callable[[Side], None] | None = None,
    ) -> None:
        self._transports: dict[Side, Any] = {Side.CLIENT: client, Side.REMOTE: remote}
        # Under a [[limit]]: each side's reading, paused while its direction's
        # budget is in debt (see socks5twist.shaping).  None: no cost at all.
        self._throttles: dict[Side, ThrottledProducer] | None = None
        if shaping is not None:
            self._throttles = {
                Side.CLIENT: ThrottledProducer(reactor, client, shaping.up),
                Side.REMOTE: ThrottledProducer(reactor, remote, shaping.down),
            }
        self._eof: set[Side] = set()
        self._lost: set[Side] = set()
        self._on_idle = on_idle
        self._reactor = reactor
        self._reset_call: Any = None  # after an idle close: resets what has not closed
        self._idle = IdleClock(reactor, idle_timeout, self._idled) if idle_timeout > 0 else None
        # The drain deadline (see socks5twist.drain): what is left for each
        # side whose peer has closed, checked by one timer while there is any.
        self._drain_timeout = drain_timeout
        self._on_drain = on_drain
        self._drains: dict[Side, Drain] = {}
        self._drain_call: Any = None
        self._ending = Ending.OPEN
        self.up = 0
        self.down = 0

    def start(self) -> None:
        """Register each side as the other's producer, and start the idle clock."""
        client = self._transports[Side.CLIENT]
        remote = self._transports[Side.REMOTE]
        throttles = self._throttles
        if throttles is not None:
            client.registerProducer(throttles[Side.REMOTE], True)
            remote.registerProducer(throttles[Side.CLIENT], True)
        else:
            client.registerProducer(remote, True)
            remote.registerProducer(client, True)
        if self._idle is not None:
            self._idle.start()

    def from_client(self, data: bytes) -> None:
        self.up += len(data)
        if self._idle is not None:
            self._idle.touch()
        self._transports[Side.REMOTE].write(data)
        if self._throttles is not None:
            self._throttles[Side.CLIENT].moved(len(data))

    def from_remote(self, data: bytes) -> None:
        self.down += len(data)
        if self._idle is not None:
            self._idle.touch()
        self._transports[Side.CLIENT].write(data)
        if self._throttles is not None:
            self._throttles[Side.REMOTE].moved(len(data))

    def eof(self, side: Side = Side.CLIENT) -> None:
        """C{side} will send nothing more: shut the other side's write half."""
        if side in self._eof or self._lost:
            return  # resumeProducing after EOF can report it twice
        self._eof.add(side)
        if self._throttles is not None:
            self._throttles[side].stop()  # it reads nothing more: never resume it
        other = self._transports[_other(side)]
        _unregister(other)
        lose_write = half_closer(other)  # (none over TLS)
        if lose_write is None or len(self._eof) == 2:
            self._close_all()
        else:
            lose_write()
            self._watch_drain(_other(side))

    def lost(self, side: Side) -> None:
        """C{side}'s connection is gone: close the other once it has flushed."""
        if side in self._lost:
            return
        self._lost.add(side)
        if len(self._lost) == 2:
            self._stop_drains()
            if self._reset_call is not None:
                self._reset_call.cancel()
                self._reset_call = None
        self._close_all()

    def close(self) -> None:
        """Close both sides (flushing what is already buffered)."""
        self._close_all()

    def abort(self) -> None:
        """
        Reset both sides at once, dropping what is unsent.  (No clean close
        first, nor after: a transport whose write half is shut already
        closes cleanly at once when asked to, and the kernel would then go
        on sending what it holds, to a peer that may never read it.)
        """
        self._stop_clocks()
        self._ending = Ending.RESET
        self._abort_open_sides()

    def _stop_clocks(self) -> None:
        if self._idle is not None:
            self._idle.stop()
        if self._throttles is not None:
            for throttle in self._throttles.values():
                throttle.stop()

    def _close_all(self) -> None:
        self._stop_clocks()
        if self._ending is Ending.RESET:
            return
        self._ending = Ending.CLOSING
        for side, transport in self._transports.items():
            if side in self._lost:
                continue
            _unregister(transport)
            transport.loseConnection()
            self._watch_drain(side)

    # -- the drain deadline --------------------------------------------------

    def _watch_drain(self, side: Side) -> None:
        """
        Watch what is left for C{side}, whose peer has closed (or both are
        closing), if anything is: a side given everything already needs no
        watching (its close, if it is closing, does not wait on its peer).
        """
        if self._drain_timeout <= 0 or side in self._lost or side in self._drains:
            return
        left = self._left(side)
        if not left:
            return
        self._drains[side] = Drain(left)
        if self._drain_call is None:
            self._drain_call = self._reactor.callLater(
                self._drain_timeout / CHECKS, self._check_drains
            )

    def _left(self, side: Side) -> int:
        held, fd = unsent(self._transports[side])
        return held + kernel_unsent(fd)

    def _check_drains(self) -> None:
        self._drain_call = None
        for side, drain in list(self._drains.items()):
            if side in self._lost:
                verdict = Verdict.EMPTY  # gone: nothing is left for it
            else:
                verdict = drain.check(self._left(side), self._ending is Ending.CLOSING)
            if verdict is Verdict.EMPTY:
                del self._drains[side]
            elif verdict is Verdict.STUCK:
                # (Not a clean close: that would wait on the side that reads nothing.)
                self._stop_drains()
                if self._on_drain is not None:
                    self._on_drain(side)
                self.abort()
                return
        if self._drains:
            self._drain_call = self._reactor.callLater(
                self._drain_timeout / CHECKS, self._check_drains
            )

    def _stop_drains(self) -> None:
        self._drains.clear()
        if self._drain_call is not None:
            if self._drain_call.active():
                self._drain_call.cancel()
            self._drain_call = None

    def _idled(self) -> None:
        if self._on_idle is not None:
            self._on_idle()
        self._close_all()
        # A clean close waits for the peers to take what is buffered; a peer
        # that reads nothing (why the tunnel went idle, maybe) would hold the
        # session forever.  What has not closed after a short grace is reset.
        self._reset_call = self._reactor.callLater(FLUSH_GRACE, self._abort_open_sides)

    def _abort_open_sides(self) -> None:
        self._reset_call = None
        self._stop_drains()
        for side, transport in self._transports.items():
            if side not in self._lost:
                transport.abortConnection()


def no_delay(transport: Any) -> None:
    """
    Turn off Nagle's algorithm on a TCP transport: a proxy's small writes
    (replies, interactive traffic) must not wait for the peer's delayed ACK.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass


def send_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}: straight to the socket when it is one of
    Twisted's own plain TCP connections with nothing of its own waiting to
    go out, else (and for whatever the socket does not take) through
    C{transport.write}.

    A negotiation reply is a few bytes that the socket takes at once;
    through C{write} alone each would cost two changes of the reactor's
    interest in the socket and a writable event a turn later.  Nothing is
    reordered: the transport's buffer is empty when the socket is used.
    """
    if plain_and_idle(transport):
        data = data[write_to_socket(transport, data) :]
        if not data:
            return
    transport.write(data)


def _unregister(transport: Any) -> None:
    """
    Unregister a transport's producer, if it still has one.  A tunnel to an
    upstream (L{TunnelTransport}) keeps it in the transport under it: asked
    always, as TLS there (C{socks5s://}) does not close while one is.
    """
    if isinstance(transport, TunnelTransport) or getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()


def _other(side: Side) -> Side:
    return Side.REMOTE if side is Side.CLIENT else Side.CLIENT


@implementer(IHalfCloseableProtocol)
class RemoteProtocol(Protocol):
    """
    The far side of a tunnel (a CONNECT destination, a BIND peer): it reports
    to the relay it is attached to.

    @ivar on_connected: called with this protocol once it is connected, for
        a caller that must learn of the connection from its own factory
        (BIND); C{None} when the caller learns of it from an endpoint.
    """

    __slots__ = ("on_connected", "relay")

    def __init__(self) -> None:
        self.relay: Any = None  # a StreamRelay or a SpliceRelay
        self.on_connected: Callable[[RemoteProtocol], None] | None = None

    def connectionMade(self) -> None:
        no_delay(self.transport)
        if self.on_connected is not None:
            self.on_connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.from_remote(data)

    def readConnectionLost(self) -> None:
        # Only the stream relay has Twisted read for it; the splice relay
        # sees EOF itself.
        if self.relay is not None:
            self.relay.eof(Side.REMOTE)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.relay is not None:
            self.relay.lost(Side.REMOTE)
