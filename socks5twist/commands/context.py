"""
What a command may do: the narrow context a session gives its command.

A command (CONNECT, BIND, UDP ASSOCIATE) never reaches into the session or
the factory: it asks the gate (L{Context.decide}, L{Context.admit_udp}),
replies or fails, waits on a Deferred the session may cancel, opens the
tunnel, and notes what the session's record shows (C{bound},
C{connected_to}).  Its replies move the session's state (see
L{socks5twist.states}); it only reads it.  L{Config} lists the settings a
command reads.  The session implements L{Context} (in
L{socks5twist.commands.host}) and hands out its factory as the L{Config};
tests may hand in fakes of either.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IHostnameResolver
from twisted.python.failure import Failure

from .. import outbound
from ..addresses import Address, IPAddress
from ..codec import Reply
from ..ruleset import Decision
from ..states import State

if TYPE_CHECKING:
    from ..gate import Refusal, Slot
    from ..gss import Protector
    from ..relay import RemoteProtocol
    from ..shaping import Shaping
    from ..udp import UDPAssociation
    from ..upstream import Upstreams


class Config(Protocol):
    """The settings a command reads."""

    @property
    def reactor(self) -> Any: ...

    @property
    def connect_timeout(self) -> float: ...

    @property
    def idle_timeout(self) -> float: ...

    @property
    def bind_timeout(self) -> float: ...

    @property
    def splice(self) -> bool: ...

    @property
    def outgoing(self) -> Mapping[int, str]: ...

    @property
    def external_address(self) -> str | None: ...

    @property
    def udp_interface(self) -> IPAddress | None: ...

    @property
    def udp_any_source(self) -> bool: ...

    @property
    def resolver(self) -> IHostnameResolver: ...

    @property
    def upstreams(self) -> Upstreams: ...


class Context(Protocol):
    """What a command may do with its session."""

    transport: Any  # the client's
    destination: Address | None
    client_ip: IPAddress | None
    client_text: str
    user: str | None
    bound: str | None
    route: str | None  # how the tunnel left, for the record (None: directly)
    connected_to: str | None
    outcome: str
    udp: UDPAssociation | None
    shaping: Shaping | None  # the budgets of the session's [[limit]], if any
    protector: Protector | None  # GSSAPI integrity or confidentiality: wraps datagrams

    @property
    def config(self) -> Config: ...

    @property
    def state(self) -> State: ...

    def decide(self, ip: IPAddress | None, port: int | None, name: str | None) -> Decision | None:
        """What the rules say about the destination (C{None}: resolve, ask again)."""

    def deny(self, decision: Decision) -> None:
        """Refuse the request by this decision: X'02', one line, close."""

    def count_denial(self, decision: Decision) -> None:
        """A BIND peer or a datagram was refused by C{decision} (logged by the command)."""

    def admit_udp(self, client: IPAddress) -> Slot | Refusal:
        """A place under the limit of UDP associations per client (logged if refused)."""

    def fail(self, reply: Reply, outcome: str) -> None:
        """Send a failure reply and close."""

    def close(self, outcome: str) -> None:
        """Close the session."""

    def wait_for(self, d: defer.Deferred[Any]) -> None:
        """Note a Deferred the session cancels if the client leaves."""

    def waited(self) -> None:
        """The Deferred of L{wait_for} has fired."""

    def reply_listening(self, address: Address) -> None:
        """BIND's first reply: listening at C{address}."""

    def reply_associated(self, address: Address) -> None:
        """UDP ASSOCIATE's reply: the relay is at C{address}."""

    def open_tunnel(self, remote: RemoteProtocol | socket.socket, bound: Address) -> None:
        """Send the success reply naming C{bound} and relay to C{remote}."""

    def local_ip(self) -> IPAddress | None:
        """The address of this proxy the client reached (the socket's own)."""

    def unexpected(self, failure: Failure, phase: str) -> None:
        """A bug in a command's callback: log it and close."""


def resolve_allowed(
    ctx: Context,
    then: Callable[[list[IPAddress], dict[IPAddress, Decision]], None],
    failed: Callable[[Failure], None],
    phase: str,
) -> None:
    """
    Resolve the destination's name, keep the addresses the rules allow, and
    go on with those (C{then}, given the decision on every address the name
    resolved to), or deny the request if none is left.  The session's state
    must not change meanwhile, or the result is dropped.
    """
    assert ctx.destination is not None
    name, port, state = ctx.destination.host, ctx.destination.port, ctx.state

    def resolved(ips: list[IPAddress]) -> None:
        ctx.waited()
        if ctx.state is not state:
            return
        allowed, denial, decisions = [], None, {}
        for ip in ips:
            decision = ctx.decide(ip, port, name)
            assert decision is not None  # the address is known now
            decisions[ip] = decision
            if decision.allowed:
                allowed.append(ip)
            elif denial is None:
                denial = decision
        if not allowed:
            assert denial is not None
            ctx.deny(denial)
            return
        then(allowed, decisions)

    config = ctx.config
    d = outbound.resolve(config.reactor, name, config.connect_timeout, config.resolver)
    ctx.wait_for(d)
    d.addCallbacks(resolved, failed)
    d.addErrback(ctx.unexpected, phase)


def wildcard_for(address: str | None) -> str:
    """The any-address of C{address}'s family."""
    if address is not None and ipaddress.ip_address(address).version == 6:
        return "::"
    return "0.0.0.0"
