"""
How a session's request is admitted before its command runs:
L{RequestAdmission}, mixed into L{socks5twist.session.SOCKS5ServerProtocol}
beside L{socks5twist.commands.host.CommandHost}.

In order, each a yes or a refusal that ends the session with its reply:
the per-user limit (the gate's C{admit_request}); the request's C{[[limit]]}
(C{admit_limit}: C{disabled}, its local C{sessions} count); with a fleet's
store, the fleet's C{sessions} count (asked of the store's thread: the
request waits for a Deferred, the reactor never for Redis); then the
session's bandwidth budgets, the quota and accounting from this request on
(C{factory.account_request}); and only then the command
(L{socks5twist.commands}), which asks the rules.  The places taken are the
session's C{held} slots, released once when it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.python.failure import Failure

from .addresses import Address, IPAddress
from .codec import Command, Reply
from .commands import COMMANDS, Handler
from .connection import CommandRequested
from .gate import Refusal, Slot
from .limits import Limit
from .shaping import Shaping

if TYPE_CHECKING:
    from .accounting.fleet import FleetRefusal
    from .factory import SOCKS5ServerFactory
    from .session import SOCKS5ServerProtocol

__all__ = ["RequestAdmission"]


class RequestAdmission:
    """The session's admission of its request (see the module docstring)."""

    factory: SOCKS5ServerFactory
    client_ip: IPAddress | None
    client_text: str
    user: str | None
    command: Command | None
    destination: Address | None
    handler: Handler | None
    held: tuple[Slot, ...]
    limit: Limit | None
    shaping: Shaping | None
    _pending: defer.Deferred[Any] | None

    if TYPE_CHECKING:

        @property
        def command_label(self) -> str: ...

        def fail(self, reply: Reply, outcome: str) -> None: ...

        def unexpected(self, failure: Failure, phase: str) -> None: ...

    @property
    def _session(self) -> SOCKS5ServerProtocol:
        """This mixin is always a session's (for the type checker)."""
        return cast("SOCKS5ServerProtocol", self)

    def _request(self, request: CommandRequested) -> None:
        self.command = request.command
        self.destination = request.address
        factory, session = self.factory, self._session
        factory.handshakes.remove(session)
        factory.request_received(session)
        admitted = factory.gate.admit_request(self.user, request.command.name, self.client_text)
        if isinstance(admitted, Refusal):
            self.fail(Reply.NOT_ALLOWED, admitted.outcome)
            return
        self.held += (admitted,)
        if not self._place_under_limit():
            return
        # A fleet's session limit is asked of the store's thread: the
        # request waits for the answer (the connection, in REPLYING, keeps
        # what the client pipelines within its bound meanwhile).
        asking = factory.fleet_admit(session)
        if asking is None:
            self._start_command()
            return
        self._pending = asking
        asking.addCallbacks(self._fleet_answered, _unless_cancelled)
        asking.addErrback(self.unexpected, "the fleet's session limit")

    def _fleet_answered(self, refusal: FleetRefusal | None) -> None:
        self._pending = None
        if refusal is not None:
            self.fail(refusal.reply, refusal.outcome)
            return
        self._start_command()

    def _start_command(self) -> None:
        """The request is admitted by every limit: its quota, then its command."""
        factory = self.factory
        self.shaping = factory.shaping_for(self.limit, self.client_ip, self.user)
        refused = factory.account_request(self._session)  # the quota, and counting from now
        if refused is not None:
            self.fail(refused.reply, refused.outcome)
            return
        assert self.command is not None and self.destination is not None
        # The command checks the rules as far as they can decide before any
        # name is resolved (what it knows of its destination differs).
        self.handler = COMMANDS[self.command](self._session)
        self.handler.start(self.destination)

    def _place_under_limit(self) -> bool:
        """
        Find the request's C{[[limit]]} (the gate's), and take its place
        under its local count; or refuse the request (X'02').  Whether it
        goes on.
        """
        factory = self.factory
        placed = factory.gate.admit_limit(
            self.client_ip, self.user, self.command_label, self.client_text
        )
        if isinstance(placed, Refusal):
            self.fail(Reply.NOT_ALLOWED, placed.outcome)
            return False
        self.limit, slot = placed
        self.held += (slot,)
        return True


def _unless_cancelled(failure: Failure) -> Failure | None:
    """A wait the session cancelled (its client left) is no error."""
    failure.trap(defer.CancelledError)
    return None
