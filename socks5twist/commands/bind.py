"""
BIND (RFC 1928 section 4): listen for the one peer the client names, then
relay to it.

DST.ADDR names the peer: an IP accepts only that IP, a name any of the
addresses it resolves to (that the rules allow), and 0.0.0.0 or :: (which
some clients send) any peer.  DST.PORT is not checked: clients commonly send
0, or a port the peer will not connect from.  The peer that connects is
checked again, by its address and by the name the request gave.  A rule
with upstream proxies has the last of them listen instead
(L{socks5twist.commands.upstreambind}).
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..addresses import Address, AddressType, IPAddress, literal_ip
from ..bindlistener import BindWaiter
from ..codec import Reply
from ..logs import seconds
from ..logsafe import why
from ..policy import describe, ip_of, show
from ..relay import RemoteProtocol
from ..ruleset import Decision
from ..states import State
from .context import Context, resolve_allowed, wildcard_for
from .upstreambind import UpstreamBind

log = Logger()


class Bind:
    """One BIND request: its listener and its two replies."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.waiter: BindWaiter | None = None
        self.upstream: UpstreamBind | None = None  # through a rule's upstream proxies

    def start(self, address: Address) -> None:
        ip = literal_ip(address)
        if ip is None or ip.is_unspecified:
            # The peer is known only when it connects (then it is checked).
            decision = self.ctx.decide(None, None, None)
        else:
            decision = self.ctx.decide(ip, address.port, None)
        if decision is not None and not decision.allowed:
            self.ctx.deny(decision)
            return
        if decision is not None and self._routed(decision):
            return
        if ip is not None:
            self._listen(None if ip.is_unspecified else frozenset({ip}))
            return
        resolve_allowed(self.ctx, self._resolved, self._unresolved, "bind")

    def _resolved(self, ips: list[IPAddress], decisions: dict[IPAddress, Decision]) -> None:
        if decisions[ips[0]].upstream:
            self.ctx.waited()
            if self.ctx.state is State.BINDING:
                self._routed(decisions[ips[0]])
            return
        self._listen(frozenset(ips))

    def _routed(self, decision: Decision) -> bool:
        """
        Whether the deciding rule sends requests through upstream proxies;
        if so, the last of them listens (L{UpstreamBind}), not this proxy.
        """
        if not decision.upstream:
            return False
        assert decision.route is not None
        self.upstream = UpstreamBind(self.ctx, decision, decision.route)
        self.upstream.start()
        return True

    def stop(self) -> None:
        """Stop listening (the session closes)."""
        if self.upstream is not None:
            self.upstream.stop()
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.stop()

    def _admit(self, peer: IAddress) -> bool:
        """
        Whether the rules let this peer in: checked as the address it
        connects from and, if the request named the peer, by that name.
        """
        ctx = self.ctx
        ip = ip_of(peer)
        if ip is None:
            return False
        assert ctx.destination is not None
        name = ctx.destination.host if ctx.destination.type is AddressType.DOMAIN else None
        decision = ctx.decide(ip, getattr(peer, "port", 0), name)
        assert decision is not None
        if not decision.allowed:
            log.info(
                "BIND peer {peer} for {client} denied by rule {rule}",
                peer=describe(peer),
                client=ctx.client_text,
                rule=decision.label,
            )
            ctx.count_denial(decision)
        return decision.allowed

    def _unresolved(self, failure: Failure) -> None:
        self.ctx.waited()
        if self.ctx.state is State.BINDING:
            self.ctx.fail(Reply.HOST_UNREACHABLE, f"BIND peer name: {why(failure)}")

    def _listen(self, allowed: frozenset[IPAddress] | None) -> None:
        ctx, config = self.ctx, self.ctx.config
        ctx.waited()
        if ctx.state is not State.BINDING:
            return
        local = ctx.local_ip()
        external = config.external_address
        if local is None and external is None:
            log.warn(
                "BIND from {client}: the control connection has no IP address "
                "(a Unix socket?); set --external-address to allow BIND here",
                client=ctx.client_text,
            )
            ctx.fail(Reply.GENERAL_FAILURE, "BIND needs an IP address to listen on")
            return
        if local is not None:
            interface = config.outgoing.get(local.version, str(local))
        else:
            interface = wildcard_for(external)
        self.waiter = BindWaiter(
            config.reactor,
            interface,
            allowed,
            config.bind_timeout,
            self._peer_connected,
            self._timed_out,
            admit=self._admit,
        )
        try:
            host = self.waiter.listen()
        except Exception as e:
            self.waiter = None
            log.warn("BIND could not listen on {interface}: {e}", interface=interface, e=e)
            ctx.fail(Reply.GENERAL_FAILURE, f"BIND listen failed: {e}")
            return
        ctx.bound = show(Address.for_ip(interface, host.port))  # type: ignore[attr-defined]
        ctx.reply_listening(Address.for_ip(external or interface, host.port))  # type: ignore[attr-defined]

    def _peer_connected(self, remote: RemoteProtocol) -> None:
        ctx = self.ctx
        assert remote.transport is not None
        self.waiter = None
        if ctx.state is not State.BINDING:
            remote.transport.loseConnection()
            return
        peer = remote.transport.getPeer()
        ctx.connected_to = describe(peer)
        ctx.open_tunnel(remote, Address.for_ip(peer.host, peer.port))  # type: ignore[attr-defined]

    def _timed_out(self) -> None:
        self.waiter = None
        if self.ctx.state is State.BINDING:
            self.ctx.fail(
                Reply.HOST_UNREACHABLE,
                f"no BIND peer within {seconds(self.ctx.config.bind_timeout)}",
            )
