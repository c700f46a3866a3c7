"""
A SOCKS5 client for Twisted: L{SOCKS5ClientEndpoint}, an
C{IStreamClientEndpoint} that connects through a SOCKS5 proxy reached by any
other client endpoint (so proxies chain by nesting endpoints), and the
C{socks5:} endpoint string (L{socks5twist.client.strings}).

- L{socks5twist.client.negotiation}: the client side of the negotiation,
  sans I/O (the wire format is L{socks5twist.codec}'s);
- L{socks5twist.client.endpoint}: the endpoint;
- L{socks5twist.client.attempt}: one connection attempt (deadline,
  cancellation, GSSAPI's first step in a thread) and its handshake protocol;
- L{socks5twist.client.transport}: the transport the caller's protocol gets;
- L{socks5twist.client.protection}: GSSAPI (RFC 1961): the settings, and
  the protected stream of a tunnel at integrity or confidentiality;
- L{socks5twist.client.errors}: one exception class per way it can fail.
"""

from .endpoint import DEFAULT_TIMEOUT, SOCKS5ClientEndpoint
from .errors import (
    AddressTypeNotSupported,
    AuthenticationError,
    CommandNotSupported,
    ConnectionNotAllowed,
    ConnectionRefused,
    GeneralFailure,
    GSSAPIAborted,
    GSSAPIError,
    HandshakeTimeout,
    HostUnreachable,
    LoginRejected,
    NetworkUnreachable,
    NoAcceptableMethods,
    ProtectionLevelRefused,
    ProxyClosedError,
    ProxyProtocolError,
    SOCKS5ClientError,
    SOCKS5Error,
    TTLExpired,
    UnknownReply,
)
from .protection import GSSAPISettings
from .transport import TunnelTransport

__all__ = [
    "DEFAULT_TIMEOUT",
    "AddressTypeNotSupported",
    "AuthenticationError",
    "CommandNotSupported",
    "ConnectionNotAllowed",
    "ConnectionRefused",
    "GSSAPIAborted",
    "GSSAPIError",
    "GSSAPISettings",
    "GeneralFailure",
    "HandshakeTimeout",
    "HostUnreachable",
    "LoginRejected",
    "NetworkUnreachable",
    "NoAcceptableMethods",
    "ProtectionLevelRefused",
    "ProxyClosedError",
    "ProxyProtocolError",
    "SOCKS5ClientEndpoint",
    "SOCKS5ClientError",
    "SOCKS5Error",
    "TTLExpired",
    "TunnelTransport",
    "UnknownReply",
]
