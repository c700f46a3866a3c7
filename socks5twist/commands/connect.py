"""
CONNECT: reach the destination, with only the addresses the rules allow,
the way the deciding rule says (directly, from its egress pool, or through
its upstream proxies).

A name is resolved once; every address it resolves to is checked, and only
the allowed ones are connected to (no second lookup that could answer
differently).  How the destination is reached (a bare socket for a tunnel
that will splice, or a Twisted transport) is L{socks5twist.tunnel}'s choice.

Through upstream proxies (L{socks5twist.upstream}) a name goes on
unresolved: when a rule about names decides, nothing is looked up here;
when a rule about addresses must decide, the name is resolved and checked
here as for a direct connection, and sent on only if every address it
resolved to was allowed by that same rule (else the first allowed address
is sent instead).  The last hop resolves the name again; that it leads to
the same addresses is as far as this proxy can see (the README's "names
are checked where they lead").
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import outbound, tunnel, upstream
from ..addresses import Address, IPAddress, ip_text, literal_ip
from ..codec import Reply
from ..logsafe import why
from ..policy import show
from ..routes import chain_label, egress_for
from ..ruleset import Decision
from ..states import State
from .context import Context, resolve_allowed

log = Logger()


class Connect:
    """One CONNECT request's way to its destination."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def start(self, address: Address) -> None:
        ctx = self.ctx
        ip = literal_ip(address)
        decision = ctx.decide(ip, address.port, None if ip is not None else address.host)
        if decision is not None and not decision.allowed:
            ctx.deny(decision)
        elif ip is not None:
            assert decision is not None  # the address is known
            self._go([ip], decision, "")
        elif decision is not None and decision.upstream:
            # A rule about names decided: the name goes on unresolved.
            self._through(decision, address.host)
        else:
            resolve_allowed(ctx, self._resolved, self._failed, "connect")
        if ctx.state is State.CONNECTING:
            # Read nothing more from the client until the tunnel opens.  (A
            # destination on this machine may already be connected, and the
            # tunnel open: then there is nothing to pause.)
            ctx.transport.pauseProducing()

    def stop(self) -> None:
        """Nothing of its own to stop: the session cancels what it waits for."""

    def _resolved(self, ips: list[IPAddress], decisions: dict[IPAddress, Decision]) -> None:
        assert self.ctx.destination is not None
        first = decisions[ips[0]]
        same = [ip for ip in ips if decisions[ip].route is first.route]
        if not first.upstream:
            self._go(same, first, self.ctx.destination.host)
        elif all(d.rule is first.rule for d in decisions.values()):
            self._through(first, self.ctx.destination.host)
        else:
            # Some address the name leads to is denied, or goes another way:
            # the upstream gets the one checked address, not the name.
            self._through(first, ip_text(ips[0]))

    def _go(self, ips: list[IPAddress], decision: Decision, name: str) -> None:
        ctx, config = self.ctx, self.ctx.config
        assert ctx.destination is not None
        route = decision.route
        if route is not None and route.upstream:
            self._through(decision, ip_text(ips[0]))
            return
        outgoing = config.outgoing
        if route is not None and route.egress:
            # One user (or client, without authentication) keeps one address.
            key = ctx.user if ctx.user is not None else str(ctx.client_ip)
            outgoing = {**outgoing, **egress_for(route.egress, key)}
            ctx.route = "egress"
            config.upstreams.tunnels[(decision.label, "egress")] += 1
        d = tunnel.connect(
            config.reactor,
            ctx.transport,
            ips,
            ctx.destination.port,
            config.connect_timeout,
            name=name,
            outgoing=outgoing,
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

    # -- through upstream proxies --------------------------------------------------

    def _through(self, decision: Decision, host: str) -> None:
        ctx, config = self.ctx, self.ctx.config
        assert ctx.destination is not None
        route = decision.route
        assert route is not None
        port = ctx.destination.port
        # (Canonical already: a name, or an address's text.)
        ctx.connected_to = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        d = upstream.connect(
            config.reactor,
            config.upstreams,
            route,
            decision.label,
            host,
            port,
            config.connect_timeout or 30.0,
            config.outgoing,
            resolver=config.resolver,
        )
        ctx.wait_for(d)
        d.addCallbacks(self._routed, self._route_failed, errbackArgs=(decision,))
        d.addErrback(ctx.unexpected, "connect")

    def _routed(self, routed: upstream.Routed) -> None:
        ctx = self.ctx
        ctx.waited()
        ctx.route = chain_label(routed.chain)
        if ctx.state is not State.CONNECTING:
            transport = routed.protocol.transport
            assert transport is not None
            transport.loseConnection()
            return
        ctx.bound = show(routed.bound)
        ctx.open_tunnel(routed.protocol, routed.bound)

    def _route_failed(self, failure: Failure, decision: Decision) -> None:
        ctx = self.ctx
        ctx.waited()
        if ctx.state is not State.CONNECTING or failure.check(defer.CancelledError):
            return  # cancelled because the client left
        exc = failure.value
        if isinstance(exc, upstream.Answered):
            # The destination's answer, through the last hop: its code, as it is.
            ctx.route = chain_label(exc.chain)
            ctx.fail(exc.reply, f"connect failed: {exc.why}")
            return
        if isinstance(exc, upstream.AllRoutesFailed):
            tried = exc.describe()
            log.warn(
                "CONNECT {destination} for {client}: every route of rule {rule} failed: {tried}",
                destination=show(ctx.destination),
                client=ctx.client_text,
                rule=decision.label,
                tried=tried,
            )
            ctx.route = "none"
            ctx.fail(Reply.GENERAL_FAILURE, f"every route failed: {tried}")
            return
        ctx.fail(Reply.GENERAL_FAILURE, f"connect failed: {why(failure)}")
