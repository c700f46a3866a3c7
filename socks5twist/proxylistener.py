"""
Listening behind a load balancer that speaks the PROXY protocol (C{haproxy:}
listeners): a thin wrapper that believes the header only from trusted peers.

L{ProxyHeaderFactory} wraps any server factory.  For each connection its
L{ProxyHeaderProtocol}:

1. looks at the real peer (the socket's): a peer outside the trusted proxy
   networks is closed at once, before a byte of its header is read, and
   logged with its real address (a flood folds into one line per
   L{Refusals.WINDOW});
2. reads the header (L{socks5twist.proxyheader}), bounded in size by the
   protocol and in time by the wrapped factory's C{handshake_timeout}; a
   malformed or truncated header is a clean close and one log line with the
   offending bytes escaped;
3. only then connects the wrapped protocol, whose C{transport.getPeer()} is
   the client the header names from its first event on, while
   C{transport.getHost()} stays the socket's own address (where BIND and UDP
   ASSOCIATE listen).  A header that names no client (C{UNKNOWN}, C{LOCAL}:
   the balancer's health checks) leaves the balancer as the client.

Afterwards the wrapper only passes things through: data, half-close
(L{IHalfCloseableProtocol}), and every transport method it does not define
(pause/resume, C{abortConnection}, C{loseWriteConnection}...).

Twisted's own PROXY wrapper (C{twisted.protocols.haproxy}, what Twisted's
C{haproxy:} endpoint string gives) believes any peer: L{unvetted} tells a
session that it runs behind it, so that the session refuses the connection.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from . import proxyheader
from .logsafe import escape
from .networks import LOOPBACK_NETWORKS, IPNetwork, parse_network
from .policy import describe, ip_of
from .twistedinternals import HAProxyProtocolWrapper

__all__ = ["ProxyHeaderFactory", "ProxyHeaderProtocol", "Refusals", "unvetted"]

log = Logger()

HINT = "--trusted-proxy NETWORK (library: SOCKS5ServerFactory(trusted_proxies=[...]))"


class _State(enum.Enum):
    HEADER = "header"  # a trusted peer; its header is being read
    OPEN = "open"  # the wrapped protocol is connected
    CLOSED = "closed"  # refused, malformed, or closed while reading the header


class Refusals:
    """
    The log of refused peers: the first refusal of a burst is one line at
    once; the rest of the burst is counted and logged as one line per
    C{WINDOW} seconds, naming a few of the peers.  A flood of untrusted
    connections cannot flood the log.
    """

    WINDOW = 10.0
    NAMED = 5  # peers named in a folded line

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.more = 0
        self.peers: dict[str, None] = {}  # an ordered set
        self.unnamed = False  # more addresses than NAMED were refused
        self._call: IDelayedCall | None = None

    def refused(self, peer: IAddress, why: str) -> None:
        if self._call is None:
            log.warn(
                "refused PROXY-protocol connection from {peer}: {why}",
                peer=describe(peer),
                why=why,
            )
            self._call = self.reactor.callLater(self.WINDOW, self._fold)
            return
        self.more += 1
        # A folded line names addresses, not ports: what a reader acts on.
        ip = ip_of(peer)
        name = describe(peer) if ip is None else str(ip)
        if name in self.peers:
            return
        if len(self.peers) < self.NAMED:
            self.peers[name] = None
        else:
            self.unnamed = True

    def _fold(self) -> None:
        self._call = None
        if not self.more:
            return  # a quiet window: the next refusal is logged at once
        log.warn(
            "refused {count} more PROXY-protocol connections within {window:g}s from"
            " untrusted peers: {peers}{others}",
            count=self.more,
            window=self.WINDOW,
            peers=", ".join(self.peers),
            others=" and other addresses" if self.unnamed else "",
        )
        self.more = 0
        self.peers = {}
        self.unnamed = False
        self._call = self.reactor.callLater(self.WINDOW, self._fold)

    def stop(self) -> None:
        """Log what is counted and stop the timer (the listener stops)."""
        if self._call is not None:
            self._call.cancel()
            self._fold()
        if self._call is not None:
            self._call.cancel()
            self._call = None


@implementer(IHalfCloseableProtocol)
class ProxyHeaderProtocol(ProtocolWrapper):
    """One connection from a load balancer: see the module docstring."""

    factory: ProxyHeaderFactory
    transport: Any

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self.state = _State.HEADER
        self._buffer = b""
        self._client: IAddress | None = None
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper's, without connecting the wrapped protocol yet.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        self.factory.registerProtocol(self)
        peer = self.transport.getPeer()
        why = self.factory.refusal(peer)
        if why is not None:
            self.state = _State.CLOSED
            self.factory.refusals.refused(peer, why)
            self.transport.abortConnection()
            return
        timeout = self.factory.timeout
        if timeout > 0:
            self._timer = self.factory.reactor.callLater(timeout, self._timed_out)

    # -- the client's address ----------------------------------------------------

    def getPeer(self) -> IAddress:
        """The client the header named (else the balancer itself)."""
        if self._client is not None:
            return self._client
        peer: IAddress = self.transport.getPeer()
        return peer

    # -- reading the header ------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state is _State.OPEN:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.state is _State.CLOSED:
            return
        self._buffer += data
        try:
            header = proxyheader.parse(self._buffer)
        except proxyheader.MalformedHeader as e:
            self._malformed(e.why, e.offending)
            return
        if header is None:
            return  # parse() refuses a header longer than the protocol allows
        self._cancel_timer()
        rest, self._buffer = self._buffer[header.length :], b""
        if header.source is not None:
            ip, port = header.source
            self._client = (IPv4Address if ip.version == 4 else IPv6Address)("TCP", str(ip), port)
        self.state = _State.OPEN
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]
        if rest and not self.disconnecting and not self.transport.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def _malformed(self, why: str, offending: bytes) -> None:
        self.state = _State.CLOSED
        self._cancel_timer()
        self._buffer = b""
        log.warn(
            "malformed PROXY header from {peer}: {why}: {header}",
            peer=describe(self.transport.getPeer()),
            why=why,
            header=escape(offending),
        )
        self.transport.loseConnection()

    def _timed_out(self) -> None:
        self._timer = None
        self._malformed(
            f"not complete after {self.factory.timeout:g}s (the handshake timeout)",
            self._buffer[: proxyheader.V1_MAX],
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            timer, self._timer = self._timer, None
            if timer.active():
                timer.cancel()

    def _ended_in_header(self) -> None:
        # A trusted peer that connects and leaves without a byte is a health
        # check: no line.  A part of a header is worth one.
        if self._buffer:
            self._malformed("the connection ended inside the header", self._buffer)
        else:
            self.state = _State.CLOSED
            self._cancel_timer()

    # -- passing events on ------------------------------------------------------

    def readConnectionLost(self) -> None:
        if self.state is _State.HEADER:
            self._ended_in_header()
            self.transport.loseConnection()
        elif self.state is _State.OPEN:
            wrapped = IHalfCloseableProtocol(self.wrappedProtocol, None)
            if wrapped is not None:
                wrapped.readConnectionLost()
            else:
                self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self.state is _State.OPEN:
            wrapped = IHalfCloseableProtocol(self.wrappedProtocol, None)
            if wrapped is not None:
                wrapped.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.state is _State.HEADER:
            self._ended_in_header()
        self._cancel_timer()
        was_open, self.state = self.state is _State.OPEN, _State.CLOSED
        self.factory.unregisterProtocol(self)
        if was_open:
            self.wrappedProtocol.connectionLost(reason)
        self.wrappedProtocol = None  # type: ignore[assignment]


class ProxyHeaderFactory(WrappingFactory[ProxyHeaderProtocol]):
    """
    Wraps a server factory for a listener behind a PROXY-protocol balancer.

    @param wrappedFactory: the factory of the protocols behind the header
        (a L{socks5twist.factory.SOCKS5ServerFactory}, or any other).
    @param trusted_proxies: the networks (or their text) whose peers may
        send the header; by default the wrapped factory's
        C{trusted_proxies}.  Empty: every connection is refused, with a log
        line that says what to set.  A Unix-socket peer is trusted when a
        loopback address is.
    @param reactor: for the header's timer and the refusals' log; by
        default the wrapped factory's C{reactor}, else the global one.
    @param timeout: seconds a trusted peer has to send its whole header; by
        default the wrapped factory's C{handshake_timeout} (read at each
        connection), else 10; 0 disables.
    """

    protocol = ProxyHeaderProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        wrappedFactory: Any,
        trusted_proxies: Iterable[IPNetwork | str] | None = None,
        *,
        reactor: Any = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(wrappedFactory)
        if trusted_proxies is None:
            trusted_proxies = getattr(wrappedFactory, "trusted_proxies", ())
        self.trusted: tuple[IPNetwork, ...] = tuple(
            parse_network(n) if isinstance(n, str) else n for n in trusted_proxies
        )
        if reactor is None:
            reactor = getattr(wrappedFactory, "reactor", None)
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self._timeout = timeout
        self.refusals = Refusals(reactor)

    @property
    def timeout(self) -> float:
        if self._timeout is not None:
            return self._timeout
        return float(getattr(self.wrappedFactory, "handshake_timeout", 10.0))

    def refusal(self, peer: IAddress) -> str | None:
        """Why a connection from C{peer} may not send a header (C{None}: it may)."""
        if not self.trusted:
            return f"no trusted proxies are configured, so none is believed: set {HINT}"
        ip = ip_of(peer)
        if ip is None:
            loopback = any(
                n.version == lo.version and n.overlaps(lo)  # type: ignore[arg-type]
                for n in self.trusted
                for lo in LOOPBACK_NETWORKS
            )
            if isinstance(peer, UNIXAddress) and loopback:
                return None
        elif any(ip in n for n in self.trusted):
            return None
        return "not a trusted proxy (--trusted-proxy)"

    def doStop(self) -> None:
        self.refusals.stop()
        super().doStop()


def unvetted(transport: Any) -> bool:
    """
    Whether C{transport} is Twisted's own PROXY-protocol wrapper, which
    believes the header of any peer (so that a session refuses it: wrap with
    L{ProxyHeaderFactory} instead).  Logs why.
    """
    if not isinstance(transport, HAProxyProtocolWrapper):
        return False
    log.warn(
        "refused connection from {peer}: Twisted's haproxy: endpoint believes any peer's"
        " PROXY header; listen on the inner endpoint with"
        " socks5twist.proxylistener.ProxyHeaderFactory and set {hint}",
        peer=describe(transport.transport.getPeer()),  # type: ignore[union-attr]
        hint=HINT,
    )
    return True
