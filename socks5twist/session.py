"""
The SOCKS5 session: one client connection, from greeting to relay.

The negotiation (greeting, authentication, request, replies) is the sans-I/O
L{socks5twist.connection.ServerConnection}'s: this protocol feeds it the
client's bytes, acts on its events and writes the bytes it builds.  After the
request, the session's own phase (CONNECTING, BINDING, ASSOCIATED, RELAYING)
is moved here, by L{SOCKS5ServerProtocol.enter} only; L{TRANSITIONS} lists the
allowed moves (L{socks5twist.states} draws them), and
L{SOCKS5ServerProtocol.state} shows either.

While the session waits on an outbound connection it pauses reading from
the client, so the bytes a client pipelines are kept in order but never pile
up beyond one read.  While the portal checks a login, and while a BIND waits
for its peer (which may take minutes), it keeps reading, so that a client
hanging up is seen at once (its password check is then cancelled); the
connection drops a client that sends more than
L{socks5twist.connection.MAX_PENDING} meanwhile.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from . import codec, outbound, tunnel
from .auth import ISOCKSUser
from .codec import Address, Command, Method, Reply
from .commands import COMMANDS, Handler
from .commands.context import why
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
from .logsafe import field
from .policy import IPAddress, describe, ip_of, show
from .proxylistener import unvetted
from .relay import RemoteProtocol, Side, StreamRelay, no_delay, send_now
from .rules import Decision, Query
from .states import NEGOTIATING, TRANSITIONS, IllegalTransition, State
from .tunnel import Relay
from .udp import UDPAssociation

if TYPE_CHECKING:
    from .factory import SOCKS5ServerFactory

__all__ = ["TRANSITIONS", "IllegalTransition", "SOCKS5ServerProtocol", "State"]


# How log lines and outcomes name the phase a violation happened in.
_PHASE_NAMES = {Wire.GREETING: "greeting", Wire.AUTH: "authentication", Wire.REQUEST: "request"}

# Logins one client address may have in progress at once (checks of hashed
# passwords take a shared pool's time).
MAX_LOGINS_PER_CLIENT = 8

COMMAND_NAMES = {Command.CONNECT: "connect", Command.BIND: "bind", Command.UDP_ASSOCIATE: "udp"}


@implementer(IHalfCloseableProtocol)
class SOCKS5ServerProtocol(Protocol):
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
        "_in_handshake",
        "_logout",
        "_pending",
        "_phase",
        "bound",
        "client",
        "client_ip",
        "client_text",
        "command",
        "connected_to",
        "connection",
        "counted",
        "destination",
        "handler",
        "limit_keys",
        "outcome",
        "relay",
        "replies",
        "started",
        "udp",
        "user",
    )  # fmt: skip

    def __init__(self) -> None:
        self.connection = ServerConnection()
        self._phase: State | None = None  # None while the connection negotiates
        self._in_handshake = False  # the handshake timeout is running
        self._pending: defer.Deferred[Any] | None = None
        self._logout: Callable[[], None] | None = None
        self.handler: Handler | None = None  # the command's, once requested
        self.udp: UDPAssociation | None = None  # UDP ASSOCIATE's, for the record
        self.relay: Relay | None = None
        self.counted = False
        self.limit_keys: tuple[tuple[str, Any], ...] = ()  # what the limits counted
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
        self.replies: list[int] = []
        self.outcome = ""

    @property
    def command_label(self) -> str:
        """The command as metrics name it: connect, bind, udp, or negotiating."""
        return COMMAND_NAMES[self.command] if self.command is not None else "negotiating"

    @property
    def reply_label(self) -> str:
        """The last reply code as metrics name it (none: no reply was sent)."""
        return codec.HEX_BYTE[self.replies[-1]] if self.replies else "none"

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> State:
        """Where the session is: its own phase, or its connection's negotiation."""
        return self._phase or NEGOTIATING[self.connection.state]

    def enter(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.state.name} -> {new.name}")
        self._phase = new

    def close(self, outcome: str) -> None:
        """Close the client connection (after flushing what was written)."""
        if self._phase is State.CLOSED:
            return
        self.enter(State.CLOSED)
        self.connection.close()
        self.outcome = self.outcome or outcome
        self._cancel_handshake_timer()
        if self.handler is not None:
            self.handler.stop()
        if self.relay is not None:
            self.relay.close()
        else:
            self.transport.loseConnection()

    def abort(self, outcome: str) -> None:
        """Close the session at once, both sides, dropping what is unsent."""
        self.outcome = self.outcome or outcome
        relay = self.relay
        if relay is not None:
            # The relay resets both ends (a splice relay may hold the
            # client's socket in its thread: it resets it when it lets go).
            relay.abort()
            self.close(outcome)
            return
        self.close(outcome)
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def _reply(self, code: int, wire: bytes) -> None:
        """Send a reply the connection built, noting its code for the record."""
        self.replies.append(code)
        send_now(self.transport, wire)

    def fail(self, reply: Reply, outcome: str) -> None:
        """Send a failure reply and close."""
        self._reply(reply, self.connection.reply(reply))
        self.close(outcome)

    # -- connection events -----------------------------------------------------

    def connectionMade(self) -> None:
        self.started = time.time()
        no_delay(self.transport)
        if unvetted(self.transport):  # Twisted's PROXY wrapper: it believes anyone
            self.outcome = "PROXY header from an untrusted listener"
            self.enter(State.CLOSED)
            self.transport.abortConnection()
            return
        # The client's address, and what is derived from it once.
        self.client = address = self.transport.getPeer()
        self.client_ip = ip_of(address)
        self.client_text = describe(address)
        factory = self.factory
        # A client's connections count against its own limit from the
        # moment they are accepted, before they count against everyone's:
        # no single address can fill --max-clients with silent connections.
        if not factory.client_session_started(self):
            self._refuse(
                ("per-client", self.client_ip),
                "too many sessions from this client",
                "refused {client}: {n} sessions open from it (--max-sessions-per-client)",
                n=factory.max_sessions_per_client,
            )
            return
        if not factory.session_started(self):
            self._refuse(
                "max-clients",
                "too many clients",
                "refused {client}: {n} sessions open, the limit (--max-clients)",
                n=factory.max_clients,
            )
            return
        self.counted = True
        if factory.handshake_timeout > 0:
            # One timer serves every session's handshake (see timers.py).
            factory.handshakes.add(self)
            self._in_handshake = True

    def _refuse(self, key: object, outcome: str, format: str, **fields: object) -> None:
        """Close a connection a limit refuses, at once; logged once per burst."""
        self.outcome = outcome
        self.enter(State.CLOSED)
        self.factory.refusals.refused(key, format, client=self.client_text, **fields)
        self.factory.session_refused(self)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase is State.RELAYING:
            assert isinstance(self.relay, StreamRelay)
            self.relay.from_client(data)
            return
        if phase is State.CLOSED or phase is State.ASSOCIATED:
            # The control connection of a UDP association carries nothing.
            return
        self.connection.receive_data(data)
        self._process()

    def readConnectionLost(self) -> None:
        if self._phase is State.RELAYING:
            assert isinstance(self.relay, StreamRelay)
            self.relay.eof(Side.CLIENT)
            return
        self.connection.receive_data(b"")
        if self.state is State.AUTHENTICATING:
            if not self.connection.pending:
                # Nothing pipelined after the credentials: a client that
                # half-closes now has nothing left to ask; it left, and its
                # (maybe costly) password check is cancelled as it closes.
                self.close("client left during authentication")
        elif self._phase is None:
            # Whatever whole messages are left are acted on; then the
            # connection reports the EOF.
            self._process()
        elif self.state is State.BINDING:
            # A FIN cannot be told from a hang-up; a client waiting for a
            # peer has nothing to half-close for, so take it as leaving.
            self.close("client left while waiting for the BIND peer")
        elif self.state is State.ASSOCIATED:
            self.close("closed")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        previous = self.state
        self.enter(State.CLOSED)
        self.connection.close()
        self._cancel_handshake_timer()
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
        if self.counted:
            self.counted = False
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
        if not self.factory.client_policy.allows(self.client, self.client_ip):
            self.factory.refusals.refused(
                ("not allowed", self.client_ip),
                "refused client {client}: not in the allowed client networks",
                client=self.client_text,
            )
            send_now(self.transport, self.connection.refuse_methods())
            self.close("client not allowed")
            return
        has_checkers = self.factory.portal is not None
        if self.factory.rules.password_required(self.client_ip, has_checkers):
            acceptable = [Method.USERNAME_PASSWORD]
        else:
            # Without checkers, or for a client the rules let skip them; a
            # client that offers only a password still gets to use one.
            acceptable = [Method.NO_AUTHENTICATION]
            if has_checkers:
                acceptable.append(Method.USERNAME_PASSWORD)
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
        if not factory.login_started(self.client_ip):
            # Costly checks are shared by all: one address may not queue
            # more than a few of them (a flood of logins from one client
            # would otherwise lock everyone else out).
            factory.refusals.refused(
                ("logins", self.client_ip),
                "refused a login from {client}: {n} logins in progress from it",
                client=self.client_text,
                n=MAX_LOGINS_PER_CLIENT,
            )
            send_now(self.transport, self.connection.login_decided(False))
            self.close("too many logins in progress from this client")
            return
        credentials = UsernamePassword(request.username, request.password)
        assert factory.portal is not None
        d = factory.portal.login(credentials, None, ISOCKSUser)
        # Fires whatever happens (a cancelled login too): the count is exact.
        d.addBoth(_passing, factory.login_ended, self.client_ip)
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

    def _request(self, request: CommandRequested) -> None:
        self.command = request.command
        self.destination = request.address
        self._cancel_handshake_timer()
        self.factory.request_received(self)
        if not self.factory.user_session_started(self):
            self.log.warn(
                "refused {command} for user {user} from {client}: "
                "{n} sessions open (--max-sessions-per-user)",
                command=request.command.name,
                user=field(self.user),
                client=self.client_text,
                n=self.factory.max_sessions_per_user,
            )
            self.fail(Reply.NOT_ALLOWED, "too many sessions for this user")
            return
        # The rules, as far as they can decide before any name is resolved.
        address = request.address
        ip = outbound.literal_ip(address)
        if request.command is Command.UDP_ASSOCIATE or (
            request.command is Command.BIND and (ip is None or ip.is_unspecified)
        ):
            decision = self.decide(None, None, None)  # the destination comes later
        elif ip is not None:
            decision = self.decide(ip, address.port, None)
        else:
            decision = self.decide(None, address.port, address.host)
        if decision is not None and not decision.allowed:
            self.deny(decision)
            return
        self.handler = COMMANDS[request.command](self)
        self.handler.start(address)

    # -- what a command may do (commands.Context) -----------------------------

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
        return self.factory.rules.decide(query)

    def deny(self, decision: Decision) -> None:
        self.log.info(
            "denied {command} {destination} for {client} user={user} by rule {rule}",
            command=self.command.name if self.command else "-",
            destination=show(self.destination),
            client=self.client_text,
            user=field(self.user),
            rule=decision.label,
        )
        self.factory.rule_denied(decision)
        self.fail(Reply.NOT_ALLOWED, f"denied by rule {decision.label}")

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
        while isinstance(transport, ProtocolWrapper):
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
        )
        self.replies.append(Reply.SUCCEEDED)
        self.relay = relay
        self.enter(State.RELAYING)
        tunnel.start(relay, self.transport, early, self.connection.client_eof)

    def _idle(self) -> None:
        self.outcome = "idle timeout"

    # -- timers and accidents ----------------------------------------------------

    def _handshake_timed_out(self) -> None:
        self._in_handshake = False
        self.log.info(
            "handshake timeout for {client} in {state}",
            client=self.client_text,
            state=self.state.value,
        )
        # Negotiation replies are a few bytes that the socket buffer takes at
        # once, so a clean close cannot be held up by a client that won't read.
        self.close("handshake timeout")

    def _cancel_handshake_timer(self) -> None:
        if self._in_handshake:
            self._in_handshake = False
            self.factory.handshakes.remove(self)


def _passing(result: Any, call: Callable[[Any], None], argument: Any) -> Any:
    call(argument)
    return result
