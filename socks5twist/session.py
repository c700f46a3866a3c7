"""
The SOCKS5 session: one client connection, from greeting to relay.

The negotiation (greeting, authentication, request, replies) is the sans-I/O
L{socks5twist.connection.ServerConnection}'s: this protocol feeds it the
client's bytes, acts on its events and writes the bytes it builds.  After the
request, the session's own phase (CONNECTING, BINDING, ASSOCIATED, RELAYING)
is moved here, by L{SOCKS5ServerProtocol._move} only; L{TRANSITIONS} lists the
allowed moves, and L{SOCKS5ServerProtocol.state} shows either.

    GREETING ──► AUTH ──► AUTHENTICATING ──┐
        │                                  ▼
        └────────────────────────────► REQUEST ──► CONNECTING ──► RELAYING
                                           │                         ▲
                                           ├──────► BINDING ─────────┘
                                           └──────► ASSOCIATED
    (any state) ──► CLOSED

While the session waits on the portal or an outbound connection it pauses
reading from the client, so the bytes a client pipelines are kept in order
but never pile up beyond one read.  While a BIND waits for its peer (which
may take minutes) it keeps reading, so that a client hanging up is seen at
once, and drops a client that sends more than L{MAX_PENDING} meanwhile.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, tcp
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from . import codec, outbound, splice
from .auth import ISOCKSUser
from .bind import BindWaiter
from .codec import Address, AddressType, Command, Method, Reply
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
from .logsafe import escape, field
from .policy import IPAddress, describe, ip_of
from .proxylistener import unvetted
from .relay import RemoteProtocol, Side, StreamRelay, no_delay, send_now
from .rules import Decision, Query
from .splice import SpliceRelay
from .udp import UDPAssociation

if TYPE_CHECKING:
    from .factory import SOCKS5ServerFactory


class State(enum.StrEnum):
    """Where a session is."""

    GREETING = "greeting"  # waiting for the client's offer of methods
    AUTH = "auth"  # waiting for an RFC 1929 username/password
    AUTHENTICATING = "authenticating"  # the portal is deciding
    REQUEST = "request"  # waiting for the command
    CONNECTING = "connecting"  # CONNECT: the outbound connection is being made
    BINDING = "binding"  # BIND: waiting for the peer to connect
    ASSOCIATED = "associated"  # UDP ASSOCIATE: datagrams flow, TCP only holds it open
    RELAYING = "relaying"  # bytes flow both ways
    CLOSED = "closed"  # closing or gone; input is ignored


# The session's own moves; GREETING to REQUEST are the connection's states.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.GREETING: frozenset({State.CLOSED}),
    State.AUTH: frozenset({State.CLOSED}),
    State.AUTHENTICATING: frozenset({State.CLOSED}),
    State.REQUEST: frozenset({State.CONNECTING, State.BINDING, State.ASSOCIATED, State.CLOSED}),
    State.CONNECTING: frozenset({State.RELAYING, State.CLOSED}),
    State.BINDING: frozenset({State.RELAYING, State.CLOSED}),
    State.RELAYING: frozenset({State.CLOSED}),
    State.ASSOCIATED: frozenset({State.CLOSED}),
    # A negotiation that the connection ended (a refusal, a failure reply) is
    # CLOSED already; the session's close follows it.
    State.CLOSED: frozenset({State.CLOSED}),
}

# How the session shows its connection's negotiation states.
_NEGOTIATING = {
    Wire.GREETING: State.GREETING,
    Wire.CHOOSING: State.GREETING,
    Wire.AUTH: State.AUTH,
    Wire.LOGIN: State.AUTHENTICATING,
    Wire.REQUEST: State.REQUEST,
    Wire.REPLYING: State.REQUEST,
    Wire.BINDING: State.BINDING,
    Wire.OPEN: State.RELAYING,
    Wire.CLOSED: State.CLOSED,
}
# How log lines and outcomes name the phase a violation happened in.
_PHASE_NAMES = {Wire.GREETING: "greeting", Wire.AUTH: "authentication", Wire.REQUEST: "request"}

# Logins one client address may have in progress at once (checks of hashed
# passwords take a shared pool's time).
MAX_LOGINS_PER_CLIENT = 8

COMMAND_NAMES = {Command.CONNECT: "connect", Command.BIND: "bind", Command.UDP_ASSOCIATE: "udp"}

_OUTBOUND_FACTORY = Factory.forProtocol(RemoteProtocol)
_OUTBOUND_FACTORY.noisy = False


class IllegalTransition(Exception):
    """A bug: the session tried a move that L{TRANSITIONS} does not allow."""


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
        "_bind", "_in_handshake", "_logout", "_pending", "_phase", "_udp_client_ip",
        "bound", "client", "client_ip", "client_text", "command", "connected_to",
        "connection", "counted", "destination", "limit_keys", "outcome", "relay",
        "replies", "started", "udp", "user",
    )  # fmt: skip

    def __init__(self) -> None:
        self.connection = ServerConnection()
        self._phase: State | None = None  # None while the connection negotiates
        self._in_handshake = False  # the handshake timeout is running
        self._pending: defer.Deferred[Any] | None = None
        self._logout: Callable[[], None] | None = None
        self._bind: BindWaiter | None = None
        self._udp_client_ip: IPAddress | None = None
        self.udp: UDPAssociation | None = None
        self.relay: StreamRelay | SpliceRelay | None = None
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

    def _set_client(self, address: IAddress) -> None:
        """Note the client's address, and what is derived from it once."""
        if address == self.client:
            return
        self.client = address
        self.client_ip = ip_of(address)
        self.client_text = describe(address)

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> State:
        """Where the session is: its own phase, or its connection's negotiation."""
        return self._phase or _NEGOTIATING[self.connection.state]

    def _move(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.state.name} -> {new.name}")
        self._phase = new

    def _close(self, outcome: str) -> None:
        """Close the client connection (after flushing what was written)."""
        if self._phase is State.CLOSED:
            return
        self._move(State.CLOSED)
        self.connection.close()
        self.outcome = self.outcome or outcome
        self._cancel_handshake_timer()
        self._stop_bind()
        self._stop_udp()
        if self.relay is not None:
            self.relay.close()
        else:
            self.transport.loseConnection()

    def abort(self, outcome: str) -> None:
        """Close the session at once, both sides, dropping what is unsent."""
        self.outcome = self.outcome or outcome
        transports = [self.transport]
        if isinstance(self.relay, SpliceRelay):
            # The relay thread holds the client's socket: the relay ends the
            # tunnel and then resets the client's connection itself.
            self.relay.abort()
            self._close(outcome)
            return
        if self.relay is not None:
            transports.append(self.relay.remote_transport)
        self._close(outcome)
        for transport in transports:
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                transport.loseConnection()

    def _fail(self, reply: Reply, outcome: str) -> None:
        """Send a failure reply and close."""
        self.replies.append(reply)
        send_now(self.transport, self.connection.reply(reply))
        self._close(outcome)

    # -- connection events -----------------------------------------------------

    def connectionMade(self) -> None:
        self.started = time.time()
        no_delay(self.transport)
        if unvetted(self.transport):  # Twisted's PROXY wrapper: it believes anyone
            self.outcome = "PROXY header from an untrusted listener"
            self._move(State.CLOSED)
            self.transport.abortConnection()
            return
        self._set_client(self.transport.getPeer())
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
        self._move(State.CLOSED)
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
        if self._phase is None:
            # Whatever whole messages are left are acted on; then the
            # connection reports the EOF.
            self._process()
        elif self.state is State.BINDING:
            # A FIN cannot be told from a hang-up; a client waiting for a
            # peer has nothing to half-close for, so take it as leaving.
            self._close("client left while waiting for the BIND peer")
        elif self.state is State.ASSOCIATED:
            self._close("closed")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        previous = self.state
        self._phase = State.CLOSED
        self.connection.close()
        self._cancel_handshake_timer()
        self._stop_bind()
        self._stop_udp()
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
                self._close("client closed during negotiation")
            else:
                assert isinstance(event, ProtocolViolation)
                self._violation(event)

    def _violation(self, event: ProtocolViolation) -> None:
        phase = _PHASE_NAMES.get(event.phase)
        if phase is None:
            # Bytes piled up while the server was busy with the command.
            self._close("client sent too much before the tunnel opened")
            return
        self.log.info(
            "malformed {phase} from {client}: {why}",
            phase=event.phase.value,
            client=self.client_text,
            why=event.why,
        )
        if event.response:
            if event.phase is Wire.REQUEST:
                self.replies.append(event.response[1])
            send_now(self.transport, event.response)
        self._close(f"malformed {phase}: {event.why}")

    def _greeting(self, greeting: MethodsOffered) -> None:
        # The client's address is read again here: behind a PROXY-protocol
        # listener it is only known once the header is read.  (A transport
        # of Twisted's own has one peer for life.)
        if not isinstance(self.transport, tcp.Connection):
            self._set_client(self.transport.getPeer())
        assert self.client is not None
        if not self.factory.client_policy.allows(self.client, self.client_ip):
            self.factory.refusals.refused(
                ("not allowed", self.client_ip),
                "refused client {client}: not in the allowed client networks",
                client=self.client_text,
            )
            send_now(self.transport, self.connection.refuse_methods())
            self._close("client not allowed")
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
            self._close(f"no acceptable method (offered {list(greeting.methods)})")
            return
        send_now(self.transport, self.connection.select_method(wanted))

    def _authenticate(self, request: CredentialsReceived) -> None:
        self.transport.pauseProducing()
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
            self._close("too many logins in progress from this client")
            return
        credentials = UsernamePassword(request.username, request.password)
        assert factory.portal is not None
        d = factory.portal.login(credentials, None, ISOCKSUser)
        # Fires whatever happens (a cancelled login too): the count is exact.
        d.addBoth(_passing, factory.login_ended, self.client_ip)
        self._pending = d
        d.addCallbacks(self._authenticated, self._unauthenticated, errbackArgs=(request.username,))
        d.addErrback(self._unexpected, "authentication")

    def _authenticated(self, result: tuple[Any, Any, Any]) -> None:
        _, avatar, logout = result
        if self.state is not State.AUTHENTICATING:
            logout()
            return
        self._pending = None
        self.user = avatar.name
        self._logout = logout
        send_now(self.transport, self.connection.login_decided(True))
        self.transport.resumeProducing()
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
            why=_why(failure),
        )
        self.factory.auth_failed()
        send_now(self.transport, self.connection.login_decided(False))
        self._close("authentication failed")

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
            self._fail(Reply.NOT_ALLOWED, "too many sessions for this user")
            return
        # The rules, as far as they can decide before any name is resolved.
        address = request.address
        ip = outbound.literal_ip(address)
        if request.command is Command.UDP_ASSOCIATE or (
            request.command is Command.BIND and (ip is None or ip.is_unspecified)
        ):
            decision = self._decide(None, None, None)  # the destination comes later
        elif ip is not None:
            decision = self._decide(ip, address.port, None)
        else:
            decision = self._decide(None, address.port, address.host)
        if decision is not None and not decision.allowed:
            self._deny(decision)
            return
        if request.command is Command.CONNECT:
            self._connect(address)
        elif request.command is Command.BIND:
            self._start_bind(address)
        else:
            self._associate(address)

    # -- rules -----------------------------------------------------------------

    def _decide(self, ip: IPAddress | None, port: int | None, name: str | None) -> Decision | None:
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

    def _allowed_addresses(
        self, ips: list[IPAddress], port: int | None, name: str | None
    ) -> tuple[list[IPAddress], Decision | None]:
        """The resolved addresses the rules allow, and the first denial."""
        allowed, denial = [], None
        for ip in ips:
            decision = self._decide(ip, port, name)
            assert decision is not None  # the address is known now
            if decision.allowed:
                allowed.append(ip)
            elif denial is None:
                denial = decision
        return allowed, denial

    def _deny(self, decision: Decision) -> None:
        self.log.info(
            "denied {command} {destination} for {client} user={user} by rule {rule}",
            command=self.command.name if self.command else "-",
            destination=_show(self.destination),
            client=self.client_text,
            user=field(self.user),
            rule=decision.label,
        )
        self.factory.rule_denied(decision)
        self._fail(Reply.NOT_ALLOWED, f"denied by rule {decision.label}")

    # -- CONNECT ---------------------------------------------------------------

    def _connect(self, address: Address) -> None:
        """
        CONNECT: a name is resolved here, every address it resolves to is
        checked against the rules, and only the allowed ones are connected
        to (no second lookup that could answer differently).
        """
        self._move(State.CONNECTING)
        ip = outbound.literal_ip(address)
        if ip is not None:
            self._connect_to([ip], "")
        else:
            self._resolve_allowed(
                lambda ips: self._connect_to(ips, address.host), self._connect_failed, "connect"
            )
        if self.state is State.CONNECTING:
            # Read nothing more from the client until the tunnel opens.  (A
            # destination on this machine may already be connected, and the
            # tunnel open: then there is nothing to pause.)
            self.transport.pauseProducing()

    def _resolve_allowed(
        self,
        then: Callable[[list[IPAddress]], None],
        failed: Callable[[Failure], None],
        phase: str,
    ) -> None:
        """
        Resolve the destination's name, keep the addresses the rules allow,
        and go on with those (C{then}), or deny the request if none is left.
        The state must not change meanwhile, or the result is dropped.
        """
        assert self.destination is not None
        name, port, state = self.destination.host, self.destination.port, self.state

        def resolved(ips: list[IPAddress]) -> None:
            self._pending = None
            if self.state is not state:
                return
            allowed, denial = self._allowed_addresses(ips, port, name)
            if not allowed:
                assert denial is not None
                self._deny(denial)
                return
            then(allowed)

        d = outbound.resolve(
            self.factory.reactor, name, self.factory.connect_timeout, self.factory.resolver
        )
        self._pending = d
        d.addCallbacks(resolved, failed)
        d.addErrback(self._unexpected, phase)

    def _connect_to(self, ips: list[IPAddress], name: str) -> None:
        assert self.destination is not None
        factory = self.factory
        if len(ips) == 1 and factory.splice and splice.can_splice(self.transport):
            # The tunnel will splice: the destination needs only a socket.
            sock = outbound.connect_socket(
                factory.reactor,
                ips[0],
                self.destination.port,
                factory.connect_timeout,
                bind=factory.outgoing.get(ips[0].version),
            )
            self._pending = sock
            sock.addCallbacks(self._socket_connected, self._connect_failed, callbackArgs=(ips[0],))
            sock.addErrback(self._unexpected, "connect")
            return
        d = outbound.connect(
            self.factory.reactor,
            ips,
            self.destination.port,
            _OUTBOUND_FACTORY,
            self.factory.connect_timeout,
            name=name,
            bind=self.factory.outgoing,
        )
        self._pending = d
        d.addCallbacks(self._connected, self._connect_failed)
        d.addErrback(self._unexpected, "connect")

    def _connected(self, remote: Any) -> None:
        self._pending = None
        assert isinstance(remote, RemoteProtocol) and remote.transport is not None
        if self.state is not State.CONNECTING:
            remote.transport.loseConnection()
            return
        host = remote.transport.getHost()
        bound = Address.for_ip(host.host, host.port)  # type: ignore[attr-defined]
        self.bound = _show(bound)
        self.connected_to = describe(remote.transport.getPeer())
        self._open_tunnel(remote, bound)

    def _socket_connected(self, sock: socket.socket, ip: IPAddress) -> None:
        self._pending = None
        if self.state is not State.CONNECTING:
            sock.close()
            return
        assert self.destination is not None
        local = sock.getsockname()
        bound = Address.for_ip(local[0], local[1])
        self.bound = _show(bound)
        # (A connected socket's peer is the address it was connected to:
        # no getpeername() to learn it again.)
        self.connected_to = _show(Address.for_ip(codec.ip_text(ip), self.destination.port))
        self._open_tunnel(sock, bound)

    def _connect_failed(self, failure: Failure) -> None:
        self._pending = None
        if self.state is not State.CONNECTING:
            return  # cancelled because the client left
        reply = outbound.reply_for_failure(failure)
        self._fail(reply, f"connect failed: {_why(failure)}")

    # -- BIND ------------------------------------------------------------------

    def _start_bind(self, address: Address) -> None:
        """
        BIND: find out whom to accept, listen, and send the first reply.

        DST.ADDR names the peer: an IP accepts only that IP, a name any of the
        addresses it resolves to, and 0.0.0.0 or :: (which some clients send)
        any peer.  DST.PORT is not checked: clients commonly send 0, or a port
        the peer will not connect from.
        """
        self._move(State.BINDING)
        ip = outbound.literal_ip(address)
        if ip is not None:
            self._listen_for_peer(None if ip.is_unspecified else frozenset({ip}))
            return
        self._resolve_allowed(
            lambda ips: self._listen_for_peer(frozenset(ips)), self._bind_unresolved, "bind"
        )

    def _admit_peer(self, peer: IAddress) -> bool:
        """
        Whether the rules let this BIND peer in: checked as the address it
        connects from and, if the request named the peer, by that name.
        """
        ip = ip_of(peer)
        if ip is None:
            return False
        assert self.destination is not None
        name = self.destination.host if self.destination.type is AddressType.DOMAIN else None
        decision = self._decide(ip, getattr(peer, "port", 0), name)
        assert decision is not None
        if not decision.allowed:
            self.log.info(
                "BIND peer {peer} for {client} denied by rule {rule}",
                peer=describe(peer),
                client=self.client_text,
                rule=decision.label,
            )
            self.factory.rule_denied(decision)
        return decision.allowed

    def _bind_unresolved(self, failure: Failure) -> None:
        self._pending = None
        if self.state is State.BINDING:
            self._fail(Reply.HOST_UNREACHABLE, f"BIND peer name: {_why(failure)}")

    def _listen_for_peer(self, allowed: frozenset[IPAddress] | None) -> None:
        self._pending = None
        if self.state is not State.BINDING:
            return
        local = self._local_ip()
        external = self.factory.external_address
        if local is None and external is None:
            self.log.warn(
                "BIND from {client}: the control connection has no IP address "
                "(a Unix socket?); set --external-address to allow BIND here",
                client=self.client_text,
            )
            self._fail(Reply.GENERAL_FAILURE, "BIND needs an IP address to listen on")
            return
        if local is not None:
            interface = self.factory.outgoing.get(local.version, str(local))
        else:
            interface = _wildcard_for(external)
        self._bind = BindWaiter(
            self.factory.reactor,
            interface,
            allowed,
            self.factory.bind_timeout,
            self._bind_peer_connected,
            self._bind_timed_out,
            admit=self._admit_peer,
        )
        try:
            host = self._bind.listen()
        except Exception as e:
            self._bind = None
            self.log.warn("BIND could not listen on {interface}: {e}", interface=interface, e=e)
            self._fail(Reply.GENERAL_FAILURE, f"BIND listen failed: {e}")
            return
        advertised = Address.for_ip(external or interface, host.port)  # type: ignore[attr-defined]
        self.bound = _show(Address.for_ip(interface, host.port))  # type: ignore[attr-defined]
        self.replies.append(Reply.SUCCEEDED)
        send_now(self.transport, self.connection.bind_listening(advertised))

    def _bind_peer_connected(self, remote: RemoteProtocol) -> None:
        assert remote.transport is not None
        self._bind = None
        if self.state is not State.BINDING:
            remote.transport.loseConnection()
            return
        peer = remote.transport.getPeer()
        self.connected_to = describe(peer)
        self._open_tunnel(remote, Address.for_ip(peer.host, peer.port))  # type: ignore[attr-defined]

    def _bind_timed_out(self) -> None:
        self._bind = None
        if self.state is State.BINDING:
            self._fail(
                Reply.HOST_UNREACHABLE,
                f"no BIND peer within {self.factory.bind_timeout:g} seconds",
            )

    def _stop_bind(self) -> None:
        if self._bind is not None:
            waiter, self._bind = self._bind, None
            waiter.stop()

    def _local_ip(self) -> IPAddress | None:
        """
        The IP of this proxy that the client reached, which is where BIND
        listens: read from the socket itself, not from a PROXY header.
        """
        transport = self.transport
        while isinstance(transport, ProtocolWrapper):
            transport = transport.transport
        return ip_of(transport.getHost())

    # -- UDP ASSOCIATE -----------------------------------------------------------

    def _associate(self, expected: Address) -> None:
        """
        UDP ASSOCIATE: open the relay's client-facing port on the address the
        client reached (or C{udp_interface}) and reply with it.  The
        association lives as long as this control connection.
        """
        client_ip = self.client_ip
        if client_ip is None:
            self._fail(Reply.GENERAL_FAILURE, "UDP ASSOCIATE needs a client with an IP address")
            return
        if not self.factory.udp_association_started(client_ip):
            self.log.warn(
                "refused UDP ASSOCIATE from {client}: {n} associations open (--max-udp-per-client)",
                client=self.client_text,
                n=self.factory.max_udp_per_client,
            )
            self._fail(Reply.NOT_ALLOWED, "too many UDP associations for this client")
            return
        self._udp_client_ip = client_ip
        local_ip = self.factory.udp_interface or self._local_ip()
        local = str(local_ip) if local_ip is not None else _wildcard_for(str(client_ip))
        association = UDPAssociation(
            self.factory.reactor,
            client_ip,
            expected,
            local,
            any_source=self.factory.udp_any_source,
            idle_timeout=self.factory.idle_timeout,
            on_idle=self._udp_idle,
            resolve_timeout=self.factory.connect_timeout or 10.0,
            resolver=self.factory.resolver,
            check=self._udp_allowed,
            outgoing=self.factory.outgoing,
        )
        try:
            host = association.open()
        except Exception as e:
            self.factory.udp_association_ended(client_ip)
            self.log.warn("UDP ASSOCIATE could not listen on {local}: {e}", local=local, e=e)
            self._fail(Reply.GENERAL_FAILURE, f"UDP listen failed: {e}")
            return
        self.udp = association
        self._move(State.ASSOCIATED)
        port = host.port  # type: ignore[attr-defined]
        self.bound = _show(Address.for_ip(local, port))
        external = self.factory.external_address
        advertised = Address.for_ip(external or local, port)
        self.replies.append(Reply.SUCCEEDED)
        send_now(self.transport, self.connection.reply(Reply.SUCCEEDED, advertised))

    def _udp_allowed(self, ip: IPAddress | None, port: int, name: str | None) -> bool | None:
        """
        Whether the rules let a datagram go to C{ip} (or to C{name}, before
        it is resolved: C{None} means "resolve and ask again").
        """
        decision = self._decide(ip, port, name)
        if decision is None:
            return None
        if not decision.allowed:
            self.factory.rule_denied(decision)
        return decision.allowed

    def _udp_idle(self) -> None:
        self.outcome = "idle timeout"
        self._close("idle timeout")

    def _stop_udp(self) -> None:
        if self.udp is not None and not self.udp.closed:
            self.udp.close()
            assert self._udp_client_ip is not None  # set with self.udp
            self.factory.udp_association_ended(self._udp_client_ip)

    # -- the tunnel --------------------------------------------------------------

    def _open_tunnel(self, remote: RemoteProtocol | socket.socket, bound: Address) -> None:
        """
        Send the success reply naming C{bound} and join the client and
        C{remote} (a protocol, or a bare socket from
        L{outbound.connect_socket}), passing on what the client sent early:
        with the splice relay where both ends allow it, else with the stream
        relay.
        """
        self.replies.append(Reply.SUCCEEDED)
        reply = self.connection.reply(Reply.SUCCEEDED, bound)
        early = self.connection.take_data()
        factory = self.factory
        relay: StreamRelay | SpliceRelay
        remote_end = remote if isinstance(remote, socket.socket) else remote.transport
        if (
            factory.splice
            and splice.can_splice(self.transport)
            and (isinstance(remote_end, socket.socket) or splice.can_splice(remote_end))
        ):
            relay = SpliceRelay(
                factory.reactor,
                self.transport,
                remote_end,  # type: ignore[arg-type]
                to_client=reply,
                to_remote=early,
                idle_timeout=factory.idle_timeout,
                on_idle=self._idle,
            )
            self.relay = relay
            if not isinstance(remote, socket.socket):
                remote.relay = relay
            self._move(State.RELAYING)
            relay.start()
            return
        if isinstance(remote, socket.socket):
            # Connected for splicing, but the client's transport can no
            # longer splice (something of its own is still unsent): the
            # socket becomes a Twisted transport for the stream relay.
            remote = _adopt(factory.reactor, remote)
        self.transport.write(reply)
        relay = StreamRelay(
            factory.reactor,
            self.transport,
            remote.transport,  # type: ignore[arg-type]
            idle_timeout=factory.idle_timeout,
            on_idle=self._idle,
        )
        self.relay = remote.relay = relay
        self._move(State.RELAYING)
        relay.start()
        if early:
            relay.from_client(early)
        if self.connection.client_eof:
            relay.eof(Side.CLIENT)
        else:
            self.transport.resumeProducing()

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
        self._close("handshake timeout")

    def _cancel_handshake_timer(self) -> None:
        if self._in_handshake:
            self._in_handshake = False
            self.factory.handshakes.remove(self)

    def _unexpected(self, failure: Failure, phase: str) -> None:
        """A bug in our own callbacks: log it and close, never leave a hang."""
        self.log.failure("unexpected error during {phase}", failure, phase=phase)
        self._close(f"internal error during {phase}")


def _adopt(reactor: Any, sock: socket.socket) -> RemoteProtocol:
    """A connected socket as a Twisted transport with a L{RemoteProtocol}."""
    remote = RemoteProtocol()
    factory = Factory.forProtocol(lambda: remote)
    factory.noisy = False
    # The reactor takes a duplicate of the descriptor; this one is closed.
    reactor.adoptStreamConnection(sock.fileno(), sock.family, factory)
    sock.close()
    return remote


def _passing(result: Any, call: Callable[[Any], None], argument: Any) -> Any:
    call(argument)
    return result


def _wildcard_for(address: str | None) -> str:
    """The any-address of C{address}'s family."""
    if address is not None and ipaddress.ip_address(address).version == 6:
        return "::"
    return "0.0.0.0"


def _why(failure: Failure) -> str:
    """What went wrong, for a log line (escaped: messages may quote a peer)."""
    return escape(failure.getErrorMessage() or type(failure.value).__name__)


def _show(address: Address | None) -> str:
    if address is None:
        return "-"
    if address.type is codec.AddressType.IPV6:
        return f"[{address.host}]:{address.port}"
    return f"{address.host}:{address.port}"
