"""
The commands of RFC 1928, one module each, behind the narrow
L{context.Context} a session gives them: L{connect.Connect},
L{bind.Bind}, L{associate.Associate}.  Each checks first what the rules can
decide of its request before any lookup (what it knows of its destination
differs).  L{host.CommandHost} is how the session gives that context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..addresses import Address
from ..codec import Command
from .associate import Associate
from .bind import Bind
from .connect import Connect
from .context import Config, Context

__all__ = ["COMMANDS", "Associate", "Bind", "Config", "Connect", "Context", "Handler"]


class Handler(Protocol):
    """What the session needs of a command: a new command is a module and an entry below."""

    def start(self, address: Address) -> None:
        """Act on the request to C{address} (the session's state is the command's)."""

    def stop(self) -> None:
        """The session closes: let go of what the command holds (a listener, sockets)."""


# The handler of each command, made with the session's context.
COMMANDS: dict[Command, Callable[[Context], Handler]] = {
    Command.CONNECT: Connect,
    Command.BIND: Bind,
    Command.UDP_ASSOCIATE: Associate,
}
