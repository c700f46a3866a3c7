"""
The C{--gssapi} options of C{twistd socks5} (GSSAPI, RFC 1961), as a mixin
of L{socks5twist.options.Options}: Twisted's C{usage.Options} gathers the
C{optParameters} and C{optFlags} of every class it is made of.

What a caller may rely on: L{gssapi_settings} returns
the L{ServerSettings <socks5twist.gss.ServerSettings>} the options describe
once this machine can serve them (see
L{socks5twist.startchecks.check_gssapi}), or C{None} without C{--gssapi};
anything else is one L{usage.UsageError} line naming the option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.python import usage

from . import startchecks
from .gss import DEFAULT_SERVICE, ServerSettings
from .optionvalues import protection_option, service_option

__all__ = ["GSSAPIOptionsMixin", "gssapi_settings"]

# The options that mean something only with --gssapi.
_DEPENDENT = ("gssapi-service", "gssapi-keytab", "gssapi-protection", "gssapi-nec")


class GSSAPIOptionsMixin:
    """C{--gssapi} and the C{--gssapi-*} options that tune it."""

    # Each default is None so that an option given without --gssapi is seen;
    # the help says the real default (gssapi_settings applies it).
    optParameters: list[list[Any]] = [
        [
            "gssapi-service",
            None,
            None,
            "With --gssapi: the service clients ask for, SERVICE/HOST@REALM; default: rcmd"
            " (curl's and Dante's).",
            service_option,
        ],
        [
            "gssapi-keytab",
            None,
            None,
            "With --gssapi: the keytab holding the service's key; default: KRB5_KTNAME of the"
            " environment, else /etc/krb5.keytab.",
        ],
        [
            "gssapi-protection",
            None,
            None,
            "With --gssapi: the protection levels the server may choose, comma-separated, of"
            " clear, integrity, confidentiality; default: integrity,confidentiality.",
            protection_option,
        ],
    ]
    optFlags: list[list[Any]] = [
        [
            "gssapi",
            None,
            "Offer GSSAPI authentication (RFC 1961: Kerberos tickets); needs the gssapi"
            " package (pip install 'socks5twist[gssapi]') and a keytab.",
        ],
        [
            "gssapi-nec",
            None,
            "With --gssapi: also accept the protection level as one unwrapped byte (the NEC"
            " reference implementation's, curl's --socks5-gssapi-nec).",
        ],
    ]


def gssapi_settings(options: Mapping[str, Any]) -> ServerSettings | None:
    """What C{--gssapi*} ask for, checked (C{None}: GSSAPI is not offered)."""
    # A parameter not given is None; a flag not given is 0.
    given = [name for name in _DEPENDENT if options[name] not in (None, 0)]
    if not options["gssapi"]:
        if given:
            raise usage.UsageError(f"--{given[0]} needs --gssapi (GSSAPI is off without it)")
        return None
    default = ServerSettings()
    return startchecks.check_gssapi(
        options["gssapi-service"] or DEFAULT_SERVICE,
        options["gssapi-keytab"],
        options["gssapi-protection"] or default.levels,
        bool(options["gssapi-nec"]),
    )
