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
                          │─password─► AUTH ─status 0─────┘ ▲ │
                          │               └─status≠0─► CLOSED │ └─failure─► CLOSED
                          │─GSSAPI─► GSS_CONTEXT ─complete─► GSS_LEVEL ─level ok─┘
                          │            ⟲ token   └─abort/failure─► CLOSED ◄─┘ refused
                          └─X'FF'─► CLOSED
    (BIND: REPLY ─first success─► BOUND ─success─► OPEN)
    (any state ─EOF/violation/close─► CLOSED)

GSSAPI (RFC 1961): our first token (made then, or before: L{PreparedGSSAPI})
answers the method selection; each token the proxy sends back is stepped,
and ours sent, until the context is complete (the proxy's last token may
complete it: then nothing of ours follows but the protection level).  The
level is asked for (wrapped, or one byte in NEC mode) and the proxy's answer
accepted only if this client allows it.  At integrity or confidentiality,
the request, the replies and the tunnel are protected messages (a
L{ProtectedStream}, L{ClientConnection.protection}, handed to the tunnel).

The proxy speaks only when spoken to: bytes after a method selection, an
RFC 1929 status, a context token or the level's answer (sent before our next
message could have reached it) are a violation, so the buffer never holds
more than one message and one read.  Bytes after the final reply are the
tunnel's, handed over by L{ClientConnection.take_data}.
"""

from __future__ import annotations

import enum

from .. import codec, gsswire
from ..codec import Address, Command, MalformedMessage, Method, Reply
from ..gsswire import Mtyp
from ..logsafe import escape
from .errors import (
    GSSAPIAborted,
    GSSAPIError,
    LoginRejected,
    NoAcceptableMethods,
    ProxyClosedError,
    ProxyProtocolError,
    SOCKS5ClientError,
    error_for_reply,
)
from .events import NEED_DATA, Bound, Established, Event, NeedData, Send
from .protection import GSSAPIExchange, GSSAPISettings, PreparedGSSAPI, ProtectedStream, prepare

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
    GSS_CONTEXT = "GSSAPI context token"  # our context token sent
    GSS_LEVEL = "GSSAPI protection level"  # the level asked for
    REPLY = "reply"  # request sent
    BOUND = "second reply"  # BIND: the proxy listens, waiting for the peer
    OPEN = "open"  # the bytes are the tunnel's
    CLOSED = "closed"


class Kind(enum.Enum):
    """What moved the negotiation: the keys of L{TRANSITIONS}."""

    GREET = "greeting sent"
    SELECT_NONE = "no authentication selected"
    SELECT_PASSWORD = "username/password selected"
    SELECT_GSSAPI = "GSSAPI selected"
    NONE_ACCEPTABLE = "no acceptable method"
    LOGIN_OK = "login accepted"
    LOGIN_FAILED = "login refused"
    GSS_TOKEN = "context token"  # the context needs more
    GSS_COMPLETE = "context complete"  # the level is asked for
    GSS_LEVEL_OK = "protection level accepted"
    GSS_FAILED = "GSSAPI failed"  # the proxy's abort, our library's failure, a level refused
    SUCCEEDED = "success reply"
    BIND_LISTENING = "BIND's first reply"
    FAILED = "failure reply"
    EOF = "eof"
    VIOLATION = "violation"
    CLOSE = "close"


S, K = State, Kind
# The states in which we wait for the proxy.
_WAITING = (S.METHOD, S.AUTH, S.GSS_CONTEXT, S.GSS_LEVEL, S.REPLY, S.BOUND)
TRANSITIONS: dict[tuple[State, Kind], State] = {
    (S.START, K.GREET): S.METHOD,
    (S.METHOD, K.SELECT_NONE): S.REPLY,
    (S.METHOD, K.SELECT_PASSWORD): S.AUTH,
    (S.METHOD, K.NONE_ACCEPTABLE): S.CLOSED,
    (S.AUTH, K.LOGIN_OK): S.REPLY,
    (S.AUTH, K.LOGIN_FAILED): S.CLOSED,
    (S.METHOD, K.SELECT_GSSAPI): S.GSS_CONTEXT,
    (S.GSS_CONTEXT, K.GSS_TOKEN): S.GSS_CONTEXT,
    (S.GSS_CONTEXT, K.GSS_COMPLETE): S.GSS_LEVEL,
    (S.GSS_CONTEXT, K.GSS_FAILED): S.CLOSED,
    (S.GSS_LEVEL, K.GSS_LEVEL_OK): S.REPLY,
    (S.GSS_LEVEL, K.GSS_FAILED): S.CLOSED,
    (S.REPLY, K.SUCCEEDED): S.OPEN,
    (S.REPLY, K.BIND_LISTENING): S.BOUND,
    (S.REPLY, K.FAILED): S.CLOSED,
    (S.BOUND, K.SUCCEEDED): S.OPEN,
    (S.BOUND, K.FAILED): S.CLOSED,
    # The proxy may close, or send what is no message, while we wait; we may
    # give up (a timeout, a cancellation) at any time.
    **{(s, K.EOF): S.CLOSED for s in _WAITING},
    **{(s, K.VIOLATION): S.CLOSED for s in _WAITING},
    **{(s, K.CLOSE): S.CLOSED for s in State},
}

# The states in which the proxy's bytes are a negotiation message, and the
# parser of each (GSSAPI's messages: the RFC 1961 message type awaited).
_PARSERS = {
    S.METHOD: codec.parse_method_selection,
    S.AUTH: codec.parse_auth_response,
    S.REPLY: codec.parse_reply,
    S.BOUND: codec.parse_reply,
}
_GSS_MESSAGES = {S.GSS_CONTEXT: Mtyp.AUTHENTICATION, S.GSS_LEVEL: Mtyp.PROTECTION}


class LocalProtocolError(Exception):
    """A bug of the caller's: a move that L{TRANSITIONS} does not allow."""


