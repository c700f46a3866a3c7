"""
The commands of RFC 1928, one module each, behind the narrow
L{context.Context} a session gives them: L{connect.Connect},
L{bind.Bind}, L{associate.Associate}.  Each checks first what the rules can
decide of its request before any lookup (what it knows of its destination
differs).  L{host.CommandHost} is how the session gives that context.
"""

from __future__ import annotations

from ..codec import Command
from .associate import Associate
from .bind import Bind
from .connect import Connect
from .context import Config, Context

__all__ = ["COMMANDS", "Associate", "Bind", "Config", "Connect", "Context", "Handler"]

Handler = Connect | Bind | Associate

# The handler of each command.
COMMANDS: dict[Command, type[Handler]] = {
    Command.CONNECT: Connect,
    Command.BIND: Bind,
    Command.UDP_ASSOCIATE: Associate,
}
