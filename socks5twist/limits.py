"""
The rules file's C{[[limit]]} tables, as values: which sessions a limit
applies to, and what it allows (bandwidth, a quota, concurrent sessions).
Pure: no I/O, no reactor.  C{rules.py} parses the tables into L{Limit}s; the
shaping of the relays and the accounting of quotas act on them.

    [[limit]]
    name = "alice's plan"        # optional, for the logs
    users = ["alice"]            # matching fields as in [[rule]]: users,
    clients = ["10.0.0.0/8"]     #   clients, commands (all optional)
    bandwidth = "2MiB/s"         # each direction, shared by the key's sessions
    session_bandwidth = "1MiB/s" # each direction, per session
    quota = "10GiB/month"        # both directions; periods: day, month, total
    sessions = 20                # concurrent sessions per key
    disabled = false             # true: the key's requests are refused

The first C{[[limit]]} whose matching fields all match a session applies to
it, and no other (C{users = ["anonymous"]} matches sessions without
authentication, as in C{[[rule]]}).  A limit is found for a session when its
request arrives (the command is known then).  What the limit counts is shared per I{key}: the
authenticated user's name, or, for a session without authentication, the
client's IP address (so that an anonymous limit cannot be shared by the
whole Internet).
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from typing import Literal

from .addresses import IPAddress
from .networks import IPNetwork, client_in
from .ruleset import user_matches

__all__ = [
    "PERIODS",
    "Limit",
    "LimitError",
    "Quota",
    "limit_key",
    "parse_quota",
    "parse_rate",
    "parse_size",
]

Period = Literal["day", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "month", "total")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


class LimitError(ValueError):
    """A value of a C{[[limit]]} table that is not what it must be."""


def parse_size(text: str | int) -> int:
    """
    A number of bytes: C{1048576}, C{"512KiB"}, C{"10GiB"}, C{"1.5GB"}
    (C{K}, C{M}, C{G}, C{T} are powers of 1000, C{KiB}... of 1024).
    """
    if isinstance(text, bool):
        raise LimitError(f"{text!r} is not a size")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.fullmatch(text) if isinstance(text, str) else None
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise LimitError(f'{text!r} is not a size like "512KiB" or "10GiB"')
        value = int(float(match.group(1)) * unit)
    if value < 1:
        raise LimitError(f"{text!r} must be at least 1 byte")
    return value


def parse_rate(text: str | int) -> int:
    """Bytes per second: C{"2MiB/s"}, C{"500KB/s"}, or a number of bytes per second."""
    if isinstance(text, str):
        size, slash, per = text.partition("/")
        if not slash or per.strip() != "s":
            raise LimitError(f'{text!r} is not a rate like "2MiB/s"')
        text = size
    return parse_size(text)


@dataclass(frozen=True, slots=True)
class Quota:
    """
    At most C{amount} bytes (both directions together) per C{period}:
    a UTC day, a UTC calendar month, or in total.
    """

    amount: int
    period: Period

    def period_of(self, now: float | None = None) -> str:
        """
        The name of the period C{now} falls in (C{"2026-12-01"},
        C{"2026-12"}, C{"total"}): what the accounting keys its counters by.
        """
        if self.period == "total":
            return "total"
        t = time.gmtime(time.time() if now is None else now)
        if self.period == "day":
            return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        return f"{t.tm_year:04d}-{t.tm_mon:02d}"

    def period_end(self, now: float | None = None) -> float | None:
        """When the period of C{now} ends (UTC), or C{None} for C{total}."""
        if self.period == "total":
            return None
        t = time.gmtime(time.time() if now is None else now)
        if self.period == "day":
            start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
            return float(start + 86400)
        year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def parse_quota(text: str) -> Quota:
    """C{"10GiB/month"}, C{"500MB/day"}, C{"1TiB/total"}."""
    if not isinstance(text, str):
        raise LimitError(f'{text!r} is not a quota like "10GiB/month"')
    size, slash, period = text.partition("/")
    period = period.strip()
    if not slash or period not in PERIODS:
        raise LimitError(f'{text!r} is not a quota like "10GiB/month" (periods: day, month, total)')
    return Quota(parse_size(size), period)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Limit:
    """
    One C{[[limit]]} table: whom it applies to (C{None}: anyone) and what it
    allows (C{None}: no limit of that kind).
    """

    index: int
    name: str | None = None
    clients: tuple[IPNetwork, ...] | None = None
    users: frozenset[str] | None = None
    commands: frozenset[str] | None = None
    bandwidth: int | None = None
    session_bandwidth: int | None = None
    quota: Quota | None = None
    sessions: int | None = None
    disabled: bool = False

    @property
    def label(self) -> str:
        """How the logs and metrics name it: C{[[limit]] #2 (alice's plan)}."""
        return f"[[limit]] #{self.index}" + (f" ({self.name})" if self.name else "")

    def describe(self) -> str:
        """What the limit allows, in the file's own units (bytes shown exactly)."""
        parts = []
        if self.disabled:
            parts.append("disabled")
        if self.bandwidth is not None:
            parts.append(f"bandwidth {self.bandwidth} B/s")
        if self.session_bandwidth is not None:
            parts.append(f"session_bandwidth {self.session_bandwidth} B/s")
        if self.quota is not None:
            parts.append(f"quota {self.quota.amount} B/{self.quota.period}")
        if self.sessions is not None:
            parts.append(f"sessions {self.sessions}")
        return ", ".join(parts) or "no limit"

    def matches(self, client: IPAddress | None, user: str | None, command: str) -> bool:
        """Whether the limit applies to a session of C{user} from C{client}."""
        if self.clients is not None and not client_in(client, self.clients):
            return False
        if self.users is not None and not user_matches(self.users, user):
            return False
        return self.commands is None or command in self.commands


def limit_key(client: IPAddress | None, user: str | None) -> str:
    """
    Whose counters a session counts against: the user's name, or without
    authentication the client's address (C{"ip:10.0.0.7"}; a user name
    cannot start with C{ip:} here because RFC 1929 names are matched as
    given and this prefix is reserved for the anonymous).
    """
    if user:
        return f"user:{user}"
    return f"ip:{client}" if client is not None else "ip:-"
