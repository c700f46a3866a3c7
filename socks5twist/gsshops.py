"""
Kerberised SOCKS5 upstreams (C{socks5+gssapi://} and C{socks5s+gssapi://}
hops): what the URL's query may say (L{parse_query}: the service and the
protection level), and whether such hops can be made here
(L{check_support}).

A GSSAPI hop has no credentials of its own: the proxy authenticates with
its process's Kerberos credentials (the C{KRB5CCNAME} ticket cache, or the
client keytab C{KRB5_CLIENT_KTNAME} from which MIT Kerberos gets tickets by
itself), so a hop's URL names only where it is and how to talk to it.  The
C{gssapi} package is imported only by L{check_support}, and only when a
rule has such a hop: a server without it runs every other rule, and a rule
with one is refused when loaded (the rules file's line named), not at its
first request.  Errors are C{ValueError}s; L{socks5twist.routes} names the
key.
"""

from __future__ import annotations

import re

from .gsswire import LEVEL_NAMES, PROTECTION_NAMES, Protection
from .logsafe import escape

__all__ = ["DEFAULT_SERVICE", "SUFFIX", "check_support", "parse_query", "target"]

# What a scheme ends with to make its hop a GSSAPI one.
SUFFIX = "+gssapi"
# The service asked for by default: what Dante and curl use (the server's
# C{--gssapi-service} default, L{socks5twist.gss.DEFAULT_SERVICE}, which is
# not imported here: that module loads only where GSSAPI is used).
DEFAULT_SERVICE = "rcmd"
# The level asked for by default: the client endpoint's.
DEFAULT_PROTECTION = Protection.CONFIDENTIALITY
# A service (C{rcmd}), a host-based name (C{rcmd@proxy.example.org}) or a
# principal (C{rcmd/proxy.example.org@EXAMPLE.ORG}): no spaces, no escapes.
_SERVICE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}[@/][A-Za-z0-9._@/-]{1,255}")


def target(service: str, host: str) -> str:
    """
    The name the initiator asks for: C{SERVICE@HOST} (host-based, HOST as
    the URL gives it) for a bare service, else the name as it is.
    """
    return service if ("@" in service or "/" in service) else f"{service}@{host}"


def parse_query(query: str | None, host: str) -> tuple[str, Protection]:
    """
    The target name and the level a GSSAPI hop's query asks for,
    C{service=NAME&protection=LEVEL} (each optional; defaults:
    C{rcmd@HOST}, confidentiality).  C{ValueError} says what is wrong.
    """
    service = DEFAULT_SERVICE
    level = DEFAULT_PROTECTION
    seen: set[str] = set()
    for item in query.split("&") if query else ():
        key, equals, value = item.partition("=")
        if not equals or key not in ("service", "protection"):
            raise ValueError(
                f"'{escape(item)}': a GSSAPI hop's query takes service=NAME and protection=LEVEL"
            )
        if key in seen:
            raise ValueError(f"{key} is given twice")
        seen.add(key)
        if key == "service":
            if not (_SERVICE.fullmatch(value) or _NAME.fullmatch(value)):
                raise ValueError(
                    f"service '{escape(value)}' is not a service (rcmd), a host-based name"
                    " (rcmd@proxy.example.org) or a principal (rcmd/proxy.example.org@REALM)"
                )
            service = value
        elif value in PROTECTION_NAMES:
            level = PROTECTION_NAMES[value]
        else:
            names = ", ".join(LEVEL_NAMES[p] for p in sorted(PROTECTION_NAMES.values()))
            raise ValueError(f"protection '{escape(value)}' is not one of {names}")
    return target(service, host), level


def check_support() -> None:
    """C{ValueError} (the L{socks5twist.gss.MissingGSSAPI} text) unless GSSAPI hops can be made."""
    from .gss import MissingGSSAPI, load

    try:
        load()
    except MissingGSSAPI as e:
        raise ValueError(str(e)) from None
