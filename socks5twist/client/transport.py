"""
The transport a protocol gets when its connection goes through a SOCKS5 proxy.

L{TunnelTransport} stands between the user's protocol and the connection to
the proxy (whatever that is: TCP, TLS, a Unix socket, or another tunnel, for
a chain).  Writes, closes and flow control pass straight through; what it
adds is what the tunnel is: C{getPeer()} is the destination asked for,
C{getHost()} the address the proxy reported it connects from (BND.ADDR and
BND.PORT), and L{TunnelTransport.proxy_transport} is the connection to the
proxy itself.  It claims only the interfaces it keeps (a TLS connection to
the proxy does not make the tunnel TLS).

After GSSAPI at integrity or confidentiality (RFC 1961 section 5), every
write is wrapped into protected messages on its way to the proxy (the
handshake protocol unwraps what comes back, with the same
L{ProtectedStream}); a failure to wrap or unwrap aborts the connection, and
the protocol's C{connectionLost} gets the reason (L{TunnelTransport.failure}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConsumer,
    IProducer,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from ..codec import Address, AddressType
from ..twistedinternals import half_closer
from .errors import SOCKS5ClientError
from .protection import ProtectedStream

__all__ = ["TunnelTransport", "twisted_address"]

TwistedAddress = IPv4Address | IPv6Address | HostnameAddress


def twisted_address(address: Address) -> TwistedAddress:
    """A SOCKS address as Twisted spells one (a name as a L{HostnameAddress})."""
    if address.type is AddressType.IPV4:
        return IPv4Address("TCP", address.host, address.port)
    if address.type is AddressType.IPV6:
        return IPv6Address("TCP", address.host, address.port)
    return HostnameAddress(address.host.encode("ascii"), address.port)


@implementer(ITransport, IConsumer, IPushProducer)
class TunnelTransport:
    """
    A stream to the destination, through the proxy.

    @ivar proxy_transport: the connection to the proxy.
    @ivar destination: the destination, as the request named it (a name
        stays a name: the proxy resolved it).
    @ivar bound: the reply's BND.ADDR and BND.PORT: for CONNECT, the address
        the proxy connects to the destination from (what the destination
        sees, unless there is NAT beyond the proxy).
    @ivar protection: the GSSAPI protected stream (C{None}: bytes pass as
        they are).
    @ivar failure: why the tunnel was aborted by us (a message that did not
        wrap or unwrap), once it was.
    """

    def __init__(
        self,
        proxy_transport: Any,
        destination: Address,
        bound: Address,
        protocol: IProtocol,
        protection: ProtectedStream | None = None,
    ) -> None:
        self.proxy_transport = proxy_transport
        self.destination = destination
        self.bound = bound
        self.protection = protection
        self.failure: Failure | None = None
        self._protocol = protocol
        self._paused = False
        self._held = b""

    def __repr__(self) -> str:
        return f"<TunnelTransport to {self.destination.host}:{self.destination.port}>"

    # -- what the tunnel is --------------------------------------------------------

    def getPeer(self) -> TwistedAddress:
        """The destination (a name as a L{HostnameAddress}: the proxy resolved it)."""
        return twisted_address(self.destination)

    def getHost(self) -> TwistedAddress:
        """The address the proxy reported it connects from (BND.ADDR, BND.PORT)."""
        return twisted_address(self.bound)

    # -- writing and closing: passed through -------------------------------------

    def write(self, data: bytes) -> None:
        if self.protection is None:
            self.proxy_transport.write(data)
        elif self.failure is None and data:
            try:
                sealed = self.protection.seal(data)
            except SOCKS5ClientError as e:
                self.fail(e)
                return
            self.proxy_transport.write(sealed)

    def writeSequence(self, data: Any) -> None:
        if self.protection is None:
            self.proxy_transport.writeSequence(data)
        else:
            self.write(b"".join(data))

    def fail(self, error: Exception) -> None:
        """Abort the tunnel because of C{error} (the protocol's C{connectionLost} gets it)."""
        if self.failure is None:
            self.failure = Failure(error)
            self.abortConnection()

    def lost(self, reason: Failure) -> Failure:
        """Why the protocol lost its connection: our own failure, if we aborted."""
        return reason if self.failure is None else self.failure

    def loseConnection(self) -> None:
        self.proxy_transport.loseConnection()

    def abortConnection(self) -> None:
        """Close at once, dropping what is buffered (where the proxy's transport can)."""
        abort = getattr(self.proxy_transport, "abortConnection", None)
        if abort is None:
            self.proxy_transport.loseConnection()
        else:
            abort()

    def loseWriteConnection(self) -> None:
        """
        Half-close: send EOF to the destination, keep reading.  Through a
        proxy reached over TLS, which cannot half-close, this closes.
        """
        lose_write = half_closer(self.proxy_transport)
        if lose_write is None:
            self.proxy_transport.loseConnection()
        else:
            lose_write()

    # -- flow control --------------------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.proxy_transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.proxy_transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self._paused = True
        self.proxy_transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        held, self._held = self._held, b""
        if held:
            self._protocol.dataReceived(held)
        if not self._paused:
            self.proxy_transport.resumeProducing()

    def stopProducing(self) -> None:
        self.proxy_transport.stopProducing()

    # -- for the handshake protocol ------------------------------------------------

    def deliver_early(self, data: bytes) -> None:
        """
        The tunnel's first bytes, read with the proxy's reply.  A protocol
        that paused its transport (in C{connectionMade}, or in a callback of
        the Deferred that delivered it) gets them when it resumes, as it
        would have from the socket.  They are at most one read.
        """
        if self._paused:
            self._held += data
        else:
            self._protocol.dataReceived(data)
