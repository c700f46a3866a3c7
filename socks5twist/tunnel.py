"""
The tunnel: the one place that chooses between the splice relay and the
stream relay, and hands a request's connections over to the one chosen.

The choice is L{will_splice}'s, made once per tunnel: for a CONNECT to one
address before connecting (L{connect}: a tunnel that will splice needs only
a bare socket for its destination, no Twisted transport), for any other
tunnel (a BIND peer, a CONNECT to one of several addresses) when it opens
(L{join}).  L{join} then builds the relay, L{start} starts it, and the
session sees either only as a L{Relay}.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.protocol import Factory

from . import outbound, splice
from .addresses import Address, IPAddress, ip_text
from .policy import describe, show
from .relay import RemoteProtocol, Side, StreamRelay
from .shaping import Shaping
from .socketconnect import connect_socket
from .splice import SpliceRelay

__all__ = ["Relay", "Remote", "adopt", "connect", "join", "start", "will_splice"]

_OUTBOUND_FACTORY = Factory.forProtocol(RemoteProtocol)
_OUTBOUND_FACTORY.noisy = False


class Relay(Protocol):
    """
    What the session and the factory need of a relay, whichever it is
    (L{StreamRelay} or L{SpliceRelay}).  The session feeds it what the
    client's transport reads (L{from_client}, L{eof}): the splice relay
    reads the client's socket itself, so its transport reads nothing.
    """

    kind: str

    @property
    def up(self) -> int:
        """Bytes relayed from the client to the remote side."""

    @property
    def down(self) -> int:
        """Bytes relayed from the remote side to the client."""

    def from_client(self, data: bytes) -> None:
        """Bytes the client's transport read, for the remote side."""

    def eof(self) -> None:
        """The client half-closed: it will send nothing more."""

    def close(self) -> None:
        """Close both sides, flushing what is buffered."""

    def abort(self) -> None:
        """Reset both sides at once."""

    def lost(self, side: Side) -> None:
        """C{side}'s connection is gone."""


def will_splice(splice_on: bool, client: Any, remote: Any = None) -> bool:
    """
    Whether a tunnel between the client's transport and C{remote} (a
    transport; C{None}: a bare socket, yet to be connected) splices: where
    splicing is on and both ends are plain TCP with nothing of their own
    unsent (L{splice.can_splice}).
    """
    return (
        splice_on
        and splice.can_splice(client)
        and (remote is None or isinstance(remote, socket.socket) or splice.can_splice(remote))
    )


@dataclass(frozen=True, slots=True)
class Remote:
    """
    A CONNECT's destination, connected: C{end} (a bare socket or a
    protocol with its transport) and the addresses the session's record
    and reply show.
    """

    end: RemoteProtocol | socket.socket
    bound: Address  # this proxy's end of the outbound connection
    bound_text: str
    peer_text: str

    def close(self) -> None:
        """Close it (the session went away meanwhile)."""
        if isinstance(self.end, socket.socket):
            self.end.close()
        else:
            assert self.end.transport is not None
            self.end.transport.loseConnection()


def connect(
    reactor: Any,
    client: Any,
    ips: Sequence[IPAddress],
    port: int,
    timeout: float,
    name: str,
    outgoing: Mapping[int, str],
    splice_on: bool,
) -> defer.Deferred[Remote]:
    """
    Connect to C{port} on one of C{ips} (resolved and checked already), as
    the tunnel will need it: a bare socket when it will splice (one address
    only: a socket connects to one), else a Twisted transport.
    """
    if len(ips) == 1 and will_splice(splice_on, client):
        ip = ips[0]

        def connected(sock: socket.socket) -> Remote:
            local = sock.getsockname()
            bound = Address.for_ip(local[0], local[1])
            # (A connected socket's peer is the address it was connected
            # to: no getpeername() to learn it again.)
            peer = show(Address.for_ip(ip_text(ip), port))
            return Remote(sock, bound, show(bound), peer)

        sock = connect_socket(reactor, ip, port, timeout, bind=outgoing.get(ip.version))
        return sock.addCallback(connected)

    def protocol_connected(remote: Any) -> Remote:
        assert isinstance(remote, RemoteProtocol) and remote.transport is not None
        host = remote.transport.getHost()
        bound = Address.for_ip(host.host, host.port)  # type: ignore[attr-defined]
        return Remote(remote, bound, show(bound), describe(remote.transport.getPeer()))

    d = outbound.connect(reactor, ips, port, _OUTBOUND_FACTORY, timeout, name=name, bind=outgoing)
    return d.addCallback(protocol_connected)


