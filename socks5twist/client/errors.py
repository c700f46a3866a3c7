"""
Why a connection through a SOCKS5 proxy failed: one exception class per cause.

Every failure that L{socks5twist.client.SOCKS5ClientEndpoint} reports itself
is a L{SOCKS5ClientError}, so a caller can tell "the proxy (or the way
through it) failed" from a failure to reach the proxy at all, which is the
proxy endpoint's own exception (C{ConnectionRefusedError}, C{DNSLookupError},
...), passed on unchanged.  Below it:

- L{SOCKS5Error}: the proxy answered the request with a failure reply; one
  subclass per RFC 1928 reply code, each with its C{code}, so that a proxy
  in front of this one can pass the code on (X'05' stays X'05');
- L{AuthenticationError}: the proxy accepted none of the methods offered
  (L{NoAcceptableMethods}) or refused the username and password
  (L{LoginRejected}); GSSAPI (RFC 1961) failed (L{GSSAPIError}: our
  side's library refused, say without a ticket), the proxy sent its abort
  (L{GSSAPIAborted}), or chose a protection level this client does not
  allow (L{ProtectionLevelRefused});
- L{ProxyProtocolError}: the proxy sent what RFC 1928/1929 does not allow;
- L{ProxyClosedError}: the proxy closed the connection before its reply;
- L{HandshakeTimeout}: no reply within the endpoint's timeout.

Messages hold no password, and every value that came from the proxy is
escaped (L{socks5twist.logsafe}), so C{str(error)} may be logged as it is.
"""

from __future__ import annotations

from ..codec import Address, Reply
from ..logsafe import escape

__all__ = [
    "AddressTypeNotSupported",
    "AuthenticationError",
    "CommandNotSupported",
    "ConnectionNotAllowed",
    "ConnectionRefused",
    "GSSAPIAborted",
    "GSSAPIError",
    "GeneralFailure",
    "HandshakeTimeout",
    "HostUnreachable",
    "LoginRejected",
    "NetworkUnreachable",
    "NoAcceptableMethods",
    "ProtectionLevelRefused",
    "ProxyClosedError",
    "ProxyProtocolError",
    "SOCKS5ClientError",
    "SOCKS5Error",
    "TTLExpired",
    "UnknownReply",
    "error_for_reply",
]


def _where(destination: Address | None) -> str:
    if destination is None:
        return ""
    host = f"[{destination.host}]" if ":" in destination.host else destination.host
    return f" for {host}:{destination.port}"


class SOCKS5ClientError(Exception):
    """
    Any failure of the SOCKS5 negotiation, after the proxy was reached.

    @ivar destination: the destination that was requested (C{None} when the
        request was not sent yet).
    """

    def __init__(self, why: str, destination: Address | None = None) -> None:
        super().__init__(why + _where(destination))
        self.why = why
        self.destination = destination


