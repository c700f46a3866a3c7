"""
CONNECT: reach the destination, with only the addresses the rules allow.

A name is resolved once; every address it resolves to is checked, and only
the allowed ones are connected to (no second lookup that could answer
differently).  A tunnel that will splice needs only a bare socket for its
destination (L{outbound.connect_socket}); any other gets a Twisted transport.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from .. import outbound, splice
from ..codec import Address, ip_text
from ..policy import IPAddress, describe, show
from ..relay import RemoteProtocol
from ..states import State
from .context import Context, resolve_allowed, why

_OUTBOUND_FACTORY = Factory.forProtocol(RemoteProtocol)
_OUTBOUND_FACTORY.noisy = False


class Connect:
    """One CONNECT request's way to its destination."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def start(self, address: Address) -> None:
        ctx = self.ctx
        ctx.enter(State.CONNECTING)
        ip = outbound.literal_ip(address)
        if ip is not None:
            self._connect_to([ip], "")
        else:
            resolve_allowed(
                ctx, lambda ips: self._connect_to(ips, address.host), self._failed, "connect"
            )
        if ctx.state is State.CONNECTING:
            # Read nothing more from the client until the tunnel opens.  (A
            # destination on this machine may already be connected, and the
            # tunnel open: then there is nothing to pause.)
            ctx.transport.pauseProducing()

    def stop(self) -> None:
        """Nothing of its own to stop: the session cancels what it waits for."""

    def _connect_to(self, ips: list[IPAddress], name: str) -> None:
        ctx, config = self.ctx, self.ctx.config
        assert ctx.destination is not None
        port = ctx.destination.port
        if len(ips) == 1 and config.splice and splice.can_splice(ctx.transport):
            # The tunnel will splice: the destination needs only a socket.
            sock = outbound.connect_socket(
                config.reactor,
                ips[0],
                port,
                config.connect_timeout,
                bind=config.outgoing.get(ips[0].version),
            )
            ctx.wait_for(sock)
            sock.addCallbacks(self._socket_connected, self._failed, callbackArgs=(ips[0],))
            sock.addErrback(ctx.unexpected, "connect")
            return
        d = outbound.connect(
            config.reactor,
            ips,
            port,
            _OUTBOUND_FACTORY,
            config.connect_timeout,
            name=name,
            bind=config.outgoing,
        )
        ctx.wait_for(d)
        d.addCallbacks(self._connected, self._failed)
        d.addErrback(ctx.unexpected, "connect")

    def _connected(self, remote: Any) -> None:
        ctx = self.ctx
        ctx.waited()
        assert isinstance(remote, RemoteProtocol) and remote.transport is not None
        if ctx.state is not State.CONNECTING:
            remote.transport.loseConnection()
            return
        host = remote.transport.getHost()
        bound = Address.for_ip(host.host, host.port)  # type: ignore[attr-defined]
        ctx.bound = show(bound)
        ctx.connected_to = describe(remote.transport.getPeer())
        ctx.open_tunnel(remote, bound)

    def _socket_connected(self, sock: socket.socket, ip: IPAddress) -> None:
        ctx = self.ctx
        ctx.waited()
        if ctx.state is not State.CONNECTING:
            sock.close()
            return
        assert ctx.destination is not None
        local = sock.getsockname()
        bound = Address.for_ip(local[0], local[1])
        ctx.bound = show(bound)
        # (A connected socket's peer is the address it was connected to:
        # no getpeername() to learn it again.)
        ctx.connected_to = show(Address.for_ip(ip_text(ip), ctx.destination.port))
        ctx.open_tunnel(sock, bound)

    def _failed(self, failure: Failure) -> None:
        ctx = self.ctx
        ctx.waited()
        if ctx.state is not State.CONNECTING:
            return  # cancelled because the client left
        reply = outbound.reply_for_failure(failure)
        ctx.fail(reply, f"connect failed: {why(failure)}")
