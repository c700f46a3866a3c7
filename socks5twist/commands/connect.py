"""
CONNECT: reach the destination, with only the addresses the rules allow.

A name is resolved once; every address it resolves to is checked, and only
the allowed ones are connected to (no second lookup that could answer
differently).  How the destination is reached (a bare socket for a tunnel
that will splice, or a Twisted transport) is L{socks5twist.tunnel}'s choice.
"""

from __future__ import annotations

from twisted.python.failure import Failure

from .. import outbound, tunnel
from ..addresses import Address, IPAddress, literal_ip
from ..logsafe import why
from ..states import State
from .context import Context, admitted, resolve_allowed


class Connect:
    """One CONNECT request's way to its destination."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def start(self, address: Address) -> None:
        ctx = self.ctx
        ip = literal_ip(address)
        if ip is not None:
            if admitted(ctx, ip, address.port, None):
                self._connect_to([ip], "")
        elif admitted(ctx, None, address.port, address.host):
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
        d = tunnel.connect(
            config.reactor,
            ctx.transport,
            ips,
            ctx.destination.port,
            config.connect_timeout,
            name=name,
            outgoing=config.outgoing,
            splice_on=config.splice,
        )
        ctx.wait_for(d)
        d.addCallbacks(self._connected, self._failed)
        d.addErrback(ctx.unexpected, "connect")

    def _connected(self, remote: tunnel.Remote) -> None:
        ctx = self.ctx
        ctx.waited()
        if ctx.state is not State.CONNECTING:
            remote.close()
            return
        ctx.bound = remote.bound_text
        ctx.connected_to = remote.peer_text
        ctx.open_tunnel(remote.end, remote.bound)

    def _failed(self, failure: Failure) -> None:
        ctx = self.ctx
        ctx.waited()
        if ctx.state is not State.CONNECTING:
            return  # cancelled because the client left
        reply = outbound.reply_for_failure(failure)
        ctx.fail(reply, f"connect failed: {why(failure)}")
