"""
The SOCKS5 session: one client connection, from greeting to relay.

Everything that moves a session from one state to the next lives in this
file.  The state is one L{State}; L{TRANSITIONS} lists every allowed move,
and L{SOCKS5ServerProtocol._move} is the only place that changes it.

    GREETING ──► AUTH ──► AUTHENTICATING ──┐
        │                                  ▼
        └────────────────────────────► REQUEST ──► CONNECTING ──► RELAYING
    (any state) ──► CLOSED

While the session waits on something slow (the portal, the outbound
connection) it pauses reading from the client, so the bytes a client pipelines
are kept in order but never pile up beyond one read.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import codec, outbound
from .auth import ISOCKSUser
from .codec import Address, Command, MalformedMessage, Method, Reply
from .policy import describe
from .relay import Side, StreamRelay

if TYPE_CHECKING:
    from .factory import SOCKS5ServerFactory


class State(enum.Enum):
    """Where a session is."""

    GREETING = "greeting"  # waiting for the client's offer of methods
    AUTH = "auth"  # waiting for an RFC 1929 username/password
    AUTHENTICATING = "authenticating"  # the portal is deciding
    REQUEST = "request"  # waiting for the command
    CONNECTING = "connecting"  # the outbound connection is being made
    RELAYING = "relaying"  # bytes flow both ways
    CLOSED = "closed"  # closing or gone; input is ignored


TRANSITIONS: dict[State, frozenset[State]] = {
    State.GREETING: frozenset({State.AUTH, State.REQUEST, State.CLOSED}),
    State.AUTH: frozenset({State.AUTHENTICATING, State.CLOSED}),
    State.AUTHENTICATING: frozenset({State.REQUEST, State.CLOSED}),
    State.REQUEST: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.RELAYING, State.CLOSED}),
    State.RELAYING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}

# The states in which bytes from the client are negotiation messages, and the
# parser for each.
PARSERS: dict[State, Any] = {
    State.GREETING: codec.parse_greeting,
    State.AUTH: codec.parse_auth_request,
    State.REQUEST: codec.parse_request,
}

# Bytes a client may pipeline while the session waits (on the portal or the
# outbound connection).  Reading is paused meanwhile, so this is only reached
# by a transport that cannot pause; past it the client is dropped.
MAX_PENDING = 256 * 1024


class IllegalTransition(Exception):
    """A bug: the session tried a move that L{TRANSITIONS} does not allow."""


@implementer(IHalfCloseableProtocol)
class _Outbound(Protocol):
    """The destination side of a CONNECT: reports to the session's relay."""

    relay: StreamRelay | None = None

    def dataReceived(self, data: bytes) -> None:
        assert self.relay is not None
        self.relay.from_remote(data)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.eof(Side.REMOTE)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.relay is not None:
            self.relay.lost(Side.REMOTE)


_OUTBOUND_FACTORY = Factory.forProtocol(_Outbound)
_OUTBOUND_FACTORY.noisy = False


