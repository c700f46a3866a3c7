"""
The C{socks5:} client endpoint string, for
C{twisted.internet.endpoints.clientFromString}:

    socks5:HOST:PORT:proxy=DESCRIPTION[:user=NAME:password=SECRET][:timeout=SECONDS]
        [:gssapi=SERVICE[:gssapi_protection=LEVEL][:gssapi_nec=yes]]

C{DESCRIPTION} is any client endpoint string, its colons escaped (C{tcp\\:
127.0.0.1\\:1080}, C{tls\\:proxy.example\\:1080}, C{unix\\:/run/socks.sock}).
An IPv6 destination is written with its colons escaped (C{socks5:\\:\\:1:80:
...}), or with the keywords C{host=} and C{port=} (C{host=2001\\:db8\\:\\:1}).
C{gssapi=} is the proxy's GSSAPI service (C{rcmd@proxy.example.org}, or a
principal with a C{/}); C{gssapi_protection=} is C{clear}, C{integrity} or
C{confidentiality} (the default); C{gssapi_nec=yes} sends the level the NEC
way.  The plugin in C{twisted/plugins/socks5twist_client.py} calls L{parse}.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.endpoints import clientFromString

from ..gsswire import PROTECTION_NAMES, Protection
from .endpoint import DEFAULT_TIMEOUT, SOCKS5ClientEndpoint

__all__ = ["parse"]

_KEYWORDS = frozenset(
    {"host", "port", "proxy", "user", "password", "timeout", "gssapi"}
    | {"gssapi_protection", "gssapi_nec"}
)
_BOOLEANS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


def parse(reactor: Any, *args: str, **kwargs: str) -> SOCKS5ClientEndpoint:
    """A L{SOCKS5ClientEndpoint} from the parts of a C{socks5:} string; C{ValueError}."""
    unknown = sorted(set(kwargs) - _KEYWORDS)
    if unknown:
        raise ValueError(f"socks5: unknown parameter {unknown[0]!r}")
    if len(args) > 2:
        raise ValueError("socks5: takes HOST:PORT, then keywords (escape an IPv6 address's colons)")
    positional = dict(zip(("host", "port"), args, strict=False))
    for name, value in positional.items():
        if name in kwargs:
            raise ValueError(f"socks5: {name} given twice")
        kwargs[name] = value
    for name in ("host", "port", "proxy"):
        if not kwargs.get(name):
            raise ValueError(f"socks5: needs {name}")
    try:
        port = int(kwargs["port"])
    except ValueError:
        raise ValueError(f"socks5: the port must be a number, not {kwargs['port']!r}") from None
    timeout = _timeout(kwargs.get("timeout"))
    proxy = clientFromString(reactor, kwargs["proxy"])
    return SOCKS5ClientEndpoint(
        proxy,
        kwargs["host"],
        port,
        username=kwargs.get("user"),
        password=kwargs.get("password"),
        timeout=timeout or None,
        reactor=reactor,
        gssapi=kwargs.get("gssapi") or None,
        gssapi_protection=_protection(kwargs.get("gssapi_protection")),
        gssapi_nec=_boolean("gssapi_nec", kwargs.get("gssapi_nec")),
    )


def _protection(text: str | None) -> Protection | None:
    if text is None:
        return None
    level = PROTECTION_NAMES.get(text.lower())
    if level is None:
        names = "|".join(PROTECTION_NAMES)
        raise ValueError(f"socks5: gssapi_protection must be {names}, not {text!r}")
    return level


def _boolean(name: str, text: str | None) -> bool | None:
    if text is None:
        return None
    value = _BOOLEANS.get(text.lower())
    if value is None:
        raise ValueError(f"socks5: {name} must be yes or no, not {text!r}")
    return value


def _timeout(text: str | None) -> float:
    """C{timeout=}'s seconds (C{0}: none); C{nan}, C{inf} and negatives are mistakes, not "none"."""
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"socks5: timeout must be seconds (0: none), not {text!r}")
    return seconds
