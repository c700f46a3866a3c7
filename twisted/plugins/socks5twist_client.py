"""
The C{socks5:} client endpoint string (C{clientFromString(reactor,
"socks5:example.org:443:proxy=tcp\\:127.0.0.1\\:1080")}).  Kept tiny: Twisted
imports every plugin module to find the one it needs, so the endpoint is
imported only when a C{socks5:} string is parsed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _SOCKS5ClientParser:
    prefix = "socks5"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from socks5twist.client.strings import parse

        return parse(reactor, *args, **kwargs)


socks5ClientParser = _SOCKS5ClientParser()
