"""
The server side of a SOCKS5 connection's negotiation, sans I/O.

In the spirit of h11 and socksio: a L{ServerConnection} takes the bytes a
client sent (L{ServerConnection.receive_data}), hands out typed events
(L{ServerConnection.next_event}) and builds the bytes the server sends
(L{ServerConnection.select_method}, L{ServerConnection.reply}, ...).  It
owns the negotiation buffer, its bound and the client's EOF; it does no I/O
and imports nothing from Twisted, so every step can be tested on its own.

Everything that moves the negotiation from one state to the next lives in
this file, in one table, L{TRANSITIONS}: (state, event) -> next state.  An
event comes from the client (a message parsed from the buffer, EOF, a
protocol violation) or from the server (a method chosen, a login decided, a
reply sent).  A pair that is not in the table is illegal: from the client it
is a violation the server answers; from the server it is a bug of ours and
raises L{LocalProtocolError}.

    GREETING ─offer─► CHOOSING ─no-auth─────────────────► REQUEST ─request─► REPLYING
                          │─password─► AUTH ─credentials─► LOGIN ─ok─┘ ▲        │
                          │─gssapi─► GSS_TOKEN ⇄ GSS_ACCEPTING         │        │
                          │     ─established─► GSS_LOGIN ─ok─► GSS_LEVEL       │
                          │         ─level asked─► GSS_CHOOSING ─level─┘        │
                          └─none acceptable─► CLOSED                             │
    REPLYING ─success─► OPEN   (BIND: ─first success─► BINDING ─success─► OPEN)  │
             ─failure─► CLOSED                        (any state ─close/EOF/violation─► CLOSED)

GSSAPI (RFC 1961) is such a method: its token and protection-level
messages are framed by L{socks5twist.gsswire}; the cryptography is the
session's (L{socks5twist.gss}), which hands back the tokens to send.  Once a
protection level that wraps is chosen, the session unwraps what the client
sends before it reaches L{ServerConnection.receive_data}: this class sees
the request in the clear whatever the level.
After OPEN the bytes are the tunnel's, not the negotiation's:
L{ServerConnection.take_data} hands over what the client sent early.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import codec, gsswire
from .addresses import Address
from .codec import MalformedMessage, Method, Reply
from .gsswire import Mtyp
from .serverevents import (
    NEED_DATA,
    ClientClosed,
    CommandRequested,
    CredentialsReceived,
    Event,
    GSSTokenReceived,
    MethodsOffered,
    NeedData,
    ProtectionRequested,
    ProtocolViolation,
)

__all__ = [
    "NEED_DATA",
    "TRANSITIONS",
    "ClientClosed",
    "CommandRequested",
    "CredentialsReceived",
    "GSSTokenReceived",
    "Kind",
    "LocalProtocolError",
    "MethodsOffered",
    "NeedData",
    "ProtectionRequested",
    "ProtocolViolation",
    "ServerConnection",
    "State",
]

# Bytes a client may send before its tunnel opens (it pipelines, or sends
# early data while a CONNECT is under way or a BIND waits); past it the
# connection is a violation.
MAX_PENDING = 256 * 1024


class State(enum.StrEnum):
    """Where the negotiation is."""

    GREETING = "greeting"  # waiting for the client's offer of methods
    CHOOSING = "choosing"  # the server chooses a method
    AUTH = "auth"  # waiting for RFC 1929 username/password
    LOGIN = "authenticating"  # the server checks the credentials
    GSS_TOKEN = "gssapi"  # waiting for the client's context token
    GSS_ACCEPTING = "gssapi accepting"  # the server takes the token
    GSS_LOGIN = "gssapi login"  # the context is made; the realm decides on the user
    GSS_LEVEL = "gssapi protection"  # waiting for the client's protection level
    GSS_CHOOSING = "gssapi choosing"  # the server chooses the level
    REQUEST = "request"  # waiting for the command
    REPLYING = "replying"  # the server works on the command
    BINDING = "binding"  # BIND: first reply sent, waiting for the peer
    OPEN = "open"  # negotiation over: the bytes are the tunnel's
    CLOSED = "closed"


class Kind(enum.Enum):
    """What moved the negotiation: the keys of L{TRANSITIONS}."""

    # From the client.
    OFFER = "offer"
    CREDENTIALS = "credentials"
    GSS_TOKEN = "GSSAPI token"
    LEVEL_ASKED = "protection level asked"
    REQUEST = "request"
    EOF = "eof"
    VIOLATION = "violation"
    # From the server.
    SELECT_NONE = "select no authentication"
    SELECT_PASSWORD = "select username/password"
    SELECT_GSSAPI = "select GSSAPI"
    GSS_CONTINUE = "GSSAPI token answered"
    GSS_ESTABLISHED = "GSSAPI context established"
    GSS_FAILED = "GSSAPI failed"
    LEVEL_CHOSEN = "protection level chosen"
    REFUSE_METHODS = "no acceptable method"
    LOGIN_OK = "login accepted"
    LOGIN_FAILED = "login refused"
    REPLY_SUCCESS = "success reply"
    BIND_FIRST_REPLY = "BIND's first reply"
    REPLY_FAILURE = "failure reply"
    CLOSE = "close"


S, K = State, Kind
TRANSITIONS: dict[tuple[State, Kind], State] = {
    (S.GREETING, K.OFFER): S.CHOOSING,
    (S.CHOOSING, K.SELECT_NONE): S.REQUEST,
    (S.CHOOSING, K.SELECT_PASSWORD): S.AUTH,
    (S.CHOOSING, K.REFUSE_METHODS): S.CLOSED,
    (S.AUTH, K.CREDENTIALS): S.LOGIN,
    (S.LOGIN, K.LOGIN_OK): S.REQUEST,
    (S.LOGIN, K.LOGIN_FAILED): S.CLOSED,
    (S.CHOOSING, K.SELECT_GSSAPI): S.GSS_TOKEN,
    (S.GSS_TOKEN, K.GSS_TOKEN): S.GSS_ACCEPTING,
    (S.GSS_ACCEPTING, K.GSS_CONTINUE): S.GSS_TOKEN,
    (S.GSS_ACCEPTING, K.GSS_ESTABLISHED): S.GSS_LOGIN,
    (S.GSS_ACCEPTING, K.GSS_FAILED): S.CLOSED,
    (S.GSS_LOGIN, K.LOGIN_OK): S.GSS_LEVEL,
    (S.GSS_LOGIN, K.LOGIN_FAILED): S.CLOSED,
    (S.GSS_LEVEL, K.LEVEL_ASKED): S.GSS_CHOOSING,
    (S.GSS_CHOOSING, K.LEVEL_CHOSEN): S.REQUEST,
    (S.GSS_CHOOSING, K.GSS_FAILED): S.CLOSED,
    (S.REQUEST, K.REQUEST): S.REPLYING,
    (S.REPLYING, K.REPLY_SUCCESS): S.OPEN,
    (S.REPLYING, K.BIND_FIRST_REPLY): S.BINDING,
    (S.REPLYING, K.REPLY_FAILURE): S.CLOSED,
    (S.BINDING, K.REPLY_SUCCESS): S.OPEN,
    (S.BINDING, K.REPLY_FAILURE): S.CLOSED,
    # A client that stops sending, or sends what cannot be a message, ends
    # the negotiation wherever it is; the server may close at any time.
    **{(state, K.EOF): S.CLOSED for state in State if state is not S.CLOSED},
    **{(state, K.VIOLATION): S.CLOSED for state in State if state is not S.CLOSED},
    **{(state, K.CLOSE): S.CLOSED for state in State},
}

# The states in which the client's bytes are a negotiation message, and the
# parser and event of each.
_PARSING = {
    S.GREETING: (codec.parse_greeting, K.OFFER),
    S.AUTH: (codec.parse_auth_request, K.CREDENTIALS),
    S.GSS_TOKEN: (lambda data: _gss_message(data, Mtyp.AUTHENTICATION), K.GSS_TOKEN),
    S.GSS_LEVEL: (lambda data: _gss_message(data, Mtyp.PROTECTION), K.LEVEL_ASKED),
    S.REQUEST: (codec.parse_request, K.REQUEST),
}
# The event of each method the server may select.
_SELECTED = {
    Method.NO_AUTHENTICATION: K.SELECT_NONE,
    Method.USERNAME_PASSWORD: K.SELECT_PASSWORD,
    Method.GSSAPI: K.SELECT_GSSAPI,
}
# The states that are GSSAPI's: a malformed message there is answered with
# RFC 1961's abort.
_GSS_STATES = frozenset({S.GSS_TOKEN, S.GSS_ACCEPTING, S.GSS_LOGIN, S.GSS_LEVEL, S.GSS_CHOOSING})


@dataclass(frozen=True, slots=True)
class _GSSMessage:
    mtyp: Mtyp
    token: bytes


def _gss_message(data: bytes, mtyp: Mtyp) -> tuple[_GSSMessage, int] | None:
    parsed = gsswire.parse(data, mtyp)
    if parsed is None:
        return None
    token, used = parsed
    if not token:
        raise MalformedMessage(f"an empty GSSAPI token (message type {int(mtyp)})")
    return _GSSMessage(mtyp, token), used


class LocalProtocolError(Exception):
    """A bug of ours: the server tried a move that L{TRANSITIONS} does not allow."""


class ServerConnection:
    """One client's negotiation: bytes in, events out, bytes to send built."""

    __slots__ = ("_buffer", "_eof", "state")

    def __init__(self) -> None:
        self.state = S.GREETING
        self._buffer = b""
        self._eof = False

    # -- the client's side ---------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; C{b""} means EOF (nothing more will come)."""
        if not data:
            self._eof = True
        elif self.state is not S.CLOSED:
            self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received and not yet taken by a message."""
        return len(self._buffer)

    def next_event(self) -> Event:
        """
        The next thing the client did, or L{NEED_DATA}.  Bytes that arrive
        while the server has to act (choosing, checking a login, working on
        the command) are kept, in order, for later.
        """
        state = self.state
        if len(self._buffer) > MAX_PENDING:
            return self._violation(f"more than {MAX_PENDING} bytes before the tunnel opened", b"")
        parsing = _PARSING.get(state)
        if parsing is None:
            return NEED_DATA
        parse, kind = parsing
        try:
            parsed = parse(self._buffer) if self._buffer else None
        except MalformedMessage as e:
            return self._violation(e.why, self._response_to(e))
        if parsed is None:
            if self._eof:
                self._move(K.EOF)
                return ClientClosed(state)
            return NEED_DATA
        message, consumed = parsed
        self._buffer = self._buffer[consumed:]
        self._move(kind)
        if isinstance(message, codec.Greeting):
            return MethodsOffered(message.methods)
        if isinstance(message, codec.AuthRequest):
            return CredentialsReceived(message.username, message.password)
        if isinstance(message, _GSSMessage):
            if message.mtyp is Mtyp.AUTHENTICATION:
                return GSSTokenReceived(message.token)
            return ProtectionRequested(message.token)
        assert isinstance(message, codec.Request)
        return CommandRequested(message.command, message.address)

    @property
    def client_eof(self) -> bool:
        """Whether the client has sent EOF."""
        return self._eof

    def _response_to(self, e: MalformedMessage) -> bytes:
        if self.state is S.REQUEST and e.reply is not None:
            return codec.build_reply(e.reply)
        if self.state is S.AUTH:
            return codec.build_auth_response(codec.AuthStatus.FAILURE)
        if self.state in _GSS_STATES and not isinstance(e, gsswire.Aborted):
            return gsswire.ABORT
        return b""

    def _violation(self, why: str, response: bytes) -> ProtocolViolation:
        phase = self.state
        self._move(K.VIOLATION)
        return ProtocolViolation(phase, why, response)

    # -- the server's side ---------------------------------------------------

    def select_method(self, method: Method) -> bytes:
        """The method selection message; the negotiation goes on with C{method}."""
        kind = _SELECTED.get(method)
        if kind is None:
            raise LocalProtocolError(f"no negotiation for method {method!r}")
        self._move(kind)
        return codec.build_method_selection(method)

    def refuse_methods(self) -> bytes:
        """X'FF': none of the offered methods is acceptable (then close)."""
        self._move(K.REFUSE_METHODS)
        return codec.build_method_selection(Method.NO_ACCEPTABLE)

    def login_decided(self, accepted: bool) -> bytes:
        """The RFC 1929 status for the credentials received."""
        self._move(K.LOGIN_OK if accepted else K.LOGIN_FAILED)
        status = codec.AuthStatus.SUCCESS if accepted else codec.AuthStatus.FAILURE
        return codec.build_auth_response(status)

    # -- GSSAPI (RFC 1961): the session does the cryptography ------------------

    def gss_continue(self, token: bytes) -> bytes:
        """The server's token; the context needs another from the client."""
        self._move(K.GSS_CONTINUE)
        return gsswire.build(Mtyp.AUTHENTICATION, token)

    def gss_established(self, token: bytes | None) -> bytes:
        """The context is made (with a last token to send, or none); the realm decides next."""
        self._move(K.GSS_ESTABLISHED)
        return gsswire.build(Mtyp.AUTHENTICATION, token) if token else b""

    def gss_login_decided(self, accepted: bool) -> bytes:
        """The realm's word on the principal: go on to the level, or abort."""
        self._move(K.LOGIN_OK if accepted else K.LOGIN_FAILED)
        return b"" if accepted else gsswire.ABORT

    def gss_failed(self) -> bytes:
        """RFC 1961's failure message (then close)."""
        self._move(K.GSS_FAILED)
        return gsswire.ABORT

    def level_chosen(self, token: bytes) -> bytes:
        """The answer to the client's protection level; the request comes next."""
        self._move(K.LEVEL_CHOSEN)
        return gsswire.build(Mtyp.PROTECTION, token)

    def reply(self, reply: Reply, address: Address = codec.UNSPECIFIED) -> bytes:
        """A reply to the request; a success opens the tunnel, a failure ends."""
        self._move(K.REPLY_SUCCESS if reply is Reply.SUCCEEDED else K.REPLY_FAILURE)
        return codec.build_reply(reply, address)

    def bind_listening(self, address: Address) -> bytes:
        """BIND's first reply: the server listens at C{address} for the peer."""
        self._move(K.BIND_FIRST_REPLY)
        return codec.build_reply(Reply.SUCCEEDED, address)

    def take_data(self) -> bytes:
        """What the client sent after its request (early tunnel bytes), once."""
        data, self._buffer = self._buffer, b""
        return data

    def close(self) -> None:
        """The server closes (from any state)."""
        self._move(K.CLOSE)

    # -- the one place that moves the state ------------------------------------

    def _move(self, kind: Kind) -> None:
        new = TRANSITIONS.get((self.state, kind))
        if new is None:
            raise LocalProtocolError(f"{kind.value} in state {self.state.value}")
        self.state = new
        if new is S.CLOSED:
            self._buffer = b""