class SOCKS5Error(SOCKS5ClientError):
    """
    The proxy answered the request with a failure reply.

    @ivar code: the reply code (RFC 1928 section 6), 1 to 255.
    """

    code: int = 0
    meaning: str = "unassigned reply code"

    def __init__(self, code: int | None = None, destination: Address | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(f"the proxy replied {self.code:#04x} ({self.meaning})", destination)


class GeneralFailure(SOCKS5Error):
    """X'01': general SOCKS server failure."""

    code, meaning = Reply.GENERAL_FAILURE, "general SOCKS server failure"


class ConnectionNotAllowed(SOCKS5Error):
    """X'02': connection not allowed by ruleset."""

    code, meaning = Reply.NOT_ALLOWED, "connection not allowed by ruleset"


class NetworkUnreachable(SOCKS5Error):
    """X'03': network unreachable."""

    code, meaning = Reply.NETWORK_UNREACHABLE, "network unreachable"


class HostUnreachable(SOCKS5Error):
    """X'04': host unreachable."""

    code, meaning = Reply.HOST_UNREACHABLE, "host unreachable"


class ConnectionRefused(SOCKS5Error):
    """X'05': connection refused (by the destination)."""

    code, meaning = Reply.CONNECTION_REFUSED, "connection refused"


class TTLExpired(SOCKS5Error):
    """X'06': TTL expired (many servers use it for a connection that timed out)."""

    code, meaning = Reply.TTL_EXPIRED, "TTL expired"


class CommandNotSupported(SOCKS5Error):
    """X'07': command not supported."""

    code, meaning = Reply.COMMAND_NOT_SUPPORTED, "command not supported"


class AddressTypeNotSupported(SOCKS5Error):
    """X'08': address type not supported."""

    code, meaning = Reply.ADDRESS_TYPE_NOT_SUPPORTED, "address type not supported"


class UnknownReply(SOCKS5Error):
    """A failure code RFC 1928 does not assign (X'09' to X'FF'); C{code} says which."""


_BY_CODE: dict[int, type[SOCKS5Error]] = {
    cls.code: cls
    for cls in (
        GeneralFailure,
        ConnectionNotAllowed,
        NetworkUnreachable,
        HostUnreachable,
        ConnectionRefused,
        TTLExpired,
        CommandNotSupported,
        AddressTypeNotSupported,
    )
}


def error_for_reply(code: int, destination: Address | None = None) -> SOCKS5Error:
    """The exception for failure reply C{code} (1 to 255)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return UnknownReply(code, destination)
    return cls(None, destination)


class AuthenticationError(SOCKS5ClientError):
    """The proxy did not let us in."""


class NoAcceptableMethods(AuthenticationError):
    """
    X'FF': the proxy accepts none of the methods offered (without a username,
    a proxy that requires one answers so).
    """

    def __init__(self, offered: tuple[int, ...]) -> None:
        names = ", ".join(f"{m:#04x}" for m in offered)
        super().__init__(f"the proxy accepts none of the methods offered ({names})")
        self.offered = offered


class LoginRejected(AuthenticationError):
    """The proxy refused the username and password (RFC 1929 status C{status})."""

    def __init__(self, status: int, username: bytes) -> None:
        super().__init__(
            f"the proxy refused the password of user {escape(username)} (status {status:#04x})"
        )
        self.status = status
        self.username = username


class GSSAPIError(AuthenticationError):
    """
    GSSAPI with the proxy failed on our side (C{why}: the library's reason,
    escaped): no ticket, an expired one, a service the KDC does not know, a
    token from the proxy that does not verify, a protected message that
    does not unwrap.
    """

    def __init__(self, why: str, destination: Address | None = None) -> None:
        super().__init__(f"GSSAPI with the proxy failed: {why}", destination)


class GSSAPIAborted(GSSAPIError):
    """The proxy gave up GSSAPI (its abort message, X'01 FF'): it refused us."""

    def __init__(self, destination: Address | None = None) -> None:
        super().__init__("the proxy refused (it sent an abort, X'01 FF')", destination)


class ProtectionLevelRefused(GSSAPIError):
    """
    The proxy chose a protection level (C{level}) this client does not
    allow: one weaker than asked for (C{asked}), or one it does not know.
    """

    _NAMES = {0: "clear", 1: "integrity", 2: "confidentiality", 3: "selective"}

    def __init__(self, level: int, asked: int) -> None:
        chosen = self._NAMES.get(level, "unknown")
        super().__init__(
            f"the proxy chose protection level {level} ({chosen}); this client asked for"
            f" {asked} ({self._NAMES[asked]}) and accepts only that or stronger"
        )
        self.level = level
        self.asked = asked


class ProxyProtocolError(SOCKS5ClientError):
    """The proxy sent what RFC 1928/1929 does not allow (C{why} says what, escaped)."""


class ProxyClosedError(SOCKS5ClientError):
    """The proxy closed the connection before its reply (C{phase}: what was awaited)."""

    def __init__(self, phase: str, destination: Address | None = None) -> None:
        super().__init__(f"the proxy closed the connection before its {phase}", destination)
        self.phase = phase


class HandshakeTimeout(SOCKS5ClientError):
    """
    The proxy (or the connection to it) took longer than the endpoint's
    C{timeout} seconds; C{phase} says what was awaited.
    """

    def __init__(self, timeout: float, phase: str, destination: Address | None = None) -> None:
        super().__init__(f"timed out after {timeout:g} s waiting for {phase}", destination)
        self.timeout = timeout
        self.phase = phase
