"""
Every use socks5twist makes of Twisted's private API, in one room.

Twisted keeps no promise about these names; each is used here for a reason
given beside it, and `socks5twist/test/test_twistedinternals.py` pins the
behaviour relied on, so that a Twisted upgrade that changes it fails a test
instead of corrupting a tunnel.

Not yet moved here (they must happen where the splice relay's ownership
protocol says, and its tests pin them): the splice package takes a TCP
transport's socket (C{transport.socket}, in C{splice/relay.py} and
C{splice/pump.py}), stops the reactor watching it (C{stopReading},
C{stopWriting}) and ends the transport by calling its C{connectionLost}
(C{splice/relay.py}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

# A name resolution result to hand to an IResolutionReceiver: Twisted has no
# public class for it (outbound.py's resolver of checked addresses makes one).
from twisted.internet._resolver import HostResolution
from twisted.logger import FileLogObserver, LogEvent

# Twisted's own PROXY-protocol wrapper, which believes any peer's header: a
# session wrapped in it is refused (see socks5twist.proxylistener.unvetted).
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper

__all__ = [
    "HAProxyProtocolWrapper",
    "HostResolution",
    "file_log_parts",
    "listening_port",
    "log_observers",
    "plain_and_idle",
    "replace_log_observer",
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
