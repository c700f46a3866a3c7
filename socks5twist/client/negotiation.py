"""
The client side of a SOCKS5 negotiation, sans I/O.

The mirror of L{socks5twist.connection.ServerConnection}: a
L{ClientConnection} is made with the request it is to send (and the
credentials, if any), hands out the greeting (L{ClientConnection.start}),
takes the bytes the proxy sends (L{ClientConnection.receive_data}) and hands
out events (L{ClientConnection.next_event}): bytes to send next, the tunnel
opened, or L{NEED_DATA}.  A proxy's failure reply, refusal or malformed
message raises the L{socks5twist.client.errors} exception for it.  It does no
I/O and imports nothing from Twisted; the wire format is the codec's.

Everything that moves the negotiation lives in this file, in one table,
L{TRANSITIONS}: (state, event) -> next state.

    START ─greeting─► METHOD ─no-auth────────────────────► REPLY ─success─► OPEN
                          │─password─► AUTH ─status 0─────┘   │
                          └─X'FF'─► CLOSED     └─status≠0─► CLOSED
    REPLY ─failure─► CLOSED     (BIND: REPLY ─first success─► BOUND ─success─► OPEN)
    (any state ─EOF/violation/close─► CLOSED)

The proxy speaks only when spoken to: bytes after a method selection or an
RFC 1929 status (sent before our next message could have reached it) are a
violation, so the buffer never holds more than one message and one read.
Bytes after the final reply are the tunnel's, handed over by
L{ClientConnection.take_data}.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .. import codec
from ..codec import Address, Command, MalformedMessage, Method, Reply
from ..logsafe import escape
from .errors import (
    LoginRejected,
    NoAcceptableMethods,
    ProxyClosedError,
    ProxyProtocolError,
    SOCKS5ClientError,
    error_for_reply,
)

__all__ = [
    "NEED_DATA",
    "TRANSITIONS",
    "Bound",
    "ClientConnection",
    "Established",
    "Kind",
    "LocalProtocolError",
    "NeedData",
    "Send",
    "State",
]


class State(enum.StrEnum):
    """Where the negotiation is; the value names what the client waits for."""

    START = "start"  # nothing sent yet
    METHOD = "method selection"  # greeting sent
    AUTH = "username/password status"  # RFC 1929 request sent
    REPLY = "reply"  # request sent
    BOUND = "second reply"  # BIND: the proxy listens, waiting for the peer
    OPEN = "open"  # the bytes are the tunnel's
    CLOSED = "closed"


class Kind(enum.Enum):
    """What moved the negotiation: the keys of L{TRANSITIONS}."""

    GREET = "greeting sent"
    SELECT_NONE = "no authentication selected"
    SELECT_PASSWORD = "username/password selected"
    NONE_ACCEPTABLE = "no acceptable method"
    LOGIN_OK = "login accepted"
    LOGIN_FAILED = "login refused"
    SUCCEEDED = "success reply"
    BIND_LISTENING = "BIND's first reply"
    FAILED = "failure reply"
    EOF = "eof"
    VIOLATION = "violation"
    CLOSE = "close"


S, K = State, Kind
TRANSITIONS: dict[tuple[State, Kind], State] = {
    (S.START, K.GREET): S.METHOD,
    (S.METHOD, K.SELECT_NONE): S.REPLY,
    (S.METHOD, K.SELECT_PASSWORD): S.AUTH,
    (S.METHOD, K.NONE_ACCEPTABLE): S.CLOSED,
    (S.AUTH, K.LOGIN_OK): S.REPLY,
    (S.AUTH, K.LOGIN_FAILED): S.CLOSED,
    (S.REPLY, K.SUCCEEDED): S.OPEN,
    (S.REPLY, K.BIND_LISTENING): S.BOUND,
    (S.REPLY, K.FAILED): S.CLOSED,
    (S.BOUND, K.SUCCEEDED): S.OPEN,
    (S.BOUND, K.FAILED): S.CLOSED,
    # The proxy may close, or send what is no message, while we wait; we may
    # give up (a timeout, a cancellation) at any time.
    **{(s, K.EOF): S.CLOSED for s in (S.METHOD, S.AUTH, S.REPLY, S.BOUND)},
    **{(s, K.VIOLATION): S.CLOSED for s in (S.METHOD, S.AUTH, S.REPLY, S.BOUND)},
    **{(s, K.CLOSE): S.CLOSED for s in State},
}

# The states in which the proxy's bytes are a negotiation message, and the
# parser of each.
_PARSERS = {
    S.METHOD: codec.parse_method_selection,
    S.AUTH: codec.parse_auth_response,
    S.REPLY: codec.parse_reply,
    S.BOUND: codec.parse_reply,
}


class LocalProtocolError(Exception):
    """A bug of the caller's: a move that L{TRANSITIONS} does not allow."""


# -- events ----------------------------------------------------------------


class NeedData:
    """Nothing more can happen until the proxy sends more."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to send to the proxy now."""

    data: bytes

    def __repr__(self) -> str:
        # The RFC 1929 request holds the password.
        return f"Send(<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class Bound:
    """BIND's first reply: the proxy listens at C{address} for the peer."""

    address: Address


@dataclass(frozen=True, slots=True)
class Established:
    """
    The tunnel is open.  C{address} is the reply's BND.ADDR/BND.PORT: for
    CONNECT, the address the proxy connects from; for BIND, the peer's.
    """

    address: Address


