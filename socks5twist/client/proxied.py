"""
What the client endpoints share (L{ProxiedEndpoint}): the proxy's endpoint,
the destination as it is sent (L{destination}), the credentials, the
timeout, and a C{repr} without the password.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from ..codec import Address, AddressType
from ..names import InvalidName, canonical, is_address

__all__ = ["DEFAULT_TIMEOUT", "ProxiedEndpoint", "destination"]

DEFAULT_TIMEOUT = 30.0


def destination(host: str, port: int) -> Address:
    """
    The SOCKS address for C{host} and C{port}: an IP address (C{[::1]} and
    the other spellings L{socks5twist.names} reads as one included) is sent
    as one; anything else must be a valid host name, sent as its canonical
    A-label form, unresolved.  Raises C{ValueError} (an L{InvalidName} for a
    name).
    """
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be 0 to 65535, not {port!r}")
    try:
        raw = host.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(host, "not encodable as UTF-8") from None
    name = canonical(raw)
    if is_address(name):
        return Address.for_ip(name, port)
    return Address(AddressType.DOMAIN, name, port)


class ProxiedEndpoint:
    """
    What the client endpoints (L{SOCKS5ClientEndpoint}, and
    L{socks5twist.client.http.HTTPConnectEndpoint}) share: their arguments,
    checked and kept, and a C{repr} without the password.  A subclass says
    how a credential is encoded (L{_credential}) and how it connects.

    @ivar proxy: the endpoint that reaches the proxy.
    @ivar destination: the destination, as it is sent to the proxy.
    @ivar timeout: seconds from C{connect()} to the proxy's reply, the
        connection to the proxy included (C{None}: no limit of our own).
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
        """
        @param host: an IP address or a host name; a name goes to the proxy
            unresolved (as C{socks5h}), in its canonical form (C{ValueError}
            if it is no valid name).
        @param username: with C{password}, the credentials (C{str} is sent
            as UTF-8); both or neither.
        @param reactor: for the timeout; the global reactor by default.
        """
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, not {timeout!r}")
        self.proxy = proxy
        self.destination = destination(host, port)
        user, secret = (
            self._credential(username, "username"),
            self._credential(password, "password"),
        )
        self._credentials = None if user is None or secret is None else (user, secret)
        self.timeout = timeout
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor  # type: ignore[assignment]
        self._reactor: IReactorTime = reactor  # type: ignore[assignment]

    @staticmethod
    def _credential(value: str | bytes | None, what: str) -> bytes | None:
        """A username or password as sent (C{str} as UTF-8)."""
        return value.encode("utf-8") if isinstance(value, str) else value

    @property
    def username(self) -> bytes | None:
        """The username, if any (the password is not to be read back)."""
        return None if self._credentials is None else self._credentials[0]

    def __repr__(self) -> str:
        # Never the password: a repr ends up in logs.
        user = "" if self.username is None else f" user={self.username!r} password=<hidden>"
        host = self.destination.host
        shown = f"[{host}]" if ":" in host else host
        name = type(self).__name__
        return f"<{name} {shown}:{self.destination.port} via {self.proxy!r}{user}>"
