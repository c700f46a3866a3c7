"""
The values of C{twistd socks5}'s options as typed values: seconds, IP
addresses, counts, the accounting failure mode, GSSAPI's service name and
protection levels.  Each coercer raises with
one line naming the option and the value (what L{socks5twist.options}
promises), never a traceback.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from twisted.python import usage

from .gsswire import PROTECTION_NAMES, Protection

__all__ = [
    "count_option",
    "failure_mode_option",
    "ip_option",
    "protection_option",
    "seconds_option",
    "service_option",
]

# The first part of a host-based service principal (rcmd, socks, HTTP): no
# separator of a principal ("/", "@"), nothing a log or a shell would mangle.
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def seconds_option(name: str) -> Callable[[str], float]:
    def coerce(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--{name} takes a number of seconds, not {text!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"--{name} must be 0 or more seconds, not {text!r}")
        return value

    return coerce


def ip_option(name: str) -> Callable[[str], str]:
    def coerce(text: str) -> str:
        try:
            return str(ipaddress.ip_address(text.strip()))
        except ValueError:
            raise ValueError(f"--{name} takes an IP address, not {text!r}") from None

    return coerce


def failure_mode_option(text: str) -> str:
    """C{--accounting-failure}: open or closed."""
    if text not in ("open", "closed"):
        raise usage.UsageError(f"--accounting-failure is open or closed, not {text!r}")
    return text


def count_option(name: str, most: int | None = None) -> Callable[[str], int]:
    def coerce(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"--{name} takes a whole number, not {text!r}") from None
        if value < 1:
            raise ValueError(f"--{name} must be at least 1, not {text!r}")
        if most is not None and value > most:
            raise ValueError(f"--{name} must be at most {most}, not {text!r}")
        return value

    return coerce


def service_option(text: str) -> str:
    """C{--gssapi-service}: the service part of the principal clients ask for."""
    if not _SERVICE.fullmatch(text):
        raise usage.UsageError(
            "--gssapi-service takes a service name like rcmd (letters, digits, '.', '_', '-'),"
            f" not {text!r}"
        )
    return text


def protection_option(text: str) -> frozenset[Protection]:
    """C{--gssapi-protection}: comma-separated level names, at least one."""
    names = [name.strip().lower() for name in text.split(",")]
    choices = ", ".join(PROTECTION_NAMES)
    if not any(names):
        raise usage.UsageError(f"--gssapi-protection names no level (any of {choices})")
    levels = set()
    for name in names:
        if name not in PROTECTION_NAMES:
            raise usage.UsageError(
                f"--gssapi-protection: {name!r} is not a level (any of {choices}, comma-separated)"
            )
        levels.add(PROTECTION_NAMES[name])
    return frozenset(levels)
