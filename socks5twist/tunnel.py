"""
The tunnel hand-over: once a request succeeded, join the client and the
destination with the splice relay where both ends allow it, else with the
stream relay, and pass on what the client sent early.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import Factory

from . import splice
from .relay import RemoteProtocol, Side, StreamRelay
from .splice import SpliceRelay

__all__ = ["Relay", "adopt", "join", "start"]

Relay = StreamRelay | SpliceRelay


def join(
    reactor: Any,
    client: Any,
    remote: RemoteProtocol | socket.socket,
    reply: bytes,
    early: bytes,
    splice_on: bool,
    idle_timeout: float,
    on_idle: Callable[[], None],
) -> Relay:
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
        relay: Relay = SpliceRelay(
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
