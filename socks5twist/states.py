"""
The states of a session, as a session names its connection's state.

A session has one state, its sans-I/O connection's
(L{socks5twist.connection.ServerConnection}), moved only there, by that
module's one table of (state, event) -> next state.  This module names those
states as a session shows them (in logs, outcomes and tests): the same, with
the command a request asked for where the connection's state says only "the
server works on the request" or "the tunnel is open".

    GREETING ──► AUTH ──► AUTHENTICATING ──┐
        │                                  ▼
        └────────────────────────────► REQUEST ──► CONNECTING ──► RELAYING
                                           │                         ▲
                                           ├──────► BINDING ─────────┘
                                           └──────► ASSOCIATED
    (any state) ──► CLOSED
"""

from __future__ import annotations

import enum

from .codec import Command
from .connection import State as Wire

__all__ = ["State", "session_state"]


class State(enum.StrEnum):
    """Where a session is."""

    GREETING = "greeting"  # waiting for the client's offer of methods
    AUTH = "auth"  # waiting for a username/password, or a GSSAPI token or level
    AUTHENTICATING = "authenticating"  # the portal is deciding
    REQUEST = "request"  # waiting for the command
    CONNECTING = "connecting"  # CONNECT: the outbound connection is being made
    BINDING = "binding"  # BIND: waiting for the peer to connect
    ASSOCIATED = "associated"  # UDP ASSOCIATE: datagrams flow, TCP only holds it open
    RELAYING = "relaying"  # bytes flow both ways
    CLOSED = "closed"  # closing or gone; input is ignored


# The connection's states that name a session's state alone.
_BY_WIRE = {
    Wire.GREETING: State.GREETING,
    Wire.CHOOSING: State.GREETING,
    Wire.AUTH: State.AUTH,
    Wire.LOGIN: State.AUTHENTICATING,
    Wire.GSS_TOKEN: State.AUTH,
    Wire.GSS_ACCEPTING: State.AUTHENTICATING,
    Wire.GSS_LOGIN: State.AUTHENTICATING,
    Wire.GSS_LEVEL: State.AUTH,
    Wire.GSS_CHOOSING: State.AUTHENTICATING,
    Wire.REQUEST: State.REQUEST,
    Wire.BINDING: State.BINDING,
    Wire.CLOSED: State.CLOSED,
}
# The others, with the command.  (UDP ASSOCIATE is answered at once: until
# its reply it is still the request.)
_BY_COMMAND: dict[tuple[Wire, Command | None], State] = {
    (Wire.REPLYING, Command.CONNECT): State.CONNECTING,
    (Wire.REPLYING, Command.BIND): State.BINDING,
    (Wire.REPLYING, Command.UDP_ASSOCIATE): State.REQUEST,
    (Wire.OPEN, Command.CONNECT): State.RELAYING,
    (Wire.OPEN, Command.BIND): State.RELAYING,
    (Wire.OPEN, Command.UDP_ASSOCIATE): State.ASSOCIATED,
}


def session_state(wire: Wire, command: Command | None) -> State:
    """The session's state, from its connection's and the command requested."""
    state = _BY_WIRE.get(wire)
    return state if state is not None else _BY_COMMAND[(wire, command)]