def join(
    reactor: Any,
    client: Any,
    remote: RemoteProtocol | socket.socket,
    reply: bytes,
    early: bytes,
    splice_on: bool,
    idle_timeout: float,
    on_idle: Callable[[], None],
    shaping: Shaping | None = None,
    drain_timeout: float = 0.0,
    on_drain: Callable[[Side], None] | None = None,
) -> Relay:
    """
    The relay between the client's transport and C{remote} (a protocol, or
    a bare socket from L{connect}), not started yet; C{reply} (the success
    reply) goes to the client first, and the splice relay sends C{early}
    (what the client sent after its request) on as it starts.  Either
    relay keeps to C{shaping}'s budgets (C{None}: no [[limit]] to keep),
    and resets a tunnel one side of which has closed once what is left for
    the other has not moved for C{drain_timeout} seconds (0: never), calling
    C{on_drain} with the side that stopped reading.
    """
    protocol: RemoteProtocol | None
    if isinstance(remote, socket.socket):
        # Chosen to splice when it was connected (see L{connect}).  Only if
        # the client's transport has since got something of its own unsent
        # can it not: the socket then becomes a transport for the stream relay.
        splicing = splice.can_splice(client)
        protocol = None if splicing else adopt(reactor, remote)
    else:
        protocol = remote
        splicing = will_splice(splice_on, client, remote.transport)
    relay: Relay
    if splicing:
        relay = SpliceRelay(
            reactor,
            client,
            remote if protocol is None else protocol.transport,  # type: ignore[arg-type]
            to_client=reply,
            to_remote=early,
            idle_timeout=idle_timeout,
            on_idle=on_idle,
            shaping=shaping,
            drain_timeout=drain_timeout,
            on_drain=on_drain,
        )
    else:
        assert protocol is not None
        client.write(reply)
        relay = StreamRelay(
            reactor,
            client,
            protocol.transport,  # type: ignore[arg-type]
            idle_timeout=idle_timeout,
            on_idle=on_idle,
            shaping=shaping,
            drain_timeout=drain_timeout,
            on_drain=on_drain,
        )
    if protocol is not None:
        protocol.relay = relay
    return relay


def start(relay: Relay, client: Any, early: bytes, client_eof: bool) -> None:
    """
    Start C{relay}.  The stream relay is passed C{early} (what the client
    sent after its request; the splice relay had it from L{join}) and an EOF
    the client sent meanwhile, and reading from the client, paused while the
    request was under way, goes on.  (The splice relay reads the client's
    socket itself, EOF included.)
    """
    if isinstance(relay, SpliceRelay):
        relay.start()
        return
    assert isinstance(relay, StreamRelay)  # the only other kind
    relay.start()
    if early:
        relay.from_client(early)
    if client_eof:
        relay.eof()
    else:
        client.resumeProducing()


def adopt(reactor: Any, sock: socket.socket) -> RemoteProtocol:
    """A connected socket as a Twisted transport with a L{RemoteProtocol}."""
    remote = RemoteProtocol()
    factory = Factory.forProtocol(lambda: remote)
    factory.noisy = False
    # The reactor takes a duplicate of the descriptor; this one is closed.
    reactor.adoptStreamConnection(sock.fileno(), sock.family, factory)
    sock.close()
    return remote
