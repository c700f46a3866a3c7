"""
Every use socks5twist makes of Twisted's private API, in one room.

Twisted keeps no promise about these names; each is used here for a reason
given beside it, and `socks5twist/test/test_twistedinternals.py` pins the
behaviour relied on, so that a Twisted upgrade that changes it fails a test
instead of corrupting a tunnel.

The splice relay is the main user: it takes a TCP transport's socket
(L{socket_of}, L{stop_watching}) for the life of a tunnel and ends the
transport itself (L{end_transport}).  Each is called once per tunnel, never
per chunk: the relay keeps the socket it was given.  L{socks5twist.textlog}
stands in for twistd's text log observer (L{log_observers},
L{replace_log_observer}, L{file_log_parts}).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

# Two private modules:
# - HostResolution: a name resolution result to hand to an
#   IResolutionReceiver; Twisted has no public class for it (outbound.py's
#   resolver of checked addresses makes one).
# - HAProxyProtocolWrapper: Twisted's own PROXY-protocol wrapper, which
#   believes any peer's header: a session wrapped in it is refused (see
#   socks5twist.proxylistener.unvetted).
from twisted.internet import abstract, tcp
from twisted.internet._resolver import HostResolution
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import FileLogObserver, LogEvent
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
from twisted.python.failure import Failure

__all__ = [
    "HAProxyProtocolWrapper",
    "HostResolution",
    "end_transport",
    "file_log_parts",
    "half_closer",
    "has_producer",
    "listening_port",
    "log_observers",
    "plain_and_idle",
    "replace_log_observer",
    "socket_of",
    "stop_watching",
    "unsent",
    "write_to_socket",
]


def plain_and_idle(transport: Any) -> bool:
    """
    Whether C{transport} is one of Twisted's own TCP connections (no TLS),
    connected and not closing, with nothing of its own waiting to be sent:
    its socket may then be written to (or taken over) directly.

    Private: C{dataBuffer} and C{_tempDataLen} are where a
    L{tcp.Connection} keeps what it has not sent yet.
    """
    return bool(
        isinstance(transport, tcp.Connection)
        and not getattr(transport, "TLS", False)
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen
    )


def socket_of(transport: tcp.Connection) -> socket.socket:
    """
    The connected socket of one of Twisted's TCP transports: the very
    descriptor the transport reads and writes (and closes when it ends).
    Private: C{socket} is in no interface; a L{tcp.Connection} deletes it
    when it has closed the socket.
    """
    sock: socket.socket = transport.socket
    return sock


def has_producer(transport: Any) -> bool:
    """
    Whether a producer is registered with C{transport} (something would
    write to it, or pause and resume on its behalf).  Private: a
    L{twisted.internet.abstract.FileDescriptor} keeps it in C{producer},
    which no interface names.
    """
    return getattr(transport, "producer", None) is not None


def stop_watching(transport: tcp.Connection) -> None:
    """
    Make the reactor stop watching C{transport}'s socket, for reading and
    for writing, and leave the socket open and the transport connected:
    the caller reads and writes the socket itself from now on, and ends the
    transport with L{end_transport}.  What arrives meanwhile stays in the
    socket; the transport's protocol hears nothing.

    Not a Protocol's to call (C{stopReading} and C{stopWriting} are the
    transport's own bookkeeping with the reactor; C{pauseProducing} would be
    undone by a C{resumeProducing}), hence here.  The transport must have
    nothing left to send (L{plain_and_idle}), or it would never be sent.
    """
    transport.stopReading()
    transport.stopWriting()


def end_transport(transport: tcp.Connection, abort: bool) -> None:
    """
    End C{transport} at once, as the reactor does when it finds the
    connection gone: close its socket (with a reset if C{abort}, else an
    orderly close), then tell its protocol, synchronously, with
    L{ConnectionAborted} or L{ConnectionDone}.  Nothing that the transport
    buffered is flushed, so it must hold nothing (see L{stop_watching}).  A
    transport that has ended already is left alone, so its protocol hears
    C{connectionLost} once.

    Private: C{connectionLost} is the reactor's to call, and it is Twisted's
    L{tcp.Connection} that turns L{ConnectionAborted} into a reset (its
    C{SO_LINGER} of zero); C{loseConnection} would wait a reactor turn for a
    writable event on a socket the reactor no longer watches.
    """
    if transport.connected and not transport.disconnected:
        transport.connectionLost(Failure(ConnectionAborted()) if abort else connectionDone)


def half_closer(transport: Any) -> Callable[[], object] | None:
    """
    C{transport}'s C{loseWriteConnection} if it half-closes the connection
    its peer reads, else C{None} (the caller closes instead).

    Private: a L{twisted.protocols.policies.ProtocolWrapper} passes every
    attribute it lacks to the transport under it, so Twisted's TLS
    connection seems to have C{loseWriteConnection}: the TCP connection's.
    Its FIN would go under TLS (no close_notify); and when the peer's
    close_notify comes later, Twisted's TLS fails (C{AttributeError} in
    C{_flushSendBIO}: the TCP connection, write side closed, ends at once).
    TLS has no half-close here: a session over it closes whole.
    """
    if ISSLTransport.providedBy(transport):
        return None
    lose_write: Callable[[], object] | None = getattr(transport, "loseWriteConnection", None)
    return lose_write


def unsent(transport: Any) -> tuple[int, int]:
    """
    What C{transport} holds that it has not handed to its socket yet, in
    bytes, and the descriptor of that socket (-1 once closed, or if there is
    none to be found), looking through wrappers (TLS, the PROXY header, a
    GSSAPI L{ProtectedTransport <socks5twist.gsstransport.ProtectedTransport>}):
    the drain deadline's measure of what is left for a peer.

    Private: a L{FileDescriptor <twisted.internet.abstract.FileDescriptor>}
    keeps what it has not sent in C{dataBuffer} (from C{offset} on) and
    C{_tempDataLen}; Twisted's TLS wrapper keeps what it wrote before its
    handshake in C{_appSendBuffer}, and ciphertext in the transport under it.
    """
    held = 0
    for _ in range(4):  # (wrappers nest a level or two)
        if isinstance(transport, abstract.FileDescriptor):
            held += len(transport.dataBuffer) - transport.offset + transport._tempDataLen
            sock = getattr(transport, "socket", None)
            return held, sock.fileno() if sock is not None else -1
        # A wrapper's own attributes only: a ProtocolWrapper hands any
        # attribute it lacks to the transport under it (counted next).
        own = getattr(transport, "__dict__", {})
        held += sum(len(chunk) for chunk in own.get("_appSendBuffer", ()))
        transport = own.get("transport")
        if transport is None:
            break
    return held, -1


def write_to_socket(transport: Any, data: bytes) -> int:
    """
    Send C{data} on the socket of a transport for which L{plain_and_idle}
    holds; return how many bytes the socket took (0 on an error, which the
    transport's own write then finds out).  Private: C{transport.socket}.
    """
    try:
        sent: int = transport.socket.send(data)
    except OSError:
        return 0
    return sent


def listening_port(service: Any) -> Any:
    """
    The listening port of a C{strports.service} (a
    L{twisted.application.internet.StreamServerEndpointService}) once it
    listens, or C{None} (another kind of service, or not listening yet).
    Private: C{_waitingForPort}, the Deferred of its C{listen()}; --workers
    needs the port's descriptor to pass it on.
    """
    waiting = getattr(service, "_waitingForPort", None)
    if waiting is None:
        return None
    ports: list[Any] = []

    def keep(port: Any) -> Any:
        ports.append(port)
        return port

    waiting.addCallback(keep)  # fires at once if it already listens
    return ports[0] if ports else None


def log_observers(publisher: Any) -> list[Any]:
    """
    The observers of a L{twisted.logger.LogPublisher}, in the order it calls
    them.  Private: C{_observers}, the list the publisher calls (it has no
    public way to list them); L{socks5twist.textlog} looks for twistd's text
    file observer among them.
    """
    return list(publisher._observers)


def replace_log_observer(publisher: Any, old: Any, new: Any) -> None:
    """
    Put C{new} where C{old} is among C{publisher}'s observers (so the order
    in which observers see an event stays), or do nothing if C{old} is not
    one of them.  Private: C{_observers} (C{removeObserver} and
    C{addObserver} would move the observer to the end).
    """
    observers = publisher._observers
    for i, observer in enumerate(observers):
        if observer is old:
            observers[i] = new
            return


def file_log_parts(
    observer: object,
) -> tuple[Callable[[str], object], Callable[[], object], Callable[[LogEvent], str | None]] | None:
    """
    How a L{FileLogObserver} writes (text, encoded as it encodes it for a
    file of bytes), flushes and formats its events, or C{None} for any other
    observer.  Private: C{_outFile}, C{_encoding} and C{formatEvent}, set by
    its constructor.
    """
    if not isinstance(observer, FileLogObserver):
        return None
    out = observer._outFile
    encoding = observer._encoding
    if encoding is None:
        write: Callable[[str], object] = out.write
    else:

        def write(text: str) -> object:
            return out.write(text.encode(encoding))

    return write, out.flush, observer.formatEvent
