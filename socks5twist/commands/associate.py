"""
UDP ASSOCIATE (RFC 1928 section 7): open the datagram relay for this client.

The relay's client-facing port is opened on the address the client reached
(or C{--udp-interface}) and named in the reply; the association lives as long
as the control connection.  Each destination a datagram goes to is checked by
the rules when the association first sends there (see L{socks5twist.udp}).
The request's DST.ADDR and DST.PORT fix which port of the client's IP (as
this connection shows it) the relay takes datagrams from; behind NAT they
name an address the proxy never sees, and the first datagram's port is
taken instead (L{socks5twist.udp.lock_for}).
"""

from __future__ import annotations

from twisted.logger import Logger

from ..addresses import Address, IPAddress
from ..codec import Reply
from ..gate import UNLIMITED, Refusal
from ..policy import show
from ..udp import UDPAssociation
from .context import Context, wildcard_for

log = Logger()


class Associate:
    """One UDP ASSOCIATE request and the association it holds."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.association: UDPAssociation | None = None
        self._slot = UNLIMITED  # under --max-udp-per-client, while the association lives

    def start(self, expected: Address) -> None:
        ctx, config = self.ctx, self.ctx.config
        decision = ctx.decide(None, None, None)  # each destination is checked later
        if decision is not None and not decision.allowed:
            ctx.deny(decision)
            return
        if decision is not None and decision.upstream:
            log.info(
                "UDP ASSOCIATE from {client} refused: rule {rule} sends requests through"
                " upstream proxies, and UDP through them is not supported",
                client=ctx.client_text,
                rule=decision.label,
            )
            ctx.fail(Reply.COMMAND_NOT_SUPPORTED, "UDP through upstream proxies is not supported")
            return
        client_ip = ctx.client_ip
        if client_ip is None:
            ctx.fail(Reply.GENERAL_FAILURE, "UDP ASSOCIATE needs a client with an IP address")
            return
        slot = ctx.admit_udp(client_ip)
        if isinstance(slot, Refusal):
            ctx.fail(Reply.NOT_ALLOWED, slot.outcome)
            return
        self._slot = slot
        local_ip = config.udp_interface or ctx.local_ip()
        local = str(local_ip) if local_ip is not None else wildcard_for(str(client_ip))
        association = UDPAssociation(
            config.reactor,
            client_ip,
            expected,
            local,
            any_source=config.udp_any_source,
            idle_timeout=config.idle_timeout,
            on_idle=self._idle,
            resolve_timeout=config.connect_timeout or 10.0,
            resolver=config.resolver,
            check=self._allowed,
            outgoing=config.outgoing,
            shaping=ctx.shaping,
            protector=ctx.protector,
        )
        try:
            host = association.open()
        except Exception as e:
            slot.release()
            log.warn("UDP ASSOCIATE could not listen on {local}: {e}", local=local, e=e)
            ctx.fail(Reply.GENERAL_FAILURE, f"UDP listen failed: {e}")
            return
        self.association = ctx.udp = association
        port = host.port  # type: ignore[attr-defined]
        ctx.bound = show(Address.for_ip(local, port))
        ctx.reply_associated(Address.for_ip(config.external_address or local, port))

    def stop(self) -> None:
        """Close every socket of the association (the session closes)."""
        association = self.association
        if association is not None and not association.closed:
            association.close()
            self._slot.release()

    def _allowed(self, ip: IPAddress | None, port: int, name: str | None) -> bool | None:
        """
        Whether the rules let a datagram go to C{ip} (or to C{name}, before
        it is resolved: C{None} means "resolve and ask again").
        """
        decision = self.ctx.decide(ip, port, name)
        if decision is None:
            return None
        if decision.allowed and decision.upstream:
            # A rule with upstream proxies: its datagrams cannot go that way.
            return False
        if not decision.allowed:
            self.ctx.count_denial(decision)
        return decision.allowed

    def _idle(self) -> None:
        self.ctx.close("idle timeout")