class ClientConnection:
    """One negotiation with a proxy: bytes in, events out, bytes to send built."""

    __slots__ = (
        "_buffer",
        "_credentials",
        "_eof",
        "_gss",
        "_gssapi",
        "_sealed",
        "protection",
        "request",
        "state",
    )

    def __init__(
        self,
        command: Command,
        address: Address,
        credentials: tuple[bytes, bytes] | None = None,
        gssapi: GSSAPISettings | PreparedGSSAPI | None = None,
    ) -> None:
        """
        @param credentials: the RFC 1929 username and password (each at most
            255 bytes: C{ValueError} otherwise); with them, both methods are
            offered and the proxy chooses, as curl does.
        @param gssapi: offer GSSAPI (instead of no authentication, beside
            username/password when given); prepared, its first step is done.
        """
        if credentials is not None:
            codec.build_auth_request(*credentials)  # the lengths, checked now
        address.pack()  # the port and the name's length, checked now
        self.request = codec.Request(command, address)
        self._credentials = credentials
        self._gssapi = gssapi
        self._gss: GSSAPIExchange | None = None  # once the proxy chose GSSAPI
        # At integrity or confidentiality: the protected stream, from the
        # request on (the tunnel's transport takes it over).
        self.protection: ProtectedStream | None = None
        self.state = S.START
        self._buffer = b""  # the negotiation's bytes (unwrapped, once protected)
        self._sealed = b""  # protected messages not opened yet
        self._eof = False

    def __repr__(self) -> str:
        return f"<ClientConnection {self.request.command.name} {self.state.value}>"

    @property
    def methods(self) -> tuple[int, ...]:
        """The methods the greeting offers."""
        first = Method.NO_AUTHENTICATION if self._gssapi is None else Method.GSSAPI
        if self._credentials is None:
            return (first,)
        return (first, Method.USERNAME_PASSWORD)

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
        elif self.state is S.CLOSED:
            pass
        elif self.protection is not None:
            self._sealed += data
        else:
            self._buffer += data

    def next_event(self) -> Event:
        """
        What happens next, or L{NEED_DATA}; raises a
        L{socks5twist.client.errors.SOCKS5ClientError} when the negotiation
        fails (and the state is then CLOSED).
        """
        mtyp = _GSS_MESSAGES.get(self.state)
        if mtyp is not None:
            return self._gss_message(mtyp)
        parse = _PARSERS.get(self.state)
        if parse is None:
            return NEED_DATA
        if self._sealed:
            self._open_sealed()
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
        if method == Method.GSSAPI:
            gss = self._gssapi
            assert gss is not None
            self._move(K.SELECT_GSSAPI)
            try:
                self._gss = GSSAPIExchange(gss if isinstance(gss, PreparedGSSAPI) else prepare(gss))
            except GSSAPIError as e:
                raise self._gss_failed(e) from None
            return self._context_step(None)
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

    # -- GSSAPI (RFC 1961) ----------------------------------------------------------

    def _gss_message(self, mtyp: Mtyp) -> Event:
        try:
            parsed = gsswire.parse(self._buffer, mtyp) if self._buffer else None
        except gsswire.Aborted:
            raise self._gss_failed(GSSAPIAborted()) from None
        except MalformedMessage as e:
            raise self._violation(f"malformed {self.state.value}: {e.why}") from None
        if parsed is None:
            if self._eof:
                raise self._closed()
            return NEED_DATA
        token, consumed = parsed
        self._buffer = self._buffer[consumed:]
        self._nothing_after(self.state.value)
        if self.state is S.GSS_CONTEXT:
            return self._context_step(token)
        return self._level_answered(token)

    def _context_step(self, token: bytes | None) -> Event:
        """Steps the context with the proxy's token (none at first); sends ours, or the level."""
        assert self._gss is not None
        try:
            message, complete = self._gss.step(token)
        except GSSAPIError as e:
            raise self._gss_failed(e) from None
        self._move(K.GSS_COMPLETE if complete else K.GSS_TOKEN)
        return Send(message)

    def _level_answered(self, token: bytes) -> Event:
        """The proxy's level: accepted if allowed; then the request (protected, at that level)."""
        assert self._gss is not None
        request = codec.build_request(self.request.command, self.request.address)
        try:
            self.protection = self._gss.level_answered(token)
            if self.protection is not None:
                request = self.protection.seal(request)
        except GSSAPIError as e:
            raise self._gss_failed(e) from None
        self._move(K.GSS_LEVEL_OK)
        return Send(request)

    def _open_sealed(self) -> None:
        """Unwraps the protected messages read so far into the negotiation's buffer."""
        assert self.protection is not None
        sealed, self._sealed = self._sealed, b""
        try:
            self._buffer += self.protection.open(sealed)
        except ProxyProtocolError as e:
            raise self._violation(e.why) from None
        except GSSAPIError as e:
            self._move(K.VIOLATION)
            raise e from None

    def _gss_failed(self, error: SOCKS5ClientError) -> SOCKS5ClientError:
        self._move(K.GSS_FAILED)
        return error

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
        phase, partial = self.state.value, escape(self._buffer[:64])
        if not partial and self.protection is not None and self.protection.pending:
            partial = f"{self.protection.pending} bytes of a protected message"
        self._move(K.EOF)
        if partial:
            return ProxyProtocolError(
                f"the proxy closed the connection in the middle of its {phase}: {partial}",
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
            self._buffer = self._sealed = b""
