"""
The SOCKS5 session: one client connection, from greeting to relay.

The negotiation (greeting, authentication, request, replies) is the sans-I/O
L{socks5twist.connection.ServerConnection}'s: this protocol feeds it the
client's bytes, acts on its events and writes the bytes it builds.  The
connection's state is the session's one state: only the connection moves it
(by its one table), and L{SOCKS5ServerProtocol.state} names it as a session
sees it, with the command (L{socks5twist.states}).  Whether a client, a
login or a request may go on is the L{socks5twist.gate.Gate}'s to say; each
command is a module of L{socks5twist.commands}, and this protocol is the
narrow context they act through (L{socks5twist.commands.host}).

While the session waits on an outbound connection it pauses reading from
the client, so the bytes a client pipelines are kept in order but never pile
up beyond one read.  While the portal checks a login, and while a BIND waits
for its peer (which may take minutes), it keeps reading, so that a client
hanging up is seen at once (its password check is then cancelled); the
connection drops a client that sends more than
L{socks5twist.connection.MAX_PENDING} meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .addresses import Address, IPAddress
from .admission import RequestAdmission
from .auth import ISOCKSUser
from .codec import Command
from .commands import Handler
from .commands.host import CommandHost
from .connection import (
    NEED_DATA,
    ClientClosed,
    CommandRequested,
    CredentialsReceived,
    MethodsOffered,
    ProtocolViolation,
    ServerConnection,
)
from .connection import State as Wire
from .gate import Refusal, Slot
from .limits import Limit
from .logsafe import field, why
from .policy import describe, ip_of
from .proxylistener import unvetted
from .record import HEX_BYTE
from .relay import FLUSH_GRACE, Side, no_delay, send_now
from .ruleset import COMMAND_NAMES
from .shaping import Shaping
from .states import State, session_state
from .tunnel import Relay
from .udp import UDPAssociation

if TYPE_CHECKING:
    from .factory import SOCKS5ServerFactory

__all__ = ["SOCKS5ServerProtocol", "State"]


# How log lines and outcomes name the phase a violation happened in.
_PHASE_NAMES = {Wire.GREETING: "greeting", Wire.AUTH: "authentication", Wire.REQUEST: "request"}


@implementer(IHalfCloseableProtocol)
class SOCKS5ServerProtocol(RequestAdmission, CommandHost, Protocol):
    """
    One SOCKS5 client connection.

    Configuration comes from the factory (a L{SOCKS5ServerFactory}); the
    session's facts for its log line are kept as plain attributes.
    """

    log = Logger()
    factory: SOCKS5ServerFactory
    transport: Any
    # An idle tunnel is mostly its session: slots instead of a dictionary of
    # two dozen entries.  (Twisted's Protocol still gives each instance a
    # small __dict__ for the attributes it sets itself.)
    __slots__ = (
        "_closing", "_logout", "_pending", "bound", "client", "client_ip", "client_text", "command",
        "connected_to", "connection", "destination", "handler", "held", "limit", "outcome",
        "relay", "replies", "route", "shaping", "started", "udp", "user",
    )  # fmt: skip

    def __init__(self) -> None:
        self.connection = ServerConnection()  # its state is the session's
        self._pending: defer.Deferred[Any] | None = None
        self._logout: Callable[[], None] | None = None
        self._closing: IDelayedCall | None = None  # resets a close the peer stalls
        self.handler: Handler | None = None  # the command's, once requested
        self.udp: UDPAssociation | None = None  # UDP ASSOCIATE's, for the record
        self.relay: Relay | None = None
        # The gate's slots this session holds (empty: not admitted, or ended).
        self.held: tuple[Slot, ...] = ()
        # The [[limit]] the request fell under, and its bandwidth budgets.
        self.limit: Limit | None = None
        self.shaping: Shaping | None = None
        # For the session's log line.
        self.started = 0.0
        self.client: IAddress | None = None
        self.client_ip: IPAddress | None = None
        self.client_text = "?"
        self.user: str | None = None
        self.command: Command | None = None
        self.destination: Address | None = None
        self.bound: str | None = None
        self.connected_to: str | None = None
        self.route: str | None = None  # upstream proxies or egress pool taken, if any
        self.replies: list[int] = []
        self.outcome = ""

    @property
    def command_label(self) -> str:
        """The command as metrics name it: connect, bind, udp, or negotiating."""
        return COMMAND_NAMES[self.command] if self.command is not None else "negotiating"

    @property
    def reply_label(self) -> str:
        """The last reply code as metrics name it (none: no reply was sent)."""
        return HEX_BYTE[self.replies[-1]] if self.replies else "none"

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> State:
        """Where the session is: its connection's state, named with its command."""
        return session_state(self.connection.state, self.command)

    def close(self, outcome: str) -> None:
        """
        Close the client connection (after flushing what was written).  Any
        number of calls close once: each step is a no-op the second time.
        """
        self.connection.close()
        self.outcome = self.outcome or outcome
        self.factory.handshakes.remove(self)
        if self.handler is not None:
            self.handler.stop()
        if self.relay is not None:
            self.relay.close()
        else:
            # A CONNECT pauses reading until its tunnel opens; read again, or
            # a TLS listener's connection never closes: TLS closes once the
            # peer's close_notify (or EOF) is read.  A peer that never sends
            # it (or never reads) would hold the session: reset after a grace.
            self.transport.resumeProducing()
            self.transport.loseConnection()
            if self._closing is None and getattr(self.transport, "connected", True):
                reactor = self.factory.reactor
                self._closing = reactor.callLater(FLUSH_GRACE, self._reset)

    def _reset(self) -> None:
        self._closing = None
        getattr(self.transport, "abortConnection", self.transport.loseConnection)()

    def abort(self, outcome: str) -> None:
        """Close the session at once, both sides, dropping what is unsent."""
        self.outcome = self.outcome or outcome
        if self.relay is not None:
            # The relay resets both ends (a splice relay may hold the
            # client's socket in its thread: it resets it when it lets go).
            self.relay.abort()
            self.close(outcome)
            return
        self.close(outcome)
        getattr(self.transport, "abortConnection", self.transport.loseConnection)()

    # -- connection events -----------------------------------------------------

    def connectionMade(self) -> None:
        self.started = time.time()
        no_delay(self.transport)
        if unvetted(self.transport):  # Twisted's PROXY wrapper: it believes anyone
            self.outcome = "PROXY header from an untrusted listener"
            self.connection.close()
            self.transport.abortConnection()
            return
        # The client's address, and what is derived from it once.
        self.client = address = self.transport.getPeer()
        self.client_ip = ip_of(address)
        self.client_text = describe(address)
        factory = self.factory
        admitted = factory.admit(self)
        if isinstance(admitted, Refusal):
            self.outcome = admitted.outcome
            self.connection.close()
            self.transport.abortConnection()
            return
        self.held = (admitted,)
        if factory.handshake_timeout > 0:
            # One timer serves every session's handshake (see timers.py).
            factory.handshakes.add(self)

    def dataReceived(self, data: bytes) -> None:
        wire = self.connection.state
        if wire is Wire.OPEN:
            # The tunnel's, if there is one; a UDP association's control
            # connection carries nothing.
            if self.relay is not None:
                self.relay.from_client(data)
            return
        if wire is not Wire.CLOSED:
            self.connection.receive_data(data)
            self._process()

    def readConnectionLost(self) -> None:
        state = self.state
        if state is State.RELAYING:
            assert self.relay is not None
            self.relay.eof()
            return
        self.connection.receive_data(b"")
        if state is State.AUTHENTICATING:
            if not self.connection.pending:
                # Nothing pipelined after the credentials: a client that
                # half-closes now has nothing left to ask; it left, and its
                # (maybe costly) password check is cancelled as it closes.
                self.close("client left during authentication")
        elif state in (State.GREETING, State.AUTH, State.REQUEST):
            # Whatever whole messages are left are acted on; then the
            # connection reports the EOF.
            self._process()
        elif state is State.BINDING:
            # A FIN cannot be told from a hang-up; a client waiting for a
            # peer has nothing to half-close for, so take it as leaving.
            self.close("client left while waiting for the BIND peer")
        elif state is State.ASSOCIATED:
            self.close("closed")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        previous = self.state
        if self._closing is not None:
            if self._closing.active():
                self._closing.cancel()
            self._closing = None
        self.connection.close()
        self.factory.handshakes.remove(self)
        if self.handler is not None:
            self.handler.stop()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self.relay is not None:
            self.relay.lost(Side.CLIENT)
        if previous is not State.CLOSED and not self.outcome:
            ended = previous in (State.RELAYING, State.ASSOCIATED)
            self.outcome = "closed" if ended else f"client left in {previous.value}"
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()
        if self.shaping is not None:
            self.shaping.release()
        if self.held:
            held, self.held = self.held, ()
            for slot in held:
                slot.release()
            self.factory.session_ended(self)

    # -- negotiation -----------------------------------------------------------

    def _process(self) -> None:
        """Act on every event the client's bytes make, until more are needed."""
        connection = self.connection
        while True:
            # (Once the command is under way, the connection only checks
            # that what the client sends early stays within its bound.)
            event = connection.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, MethodsOffered):
                self._greeting(event)
            elif isinstance(event, CredentialsReceived):
                self._authenticate(event)
            elif isinstance(event, CommandRequested):
                self._request(event)
            elif isinstance(event, ClientClosed):
                self.close("client closed during negotiation")
            else:
                assert isinstance(event, ProtocolViolation)
                self._violation(event)

    def _violation(self, event: ProtocolViolation) -> None:
        phase = _PHASE_NAMES.get(event.phase)
        if phase is None:
            # Bytes piled up while the server was busy with the command.
            self.close("client sent too much before the tunnel opened")
            return
        self.log.info(
            "malformed {phase} from {client}: {why}",
            phase=event.phase.value,
            client=self.client_text,
            why=event.why,
        )
        if event.response:
            if event.phase is Wire.REQUEST:
                self._reply(event.response[1], event.response)
            else:
                send_now(self.transport, event.response)
        self.close(f"malformed {phase}: {event.why}")

    def _greeting(self, greeting: MethodsOffered) -> None:
        # (Behind a PROXY listener the client is the header's from
        # connectionMade on: the wrapper starts the session only then.)
        assert self.client is not None
        gate = self.factory.gate
        refusal = gate.admit_client(self.client, self.client_ip, self.client_text)
        if refusal is not None:
            send_now(self.transport, self.connection.refuse_methods())
            self.close(refusal.outcome)
            return
        acceptable = gate.methods(
            self.client_ip, self.factory.portal is not None, self.factory.gssapi is not None
        )
        wanted = next((m for m in acceptable if m in greeting.methods), None)
        if wanted is None:
            send_now(self.transport, self.connection.refuse_methods())
            self.close(f"no acceptable method (offered {list(greeting.methods)})")
            return
        send_now(self.transport, self.connection.select_method(wanted))

    def _authenticate(self, request: CredentialsReceived) -> None:
        # Reading goes on meanwhile (see the module docstring): a client that
        # leaves is seen, and its check cancelled.
        factory = self.factory
        login = factory.gate.admit_login(self.client_ip, self.client_text)
        if isinstance(login, Refusal):
            send_now(self.transport, self.connection.login_decided(False))
            self.close(login.outcome)
            return
        credentials = UsernamePassword(request.username, request.password)
        assert factory.portal is not None
        d = factory.portal.login(credentials, None, ISOCKSUser)
        # Fires whatever happens (a cancelled login too): the count is exact.
        d.addBoth(_passing, login.release)
        self._pending = d
        d.addCallbacks(self._authenticated, self._unauthenticated, errbackArgs=(request.username,))
        d.addErrback(self.unexpected, "authentication")

    def _authenticated(self, result: tuple[Any, Any, Any]) -> None:
        _, avatar, logout = result
        if self.state is not State.AUTHENTICATING:
            logout()
            return
        self._pending = None
        self.user = avatar.name
        self._logout = logout
        send_now(self.transport, self.connection.login_decided(True))
        self._process()

    def _unauthenticated(self, failure: Failure, username: bytes) -> None:
        if failure.check(defer.CancelledError) or self.state is not State.AUTHENTICATING:
            return
        self._pending = None
        # One line per attempt, naming the username tried (escaped), so
        # that fail2ban-style tools can act on it; never the password.
        self.log.info(
            "authentication failed for {client} user={user}: {why}",
            client=self.client_text,
            user=field(username),
            why=why(failure),
        )
        self.factory.auth_failed()
        send_now(self.transport, self.connection.login_decided(False))
        self.close("authentication failed")

    # -- timers and accidents ----------------------------------------------------

    def handshake_timed_out(self) -> None:
        """The client did not finish negotiating in time (the factory's timer says)."""
        self.log.info(
            "handshake timeout for {client} in {state}",
            client=self.client_text,
            state=self.state.value,
        )
        # Negotiation replies are a few bytes that the socket buffer takes at
        # once, so a clean close cannot be held up by a client that won't read.
        self.close("handshake timeout")


def _passing(result: Any, call: Callable[[], None]) -> Any:
    call()
    return result
