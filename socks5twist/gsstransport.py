"""
A client connection under GSSAPI per-message protection (RFC 1961 section 5).

Once a session has chosen integrity or confidentiality, every byte it sends
the client is wrapped and framed, and every byte the client sends is a
message to unwrap.  Rather than teach the replies, the relay and the close
about it, the session swaps its transport for a L{ProtectedTransport}:
everything the session and its relay write goes through
L{socks5twist.gss.Protector.wrap}, and everything else (flow control,
half-close, addresses) is the real transport's.  Reads go the other way
through an L{Unprotector} before the session looks at them.

Costs: such a tunnel cannot splice (the kernel cannot wrap), each chunk is
copied and wrapped once, and the bytes grow by the framing (4 bytes) and
the mechanism's token (about 60 bytes for Kerberos' AES) per chunk of at
most 32 KiB.  What is buffered is bounded: one incomplete message from the
client (at most 64 KiB), and what the real transport holds, which its
producer (the relay's flow control) keeps in check as for any tunnel.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer, ISSLTransport, ITransport
from zope.interface import alsoProvides, implementer

from .gss import GSSFailure, Protector
from .gsswire import Deframer, Mtyp, build

__all__ = ["ProtectedTransport", "Unprotector"]


class Unprotector:
    """The client's messages, unwrapped, in order; bounded by the L{Deframer}."""

    __slots__ = ("_deframer", "_protector")

    def __init__(self, protector: Protector) -> None:
        self._protector = protector
        self._deframer = Deframer()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held."""
        return self._deframer.pending

    def feed(self, data: bytes) -> bytes:
        """
        The plaintext that C{data} completes (C{b""}: none yet).

        @raise GSSFailure: a message that is not one (the framing), or that
            does not unwrap (a forgery, a replay the mechanism sees, or one
            sent in the clear at the confidentiality level).
        """
        try:
            tokens = self._deframer.feed(data)
        except Exception as e:  # MalformedMessage: its text is ours
            raise GSSFailure(str(e)) from e
        unwrap = self._protector.unwrap
        if len(tokens) == 1:
            return unwrap(tokens[0])
        return b"".join(unwrap(token) for token in tokens)


@implementer(ITransport, IPushProducer)
class ProtectedTransport:
    """
    The session's view of its client once messages are wrapped: C{write}
    wraps, the rest is the real C{transport}'s.

    What the relay asks of a transport's kind holds of this one as of the
    real one: over TLS it provides L{ISSLTransport} too (TLS cannot
    half-close here: see L{socks5twist.twistedinternals.half_closer}), and
    its C{producer} is the real transport's.
    """

    def __init__(self, transport: Any, protector: Protector) -> None:
        self.transport = transport
        self._protector = protector
        self.written = 0  # plaintext bytes written (for tests and curiosity)
        if ISSLTransport.providedBy(transport):
            alsoProvides(self, ISSLTransport)

    # -- writing -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.written += len(data)
        try:
            tokens = self._protector.wrap(data)
        except GSSFailure:
            # Wrapping our own bytes fails only if the context is gone:
            # nothing can be sent any more.
            self.transport.abortConnection()
            return
        if len(tokens) == 1:
            self.transport.write(build(Mtyp.MESSAGE, tokens[0]))
        else:
            self.transport.writeSequence([build(Mtyp.MESSAGE, t) for t in tokens])

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    # -- everything else is the real transport's -------------------------------

    def loseConnection(self) -> None:
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def loseWriteConnection(self) -> None:
        self.transport.loseWriteConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def setTcpNoDelay(self, enabled: bool) -> None:
        setter = getattr(self.transport, "setTcpNoDelay", None)
        if setter is not None:
            setter(enabled)

    def getPeerCertificate(self) -> Any:
        return self.transport.getPeerCertificate()

    @property
    def producer(self) -> Any:
        """The real transport's registered producer (L{socks5twist.twistedinternals})."""
        return getattr(self.transport, "producer", None)

    @property
    def connected(self) -> bool:
        return bool(getattr(self.transport, "connected", True))

    @property
    def disconnecting(self) -> bool:
        return bool(getattr(self.transport, "disconnecting", False))

    def __repr__(self) -> str:
        return (
            f"<ProtectedTransport at {self._protector.level.name.lower()} over {self.transport!r}>"
        )
