"""
The events of the server side of a SOCKS5 negotiation (what
L{socks5twist.connection.ServerConnection.next_event} hands out), sans I/O.

Each is a plain value: what the client did, already parsed and checked.
They live apart from the connection's table so that each file reads as one
thing; L{socks5twist.connection} re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .addresses import Address
from .codec import Command

if TYPE_CHECKING:
    from .connection import State

__all__ = [
    "NEED_DATA",
    "ClientClosed",
    "CommandRequested",
    "CredentialsReceived",
    "Event",
    "GSSTokenReceived",
    "MethodsOffered",
    "NeedData",
    "ProtectionRequested",
    "ProtocolViolation",
]


class NeedData:
    """Nothing more can be decided until the client sends more."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class MethodsOffered:
    methods: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CredentialsReceived:
    username: bytes
    password: bytes

    def __repr__(self) -> str:
        return f"CredentialsReceived(username={self.username!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class GSSTokenReceived:
    """A context-establishment token (RFC 1961 section 3), not yet checked."""

    token: bytes


@dataclass(frozen=True, slots=True)
class ProtectionRequested:
    """The client's protection-level message (section 4), as it came."""

    token: bytes


@dataclass(frozen=True, slots=True)
class CommandRequested:
    command: Command
    address: Address


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """EOF while the client still had to send a message (in C{phase})."""

    phase: State


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """
    The client sent what can never be a message (C{why} is safe to log).
    C{response} is what the server sends before it closes (the reply code
    RFC 1928 gives the case, a failed RFC 1929 status, or nothing).
    """

    phase: State
    why: str
    response: bytes


Event = (
    NeedData
    | MethodsOffered
    | CredentialsReceived
    | GSSTokenReceived
    | ProtectionRequested
    | CommandRequested
    | ClientClosed
    | ProtocolViolation
)
