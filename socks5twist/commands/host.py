"""
How a session does what its command may do: L{CommandHost}, the session's
side of L{socks5twist.commands.context.Context}, kept apart from the
session's own concerns (its connection's bytes and events, its lifecycle)
and mixed into L{socks5twist.session.SOCKS5ServerProtocol}.

Each of these answers through the one place that decides it: the gate
(L{socks5twist.gate}) for rules and limits, the connection
(L{socks5twist.connection}) for the bytes of a reply and the state they
move, the tunnel (L{socks5twist.tunnel}) for the relay.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from .. import tunnel
from ..addresses import Address, IPAddress
from ..codec import Command, Reply
from ..connection import ServerConnection
from ..gate import Refusal, Slot
from ..gsstransport import ProtectedTransport
from ..logsafe import field
from ..policy import ip_of, show
from ..relay import RemoteProtocol, Side, send_now
from ..ruleset import COMMAND_NAMES, Decision, Query
from ..shaping import Shaping
from ..tunnel import Relay

if TYPE_CHECKING:
    from ..factory import SOCKS5ServerFactory

__all__ = ["CommandHost"]


class CommandHost:
    """
    The session as its command's context (see the module docstring).  The
    attributes below are the session's; only its command writes C{bound},
    C{connected_to} and C{udp}, for the record.
    """

    # (No __slots__ of its own: Twisted's Protocol, the session's other
    # base, has none either.)
    log: Logger
    factory: SOCKS5ServerFactory
    transport: Any
    connection: ServerConnection
    client_ip: IPAddress | None
    client_text: str
    user: str | None
    command: Command | None
    destination: Address | None
    relay: Relay | None
    shaping: Shaping | None
    replies: list[int]
    outcome: str
    _pending: defer.Deferred[Any] | None

    if TYPE_CHECKING:

        def close(self, outcome: str) -> None: ...

    def _reply(self, code: int, wire: bytes) -> None:
        """Send a reply the connection built, noting its code for the record."""
        self.replies.append(code)
        send_now(self.transport, wire)

    def fail(self, reply: Reply, outcome: str) -> None:
        """Send a failure reply and close."""
        self._reply(reply, self.connection.reply(reply))
        self.close(outcome)

    # -- what a command may do ---------------------------------------------------

    @property
    def config(self) -> SOCKS5ServerFactory:
        return self.factory

    def decide(self, ip: IPAddress | None, port: int | None, name: str | None) -> Decision | None:
        """What the rules say about this session's command to a destination."""
        assert self.command is not None
        query = Query(
            client=self.client_ip,
            user=self.user,
            command=COMMAND_NAMES[self.command],
            port=port,
            name=name,
            address=ip,
        )
        return self.factory.gate.decide(query)

    def deny(self, decision: Decision) -> None:
        self.log.info(
            "denied {command} {destination} for {client} user={user} by rule {rule}",
            command=self.command.name if self.command else "-",
            destination=show(self.destination),
            client=self.client_text,
            user=field(self.user),
            rule=decision.label,
        )
        self.factory.gate.denied(decision)
        self.fail(Reply.NOT_ALLOWED, f"denied by rule {decision.label}")

    def count_denial(self, decision: Decision) -> None:
        """A BIND peer or a datagram was refused by C{decision}."""
        self.factory.gate.denied(decision)

    def admit_udp(self, client: IPAddress) -> Slot | Refusal:
        """A place under C{--max-udp-per-client} for an association of C{client}."""
        return self.factory.gate.admit_udp(client, self.client_text)

    def wait_for(self, d: defer.Deferred[Any]) -> None:
        self._pending = d

    def waited(self) -> None:
        self._pending = None

    def reply_listening(self, address: Address) -> None:
        self._reply(Reply.SUCCEEDED, self.connection.bind_listening(address))

    def reply_associated(self, address: Address) -> None:
        self._reply(Reply.SUCCEEDED, self.connection.reply(Reply.SUCCEEDED, address))
        # The control connection carries nothing more: drop what came early.
        self.connection.take_data()

    def local_ip(self) -> IPAddress | None:
        """
        The IP of this proxy that the client reached, which is where BIND
        listens: read from the socket itself, not from a PROXY header.
        """
        transport = self.transport
        while isinstance(transport, (ProtocolWrapper, ProtectedTransport)):
            transport = transport.transport
        return ip_of(transport.getHost())

    def unexpected(self, failure: Failure, phase: str) -> None:
        """A bug in our own callbacks: log it and close, never leave a hang."""
        self.log.failure("unexpected error during {phase}", failure, phase=phase)
        self.close(f"internal error during {phase}")

    # -- the tunnel --------------------------------------------------------------

    def open_tunnel(self, remote: RemoteProtocol | socket.socket, bound: Address) -> None:
        """
        Send the success reply naming C{bound} and join the client and
        C{remote}, passing on what the client sent early (see L{tunnel.join}).
        """
        factory = self.factory
        # The connection opens: the success reply, and what the client sent
        # after its request, are the tunnel's now.
        reply = self.connection.reply(Reply.SUCCEEDED, bound)
        early = self.connection.take_data()
        relay = tunnel.join(
            factory.reactor,
            self.transport,
            remote,
            reply=reply,
            early=early,
            splice_on=factory.splice,
            idle_timeout=factory.idle_timeout,
            on_idle=self._idle,
            shaping=self.shaping,
            drain_timeout=factory.drain_timeout,
            on_drain=self._drained,
        )
        self.replies.append(Reply.SUCCEEDED)
        self.relay = relay
        tunnel.start(relay, self.transport, early, self.connection.client_eof)

    def _idle(self) -> None:
        self.outcome = "idle timeout"

    def _drained(self, side: Side) -> None:
        # (A close already under way keeps its own outcome.)
        if side is Side.CLIENT:
            stopped = "client stopped reading after the destination closed"
        else:
            stopped = "destination stopped reading after the client closed"
        self.outcome = self.outcome or stopped
