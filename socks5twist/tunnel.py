"""
The tunnel hand-over: once a request succeeded, join the client and the
destination with the splice relay where both ends allow it, else with the
stream relay, and pass on what the client sent early.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.protocol import Factory

from . import splice
from .relay import RemoteProtocol, Side, StreamRelay
from .splice import SpliceRelay

__all__ = ["Relay", "adopt", "join", "start"]


class Relay(Protocol):
    """
    What the session and the factory need of a relay, whichever it is
    (L{StreamRelay} or L{SpliceRelay}).  (The stream relay is also fed the
    client's bytes by the session, as C{from_client} and C{eof}; the splice
    relay reads the client's socket itself.)
    """

    kind: str

    @property
    def up(self) -> int:
        """Bytes relayed from the client to the remote side."""

    @property
    def down(self) -> int:
        """Bytes relayed from the remote side to the client."""

    def close(self) -> None:
        """Close both sides, flushing what is buffered."""

    def abort(self) -> None:
        """Reset both sides at once."""

    def lost(self, side: Side) -> None:
        """C{side}'s connection is gone."""


def join(
    reactor: Any,
    client: Any,
    remote: RemoteProtocol | socket.socket,
    reply: bytes,
    early: bytes,
    splice_on: bool,
    idle_timeout: float,
    on_idle: Callable[[], None],
) -> StreamRelay | SpliceRelay:
    """
    The relay between the client's transport and C{remote} (a protocol, or
    a bare socket from L{socks5twist.outbound.connect_socket}), not started
    yet; C{reply} (the success reply) goes to the client first, and the
    splice relay sends C{early} (what the client sent after its request) on
    as it starts.  The choice between the two relays is made here, once.
    """
    remote_end = remote if isinstance(remote, socket.socket) else remote.transport
    if (
        splice_on
        and splice.can_splice(client)
        and (isinstance(remote_end, socket.socket) or splice.can_splice(remote_end))
    ):
        relay: StreamRelay | SpliceRelay = SpliceRelay(
            reactor,
            client,
            remote_end,  # type: ignore[arg-type]
            to_client=reply,
            to_remote=early,
            idle_timeout=idle_timeout,
            on_idle=on_idle,
        )
    else:
        if isinstance(remote, socket.socket):
            # Connected for splicing, but the client's transport can no
            # longer splice (something of its own is still unsent): the
            # socket becomes a Twisted transport for the stream relay.
            remote = adopt(reactor, remote)
        client.write(reply)
        relay = StreamRelay(
            reactor,
            client,
            remote.transport,  # type: ignore[arg-type]
            idle_timeout=idle_timeout,
            on_idle=on_idle,
        )
    if not isinstance(remote, socket.socket):
        remote.relay = relay
    return relay


def start(relay: StreamRelay | SpliceRelay, client: Any, early: bytes, client_eof: bool) -> None:
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
    relay.start()
    if early:
        relay.from_client(early)
    if client_eof:
        relay.eof(Side.CLIENT)
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
