"""
L{HTTPConnectEndpoint}: a client endpoint that connects through an HTTP
proxy's C{CONNECT} method (RFC 9110 section 9.3.6), with Basic
authentication (RFC 7617), beside L{socks5twist.client.SOCKS5ClientEndpoint}
and nested the same way (a chain may mix the two).

The negotiation, L{HTTPConnectConnection}, is sans I/O and keeps the same
surface as the SOCKS5 one (C{start}, C{receive_data}, C{next_event},
C{take_data}, C{close}, C{state}), so the SOCKS5 endpoint's handshake
protocol, deadline and cancellation serve it unchanged.  The proxy's
response head is read up to L{MAX_HEAD} bytes and L{MAX_HEADERS} lines;
anything longer, or not HTTP/1.x, is a L{ProxyProtocolError}.

A refusal is an L{HTTPConnectError} carrying the status and the SOCKS reply
code it maps to (L{reply_for_status}): 403 is X'02' (the proxy's rules);
407 (and 401, which tinyproxy sends for wrong credentials) is
L{ProxyAuthenticationRequired} (an L{AuthenticationError}, code X'02');
502 is X'05' and 504 X'04' (the proxy could not reach the destination, or
not in time); anything else X'01'.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from zope.interface import implementer

from ..codec import Address, Command, Reply
from ..logsafe import escape
from .attempt import Attempt
from .endpoint import DEFAULT_TIMEOUT, ProxiedEndpoint
from .errors import AuthenticationError, ProxyClosedError, ProxyProtocolError, SOCKS5Error
from .negotiation import NEED_DATA, Established, NeedData, State

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "HTTPConnectConnection",
    "HTTPConnectEndpoint",
    "HTTPConnectError",
    "ProxyAuthenticationRequired",
    "reply_for_status",
]

MAX_HEAD = 16384  # bytes of the response head (status line and headers)
MAX_HEADERS = 100
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?")

_REPLIES = {
    403: Reply.NOT_ALLOWED,
    407: Reply.NOT_ALLOWED,
    502: Reply.CONNECTION_REFUSED,
    504: Reply.HOST_UNREACHABLE,
}


def reply_for_status(status: int) -> int:
    """The SOCKS5 reply code an HTTP proxy's refusal of CONNECT maps to."""
    return _REPLIES.get(status, Reply.GENERAL_FAILURE)


class HTTPConnectError(SOCKS5Error):
    """
    The HTTP proxy refused the CONNECT with C{status} (and C{reason},
    escaped); C{code} is the SOCKS5 reply code it maps to.
    """

    def __init__(self, status: int, reason: str, destination: Address | None = None) -> None:
        self.status = status
        self.reason = reason
        self.meaning = f"HTTP {status} {reason}".rstrip()
        super().__init__(reply_for_status(status), destination)


class ProxyAuthenticationRequired(AuthenticationError):
    """407 (or 401): the HTTP proxy wants credentials, or refused the ones sent."""

    code = Reply.NOT_ALLOWED

    def __init__(self, status: int, reason: str, destination: Address | None = None) -> None:
        super().__init__(f"the proxy replied HTTP {status} {reason}".rstrip(), destination)
        self.status = status


class _Request:
    """What the negotiation asks for (the SOCKS5 one's C{request} has the same)."""

    def __init__(self, address: Address) -> None:
        self.command = Command.CONNECT
        self.address = address