Event = NeedData | Send | Bound | Established


class ClientConnection:
    """One negotiation with a proxy: bytes in, events out, bytes to send built."""

    __slots__ = ("_buffer", "_credentials", "_eof", "request", "state")

    def __init__(
        self,
        command: Command,
        address: Address,
        credentials: tuple[bytes, bytes] | None = None,
    ) -> None:
        """
        @param credentials: the RFC 1929 username and password (each at most
            255 bytes: C{ValueError} otherwise); with them, both methods are
            offered and the proxy chooses, as curl does.
        """
        if credentials is not None:
            codec.build_auth_request(*credentials)  # the lengths, checked now
        address.pack()  # the port and the name's length, checked now
        self.request = codec.Request(command, address)
        self._credentials = credentials
        self.state = S.START
        self._buffer = b""
        self._eof = False

    def __repr__(self) -> str:
        return f"<ClientConnection {self.request.command.name} {self.state.value}>"

    @property
    def methods(self) -> tuple[int, ...]:
        """The methods the greeting offers."""
        if self._credentials is None:
            return (Method.NO_AUTHENTICATION,)
        return (Method.NO_AUTHENTICATION, Method.USERNAME_PASSWORD)

    def start(self) -> bytes:
        """The greeting, the first bytes to send."""
        self._move(K.GREET)
        return codec.build_greeting(self.methods)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the proxy; C{b""} means EOF (nothing more will come)."""
        if self.state is S.OPEN:
            raise LocalProtocolError("the tunnel's bytes are not the negotiation's")
        if not data:
            self._eof = True
        elif self.state is not S.CLOSED:
            self._buffer += data

    def next_event(self) -> Event:
        """
        What happens next, or L{NEED_DATA}; raises a
        L{socks5twist.client.errors.SOCKS5ClientError} when the negotiation
        fails (and the state is then CLOSED).
        """
        parse = _PARSERS.get(self.state)
        if parse is None:
            return NEED_DATA
        try:
            parsed = parse(self._buffer) if self._buffer else None
        except MalformedMessage as e:
            raise self._violation(f"malformed {self.state.value}: {e.why}") from None
        if parsed is None:
            if self._eof:
                raise self._closed()
            return NEED_DATA
        message, consumed = parsed
        self._buffer = self._buffer[consumed:]
        if isinstance(message, codec.MethodSelection):
            return self._method_selected(message.method)
        if isinstance(message, codec.AuthResponse):
            return self._login_decided(message.status)
        assert isinstance(message, codec.ReplyMessage)
        return self._replied(message)

    def take_data(self) -> bytes:
        """The tunnel's first bytes: what the proxy sent after its reply, once."""
        data, self._buffer = self._buffer, b""
        return data

    def close(self) -> None:
        """We give up (from any state): a timeout, a cancellation, our close."""
        self._move(K.CLOSE)

    # -- the proxy's messages ----------------------------------------------------

    def _method_selected(self, method: int) -> Event:
        self._nothing_after(f"method selection {method:#04x}")
        if method == Method.NO_ACCEPTABLE:
            self._move(K.NONE_ACCEPTABLE)
            raise NoAcceptableMethods(self.methods)
        if method not in self.methods:
            raise self._violation(f"the proxy chose method {method:#04x}, not offered")
        if method == Method.USERNAME_PASSWORD:
            assert self._credentials is not None
            self._move(K.SELECT_PASSWORD)
            return Send(codec.build_auth_request(*self._credentials))
        self._move(K.SELECT_NONE)
        return Send(codec.build_request(self.request.command, self.request.address))

    def _login_decided(self, status: int) -> Event:
        self._nothing_after("username/password status")
        if status != codec.AuthStatus.SUCCESS:
            self._move(K.LOGIN_FAILED)
            assert self._credentials is not None
            raise LoginRejected(status, self._credentials[0])
        self._move(K.LOGIN_OK)
        return Send(codec.build_request(self.request.command, self.request.address))

    def _replied(self, message: codec.ReplyMessage) -> Event:
        if message.reply != Reply.SUCCEEDED:
            self._move(K.FAILED)
            raise error_for_reply(message.reply, self.request.address)
        if self.request.command is Command.BIND and self.state is S.REPLY:
            self._move(K.BIND_LISTENING)
            return Bound(message.address)
        self._move(K.SUCCEEDED)
        return Established(message.address)

    def _nothing_after(self, what: str) -> None:
        if self._buffer:
            raise self._violation(
                f"{len(self._buffer)} bytes after the {what}, before our next message:"
                f" {escape(self._buffer[:64])}"
            )

    # -- failures ----------------------------------------------------------------

    def _violation(self, why: str) -> SOCKS5ClientError:
        self._move(K.VIOLATION)
        return ProxyProtocolError(why, self.request.address)

    def _closed(self) -> SOCKS5ClientError:
        phase, partial = self.state.value, self._buffer
        self._move(K.EOF)
        if partial:
            return ProxyProtocolError(
                f"the proxy closed the connection in the middle of its {phase}:"
                f" {escape(partial[:64])}",
                self.request.address,
            )
        return ProxyClosedError(phase, self.request.address)

    # -- the one place that moves the state ----------------------------------------

    def _move(self, kind: Kind) -> None:
        new = TRANSITIONS.get((self.state, kind))
        if new is None:
            raise LocalProtocolError(f"{kind.value} in state {self.state.value}")
        self.state = new
        if new is S.CLOSED:
            self._buffer = b""
