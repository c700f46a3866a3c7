"""
BIND through a rule's upstream proxies: the last hop (a SOCKS5 proxy)
listens for the peer, not this one.

Its first reply (where the peer is to connect) is the client's first reply;
the failover of L{socks5twist.upstream} holds until then, and after it the
wait for the peer is bounded by C{--bind-timeout} as a direct BIND's is.
The peer the upstream's second reply names is checked by the rules as a
direct BIND's peer is (by its address, and by the name the request gave),
and must be the address the request named, if it named one; a peer refused
gets X'02' as the second reply.  An upstream's failure reply is passed on
with its code (X'07' from a proxy that does not do BIND); a route whose
chains all end with an HTTP proxy is answered X'07' at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import outbound, upstream
from ..codec import Address, AddressType, Reply
from ..logsafe import escape, why
from ..policy import show
from ..routes import Route, chain_label
from ..ruleset import Decision
from ..states import State
from .context import Context

log = Logger()


class UpstreamBind:
    """One BIND request made through C{decision}'s route."""

    def __init__(self, ctx: Context, decision: Decision, route: Route) -> None:
        self.ctx = ctx
        self.decision = decision
        self.route = route
        self._pending: defer.Deferred[upstream.Routed] | None = None
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        ctx, config = self.ctx, self.ctx.config
        assert ctx.destination is not None
        d = upstream.connect(
            config.reactor,
            config.upstreams,
            self.route,
            self.decision.label,
            ctx.destination.host,
            ctx.destination.port,
            config.connect_timeout or 30.0,
            config.outgoing,
            listening=self._listening,
            resolver=config.resolver,
        )
        self._pending = d
        ctx.wait_for(d)
        d.addCallbacks(self._peer, self._failed)
        d.addErrback(ctx.unexpected, "bind")

    def stop(self) -> None:
        """The session closes: stop waiting."""
        self._stop_timer()
        pending, self._pending = self._pending, None
        if pending is not None and not pending.called:
            pending.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _listening(self, address: Address) -> None:
        ctx, config = self.ctx, self.ctx.config
        if ctx.state is not State.BINDING:
            return
        ctx.bound = show(address)
        ctx.reply_listening(address)
        if config.bind_timeout > 0:
            self._timer = config.reactor.callLater(config.bind_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self.ctx.state is State.BINDING:
            # (Closing stops this, which cancels the wait upstream.)
            self.ctx.fail(
                Reply.HOST_UNREACHABLE,
                f"no BIND peer within {self.ctx.config.bind_timeout:g} seconds",
            )

    def _peer(self, routed: upstream.Routed) -> None:
        ctx = self.ctx
        ctx.waited()
        self._stop_timer()
        self._pending = None
        ctx.route = chain_label(routed.chain)
        transport: Any = routed.protocol.transport
        if ctx.state is not State.BINDING:
            transport.loseConnection()
            return
        peer = routed.bound
        refusal = self._refusal(peer)
        if refusal is not None:
            transport.loseConnection()
            ctx.fail(Reply.NOT_ALLOWED, refusal)
            return
        ctx.connected_to = show(peer)
        ctx.open_tunnel(routed.protocol, peer)

    def _refusal(self, peer: Address) -> str | None:
        """Why the peer the upstream reports may not be let in (C{None}: it may)."""
        ctx = self.ctx
        assert ctx.destination is not None
        ip = outbound.literal_ip(peer)
        if ip is None:
            return f"the upstream's BIND peer is no address: {escape(peer.host)}"
        asked = outbound.literal_ip(ctx.destination)
        if asked is not None and not asked.is_unspecified and asked != ip:
            return f"BIND peer {show(peer)} is not the one asked for"
        name = ctx.destination.host if ctx.destination.type is AddressType.DOMAIN else None
        decision = ctx.decide(ip, peer.port, name)
        assert decision is not None  # the address is known
        if decision.allowed:
            return None
        log.info(
            "BIND peer {peer} for {client} denied by rule {rule}",
            peer=show(peer),
            client=ctx.client_text,
            rule=decision.label,
        )
        ctx.count_denial(decision)
        return f"BIND peer denied by rule {decision.label}"

    def _failed(self, failure: Failure) -> None:
        ctx = self.ctx
        ctx.waited()
        self._stop_timer()
        self._pending = None
        if ctx.state is not State.BINDING or failure.check(defer.CancelledError):
            return
        exc = failure.value
        if isinstance(exc, upstream.Answered):
            ctx.route = chain_label(exc.chain)
            ctx.fail(exc.reply, f"BIND failed: {exc.why}")
        elif isinstance(exc, upstream.AllRoutesFailed):
            tried = exc.describe()
            log.warn(
                "BIND for {client}: every route of rule {rule} failed: {tried}",
                client=ctx.client_text,
                rule=self.decision.label,
                tried=tried,
            )
            ctx.route = "none"
            ctx.fail(Reply.GENERAL_FAILURE, f"every route failed: {tried}")
        else:
            ctx.fail(Reply.GENERAL_FAILURE, f"BIND failed: {why(failure)}")