class HTTPConnectConnection:
    """One CONNECT negotiation with an HTTP proxy: bytes in, events out."""

    __slots__ = ("_buffer", "_credentials", "_eof", "request", "state")

    # An HTTP tunnel carries the bytes as they are (the SOCKS5 one may be GSSAPI-protected).
    protection = None

    def __init__(self, address: Address, credentials: tuple[bytes, bytes] | None = None) -> None:
        if credentials is not None and b":" in credentials[0]:
            raise ValueError("a Basic username cannot hold ':'")
        self.request = _Request(address)
        self._credentials = credentials
        self.state = State.START
        self._buffer = b""
        self._eof = False

    def __repr__(self) -> str:
        return f"<HTTPConnectConnection {self.state.value}>"

    def start(self) -> bytes:
        """The CONNECT request, the first bytes to send."""
        if self.state is not State.START:
            raise AssertionError("started twice")
        self.state = State.REPLY
        address = self.request.address
        host = f"[{address.host}]" if ":" in address.host else address.host
        target = f"{host}:{address.port}".encode("ascii")
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        if self._credentials is not None:
            token = base64.b64encode(b":".join(self._credentials))
            lines.append(b"Proxy-Authorization: Basic " + token)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def receive_data(self, data: bytes) -> None:
        """Bytes from the proxy; C{b""} means EOF."""
        if not data:
            self._eof = True
        elif self.state is State.REPLY:
            self._buffer += data

    def next_event(self) -> NeedData | Established:
        """L{Established} once a 2xx head is read, L{NEED_DATA}, or raises."""
        if self.state is not State.REPLY:
            return NEED_DATA
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise self._fail(ProxyProtocolError(f"response head over {MAX_HEAD} bytes"))
            if self._eof:
                if self._buffer:
                    raise self._fail(
                        ProxyProtocolError(
                            f"the proxy closed the connection in its response:"
                            f" {escape(self._buffer[:64])}",
                            self.request.address,
                        )
                    )
                raise self._fail(ProxyClosedError("response", self.request.address))
            return NEED_DATA
        if end > MAX_HEAD:
            raise self._fail(ProxyProtocolError(f"response head over {MAX_HEAD} bytes"))
        head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        lines = head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise self._fail(
                ProxyProtocolError(f"not an HTTP/1.x status line: {escape(lines[0][:80])}")
            )
        if len(lines) - 1 > MAX_HEADERS:
            raise self._fail(ProxyProtocolError(f"more than {MAX_HEADERS} header lines"))
        status = int(match[1])
        reason = escape((match[2] or b"")[:80])
        if 200 <= status < 300:
            self.state = State.OPEN
            return Established(_UNKNOWN)
        if status in (401, 407):
            # (tinyproxy answers wrong credentials with 401.)
            raise self._fail(ProxyAuthenticationRequired(status, reason, self.request.address))
        raise self._fail(HTTPConnectError(status, reason, self.request.address))

    def take_data(self) -> bytes:
        """The tunnel's first bytes: what came after the response head."""
        data, self._buffer = self._buffer, b""
        return data

    def close(self) -> None:
        self.state = State.CLOSED
        self._buffer = b""

    def _fail(self, error: Exception) -> Exception:
        self.close()
        return error


# An HTTP proxy does not say where it connects from.
_UNKNOWN = Address.for_ip("0.0.0.0", 0)


@implementer(IStreamClientEndpoint)
class HTTPConnectEndpoint(ProxiedEndpoint):
    """
    Connects to C{host}:C{port} through the HTTP proxy that C{proxy}
    reaches, with C{CONNECT}; the same contract as
    L{socks5twist.client.SOCKS5ClientEndpoint} (the tunnel's
    C{getHost()} is C{0.0.0.0:0}: an HTTP proxy does not say).
    """

    def __init__(
        self,
        proxy: IStreamClientEndpoint,
        host: str,
        port: int,
        username: str | bytes | None = None,
        password: str | bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        reactor: IReactorTime | None = None,
    ) -> None:
        super().__init__(proxy, host, port, username, password, timeout, reactor)
        HTTPConnectConnection(self.destination, self._credentials)  # checked now

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        negotiation: Any = HTTPConnectConnection(self.destination, self._credentials)
        attempt = Attempt(protocolFactory, self.destination, self.timeout, self._reactor)
        attempt.start(self.proxy, negotiation)
        return attempt.result