@implementer(IHalfCloseableProtocol)
class SOCKS5ServerProtocol(Protocol):
    """
    One SOCKS5 client connection.

    Configuration comes from the factory (a L{SOCKS5ServerFactory}); the
    session's facts for its log line are kept as plain attributes.
    """

    log = Logger()
    factory: SOCKS5ServerFactory

    def __init__(self) -> None:
        self.state = State.GREETING
        self._buffer = b""
        self._client_eof = False
        self._handshake_timer: IDelayedCall | None = None
        self._pending: defer.Deferred[Any] | None = None
        self.relay: StreamRelay | None = None
        self.remote: Protocol | None = None
        # For the session's log line.
        self.started = 0.0
        self.client: IAddress | None = None
        self.user: str | None = None
        self.command: Command | None = None
        self.destination: Address | None = None
        self.connected_to: str | None = None
        self.reply: int | None = None
        self.outcome = ""
        self.counted = False
        self._logout: Callable[[], None] | None = None

    # -- state ---------------------------------------------------------------

    def _move(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.state.name} -> {new.name}")
        self.state = new

    def _close(self, outcome: str) -> None:
        """Close the client connection (after flushing what was written)."""
        if self.state is State.CLOSED:
            return
        self._move(State.CLOSED)
        self.outcome = self.outcome or outcome
        self._cancel_handshake_timer()
        if self.relay is not None:
            self.relay.close()
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _fail(self, reply: Reply, outcome: str) -> None:
        """Send a failure reply and close."""
        self.reply = reply
        self.transport.write(codec.build_reply(reply))  # type: ignore[union-attr]
        self._close(outcome)

    # -- connection events -----------------------------------------------------

    def connectionMade(self) -> None:
        self.started = time.time()
        self.client = self.transport.getPeer()  # type: ignore[union-attr]
        if not self.factory.session_started(self):
            self.outcome = "too many clients"
            self._move(State.CLOSED)
            self.log.warn(
                "refused {client}: {count} sessions open, the limit (--max-clients)",
                client=describe(self.client),
                count=self.factory.max_clients,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.counted = True
        timeout = self.factory.handshake_timeout
        if timeout > 0:
            self._handshake_timer = self.factory.reactor.callLater(
                timeout, self._handshake_timed_out
            )

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.RELAYING:
            assert self.relay is not None
            self.relay.from_client(data)
            return
        if self.state is State.CLOSED:
            return
        self._buffer += data
        if len(self._buffer) > MAX_PENDING:
            self._close("client sent too much before the tunnel opened")
            return
        self._process()

    def readConnectionLost(self) -> None:
        if self.state is State.RELAYING:
            assert self.relay is not None
            self.relay.eof(Side.CLIENT)
            return
        self._client_eof = True
        if self.state in PARSERS:
            # Everything the client sent has been parsed and it wants more.
            self._close("client closed during negotiation")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        previous = self.state
        self.state = State.CLOSED
        self._cancel_handshake_timer()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self.relay is not None:
            self.relay.lost(Side.CLIENT)
        if previous is not State.CLOSED and not self.outcome:
            self.outcome = (
                "closed" if previous is State.RELAYING else f"client left in {previous.value}"
            )
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()
        if self.counted:
            self.counted = False
            self.factory.session_ended(self)

    # -- negotiation -----------------------------------------------------------

    def _process(self) -> None:
        """Parse and act on as many whole messages as the buffer holds."""
        while self.state in PARSERS and self._buffer:
            try:
                parsed = PARSERS[self.state](self._buffer)
            except MalformedMessage as e:
                self._malformed(e)
                return
            if parsed is None:
                break
            message, consumed = parsed
            self._buffer = self._buffer[consumed:]
            if isinstance(message, codec.Greeting):
                self._greeting(message)
            elif isinstance(message, codec.AuthRequest):
                self._authenticate(message)
            else:
                self._request(message)
        if self._client_eof and self.state in PARSERS:
            self._close("client closed during negotiation")

    def _malformed(self, e: MalformedMessage) -> None:
        self.log.info(
            "malformed {phase} from {client}: {why}",
            phase=self.state.value,
            client=describe(self.client) if self.client else "?",
            why=e.why,
        )
        if self.state is State.REQUEST and e.reply is not None:
            self._fail(e.reply, f"malformed request: {e.why}")
        elif self.state is State.AUTH:
            self.transport.write(codec.build_auth_response(codec.AuthStatus.FAILURE))  # type: ignore[union-attr]
            self._close(f"malformed authentication: {e.why}")
        else:
            self._close(f"malformed {self.state.value}: {e.why}")

    def _greeting(self, greeting: codec.Greeting) -> None:
        # The client's address is read here, not in connectionMade: behind a
        # PROXY-protocol listener it is only known once the header is read.
        self.client = self.transport.getPeer()  # type: ignore[union-attr]
        if not self.factory.client_policy.allows(self.client):
            self.log.warn(
                "refused client {client}: not in the allowed client networks",
                client=describe(self.client),
            )
            self.transport.write(codec.build_method_selection(Method.NO_ACCEPTABLE))  # type: ignore[union-attr]
            self._close("client not allowed")
            return
        wanted = (
            Method.NO_AUTHENTICATION if self.factory.portal is None else Method.USERNAME_PASSWORD
        )
        if wanted not in greeting.methods:
            self.transport.write(codec.build_method_selection(Method.NO_ACCEPTABLE))  # type: ignore[union-attr]
            self._close(f"no acceptable method (offered {list(greeting.methods)})")
            return
        self.transport.write(codec.build_method_selection(wanted))  # type: ignore[union-attr]
        self._move(State.AUTH if wanted is Method.USERNAME_PASSWORD else State.REQUEST)

    def _authenticate(self, request: codec.AuthRequest) -> None:
        assert self.factory.portal is not None
        self._move(State.AUTHENTICATING)
        self.transport.pauseProducing()  # type: ignore[union-attr]
        credentials = UsernamePassword(request.username, request.password)
        d = self.factory.portal.login(credentials, None, ISOCKSUser)
        self._pending = d
        d.addCallbacks(self._authenticated, self._unauthenticated)
        d.addErrback(self._unexpected, "authentication")

    def _authenticated(self, result: tuple[Any, Any, Any]) -> None:
        _, avatar, logout = result
        if self.state is not State.AUTHENTICATING:
            logout()
            return
        self._pending = None
        self.user = avatar.name
        self._logout = logout
        self.transport.write(codec.build_auth_response(codec.AuthStatus.SUCCESS))  # type: ignore[union-attr]
        self._move(State.REQUEST)
        self.transport.resumeProducing()  # type: ignore[union-attr]
        self._process()

    def _unauthenticated(self, failure: Failure) -> None:
        if failure.check(defer.CancelledError) or self.state is not State.AUTHENTICATING:
            return
        self._pending = None
        self.log.info(
            "authentication failed for {client}: {why}",
            client=describe(self.client) if self.client else "?",
            why=_why(failure),
        )
        self.transport.write(codec.build_auth_response(codec.AuthStatus.FAILURE))  # type: ignore[union-attr]
        self._close("authentication failed")

    def _request(self, request: codec.Request) -> None:
        self.command = request.command
        self.destination = request.address
        self._cancel_handshake_timer()
        if request.command is Command.CONNECT:
            self._connect(request.address)
        else:
            self._fail(Reply.COMMAND_NOT_SUPPORTED, f"{request.command.name} is not supported")

    # -- CONNECT ---------------------------------------------------------------

    def _connect(self, address: Address) -> None:
        self._move(State.CONNECTING)
        self.transport.pauseProducing()  # type: ignore[union-attr]
        d = outbound.connect(
            self.factory.reactor,
            address,
            _OUTBOUND_FACTORY,
            self.factory.connect_timeout,
        )
        self._pending = d
        d.addCallbacks(self._connected, self._connect_failed)
        d.addErrback(self._unexpected, "connect")

    def _connected(self, remote: Any) -> None:
        self._pending = None
        assert remote.transport is not None
        if self.state is not State.CONNECTING:
            remote.transport.loseConnection()
            return
        self.remote = remote
        host = remote.transport.getHost()
        bound = Address.for_ip(host.host, host.port)  # type: ignore[attr-defined]
        peer = remote.transport.getPeer()
        self.connected_to = describe(peer)
        self.reply = Reply.SUCCEEDED
        self.transport.write(codec.build_reply(Reply.SUCCEEDED, bound))  # type: ignore[union-attr]
        self.relay = StreamRelay(
            self.factory.reactor,
            self.transport,  # type: ignore[arg-type]
            remote.transport,
            idle_timeout=self.factory.idle_timeout,
            on_idle=self._idle,
        )
        assert isinstance(remote, _Outbound)
        remote.relay = self.relay
        self._move(State.RELAYING)
        self.relay.start()
        pipelined, self._buffer = self._buffer, b""
        if pipelined:
            self.relay.from_client(pipelined)
        if self._client_eof:
            self.relay.eof(Side.CLIENT)
        else:
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _connect_failed(self, failure: Failure) -> None:
        self._pending = None
        if self.state is not State.CONNECTING:
            return  # cancelled because the client left
        reply = outbound.reply_for_failure(failure)
        self._fail(reply, f"connect failed: {_why(failure)}")

    def _idle(self) -> None:
        self.outcome = "idle timeout"

    # -- timers and accidents ----------------------------------------------------

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self.log.info(
            "handshake timeout for {client} in {state}",
            client=describe(self.client) if self.client else "?",
            state=self.state.value,
        )
        # Negotiation replies are a few bytes that the socket buffer takes at
        # once, so a clean close cannot be held up by a client that won't read.
        self._close("handshake timeout")

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            if self._handshake_timer.active():
                self._handshake_timer.cancel()
            self._handshake_timer = None

    def _unexpected(self, failure: Failure, phase: str) -> None:
        """A bug in our own callbacks: log it and close, never leave a hang."""
        self.log.failure("unexpected error during {phase}", failure, phase=phase)
        self._close(f"internal error during {phase}")


def _why(failure: Failure) -> str:
    return failure.getErrorMessage() or type(failure.value).__name__


def _show(address: Address | None) -> str:
    if address is None:
        return "-"
    if address.type is codec.AddressType.IPV6:
        return f"[{address.host}]:{address.port}"
    return f"{address.host}:{address.port}"
