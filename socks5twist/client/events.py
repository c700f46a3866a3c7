"""
What L{socks5twist.client.negotiation.ClientConnection.next_event} hands
out: bytes to send, BIND's first reply, the tunnel opened, or L{NEED_DATA}.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..codec import Address

__all__ = ["NEED_DATA", "Bound", "Established", "Event", "NeedData", "Send"]


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
