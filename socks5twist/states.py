"""
The states of a session, and the moves between them (see L{socks5twist.session}).

    GREETING ──► AUTH ──► AUTHENTICATING ──┐
        │                                  ▼
        └────────────────────────────► REQUEST ──► CONNECTING ──► RELAYING
                                           │                         ▲
                                           ├──────► BINDING ─────────┘
                                           └──────► ASSOCIATED
    (any state) ──► CLOSED

GREETING to REQUEST are the negotiation's, moved by the sans-I/O
L{socks5twist.connection.ServerConnection} (L{NEGOTIATING} shows its states
as the session's); the command phases are the session's own, moved by the
session and its command (L{socks5twist.commands}) through L{TRANSITIONS}.
"""

from __future__ import annotations

import enum

from .connection import State as Wire

__all__ = ["NEGOTIATING", "TRANSITIONS", "IllegalTransition", "State"]


class State(enum.StrEnum):
    """Where a session is."""

    GREETING = "greeting"  # waiting for the client's offer of methods
    AUTH = "auth"  # waiting for an RFC 1929 username/password
    AUTHENTICATING = "authenticating"  # the portal is deciding
    REQUEST = "request"  # waiting for the command
    CONNECTING = "connecting"  # CONNECT: the outbound connection is being made
    BINDING = "binding"  # BIND: waiting for the peer to connect
    ASSOCIATED = "associated"  # UDP ASSOCIATE: datagrams flow, TCP only holds it open
    RELAYING = "relaying"  # bytes flow both ways
    CLOSED = "closed"  # closing or gone; input is ignored


# The session's own moves; GREETING to REQUEST are the connection's states.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.GREETING: frozenset({State.CLOSED}),
    State.AUTH: frozenset({State.CLOSED}),
    State.AUTHENTICATING: frozenset({State.CLOSED}),
    State.REQUEST: frozenset({State.CONNECTING, State.BINDING, State.ASSOCIATED, State.CLOSED}),
    State.CONNECTING: frozenset({State.RELAYING, State.CLOSED}),
    State.BINDING: frozenset({State.RELAYING, State.CLOSED}),
    State.RELAYING: frozenset({State.CLOSED}),
    State.ASSOCIATED: frozenset({State.CLOSED}),
    # A negotiation that the connection ended (a refusal, a failure reply) is
    # CLOSED already; the session's close follows it.
    State.CLOSED: frozenset({State.CLOSED}),
}

# How the session shows its connection's negotiation states.
NEGOTIATING = {
    Wire.GREETING: State.GREETING,
    Wire.CHOOSING: State.GREETING,
    Wire.AUTH: State.AUTH,
    Wire.LOGIN: State.AUTHENTICATING,
    Wire.REQUEST: State.REQUEST,
    Wire.REPLYING: State.REQUEST,
    Wire.BINDING: State.BINDING,
    Wire.OPEN: State.RELAYING,
    Wire.CLOSED: State.CLOSED,
}


class IllegalTransition(Exception):
    """A bug: the session tried a move that L{TRANSITIONS} does not allow."""
