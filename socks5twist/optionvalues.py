"""
The values of C{twistd socks5}'s options as typed values: seconds, IP
addresses, counts, the accounting failure mode.  Each coercer raises with
one line naming the option and the value (what L{socks5twist.options}
promises), never a traceback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from twisted.python import usage

__all__ = ["count_option", "failure_mode_option", "ip_option", "seconds_option"]


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
