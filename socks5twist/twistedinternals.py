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

from typing import Any

from twisted.internet import tcp

# A name resolution result to hand to an IResolutionReceiver: Twisted has no
# public class for it (outbound.py's resolver of checked addresses makes one).
from twisted.internet._resolver import HostResolution

# Twisted's own PROXY-protocol wrapper, which believes any peer's header: a
# session wrapped in it is refused (see socks5twist.proxylistener.unvetted).
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper

__all__ = [
    "HAProxyProtocolWrapper",
    "HostResolution",
    "listening_port",
    "plain_and_idle",
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
