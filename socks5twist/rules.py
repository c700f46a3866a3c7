"""
Access rules: who may go where, from a TOML file.

A rules file holds an ordered list of C{[[rule]]} tables and a C{default}
action; the first rule that matches a request decides it.  Within a rule every
field given must match (and any one entry of a list may): an empty rule
matches everything.

    default = "deny"

    [[rule]]
    name = "no cloud metadata, no loopback"
    action = "deny"
    destinations = ["169.254.169.254/32", "127.0.0.0/8", "::1/128"]

    [[rule]]
    action = "allow"
    users = ["alice", "anonymous"]
    commands = ["connect"]
    names = ["example.org", "*.example.org"]
    ports = [80, 443, "8000-8999"]

C{[[auth]]} tables choose the authentication methods by client network (the
first match wins; without a match, GSSAPI where configured, then a password
where there are checkers):

    [[auth]]
    clients = ["10.20.0.0/16"]
    method = "none"             # or "password", "gssapi", or a list of them

C{users} name user names as given, Kerberos principals
(C{alice@SOCKS.TEST}), or a whole realm (C{@SOCKS.TEST}).

An allow rule may also say how its requests leave: C{via},
C{upstreams}, C{egress} and C{password_file} (read by
L{socks5twist.routes.route_of} into L{Rule.route}).

C{[[limit]]} tables (bandwidth, quotas, concurrent sessions; see
L{socks5twist.limits}) are read here too, into L{Rules.limits}.

This module reads the file: L{parse} turns its text into L{Rules} (errors
name the line), L{load} reads a path, L{describe} lists the rules for the
start-up log.  What the rules are and how the first match decides is
L{socks5twist.ruleset}'s (re-exported here).  Reloading belongs to the
caller (L{socks5twist.service}).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Sequence
from typing import Any

from .limits import Limit, LimitError, parse_quota, parse_rate
from .names import InvalidName, canonical_pattern
from .networks import IPNetwork
from .routes import ROUTE_KEYS, RouteError, route_of
from .ruleset import (
    ALLOW_ALL,
    ANONYMOUS,
    AUTH_METHODS,
    COMMANDS,
    AuthRule,
    Decision,
    Query,
    Rule,
    Rules,
    Verdict,
)

__all__ = [
    "ALLOW_ALL",
    "ANONYMOUS",
    "COMMANDS",
    "AuthRule",
    "Decision",
    "Query",
    "Rule",
    "Rules",
    "RulesError",
    "Verdict",
    "describe",
    "load",
    "parse",
]


class RulesError(Exception):
    """A rules file that cannot be used; the message names the line and the problem."""


# -- parsing ------------------------------------------------------------------

_RULE_KEYS = {
    "name",
    "action",
    "clients",
    "users",
    "commands",
    "destinations",
    "names",
    "ports",
    *ROUTE_KEYS,
}
_AUTH_KEYS = {"clients", "method"}
_METHOD_CHOICES = ", ".join(f'"{m}"' for m in AUTH_METHODS[:-1]) + f' or "{AUTH_METHODS[-1]}"'
_LIMIT_KEYS = {
    "name",
    "clients",
    "users",
    "commands",
    "bandwidth",
    "session_bandwidth",
    "quota",
    "sessions",
    "disabled",
}


def parse(text: str, source: str = "rules") -> Rules:
    """Parse a rules file; L{RulesError} names the line and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{source}: {e}") from None
    locator = _Locator(text, source)
    unknown = set(data) - {"default", "rule", "auth", "limit"}
    if unknown:
        raise locator.error(None, None, sorted(unknown)[0], "unknown setting")
    if "default" not in data:
        raise RulesError(f'{source}: the file must state its default: default = "allow" or "deny"')
    default = _verdict(data["default"], locator, None, "default")
    rules = []
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise locator.error(None, None, "rule", "use [[rule]] tables")
    for i, raw in enumerate(raw_rules, start=1):
        rules.append(_rule(i, raw, locator))
    auth = []
    raw_auth = data.get("auth", [])
    if not isinstance(raw_auth, list):
        raise locator.error(None, None, "auth", "use [[auth]] tables")
    for i, raw in enumerate(raw_auth, start=1):
        auth.append(_auth_rule(i, raw, locator))
    raw_limits = data.get("limit", [])
    if not isinstance(raw_limits, list):
        raise locator.error(None, None, "limit", "use [[limit]] tables")
    limits = tuple(_limit(i, raw, locator) for i, raw in enumerate(raw_limits, start=1))
    return Rules(default, tuple(rules), tuple(auth), limits)


def load(path: str) -> Rules:
    """Read and parse a rules file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: {e}") from None
    return parse(text, path)


class _Locator:
    """Finds the line of a key inside the Nth [[rule]] or [[auth]] table, for errors."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def line_of(self, table: str | None, index: int | None, key: str) -> int | None:
        start, end = 0, len(self.lines)
        if table is not None and index is not None:
            headers = [n for n, line in enumerate(self.lines) if line.strip() == f"[[{table}]]"]
            if index - 1 < len(headers):
                start = headers[index - 1]
                later = [
                    n
                    for n, line in enumerate(self.lines)
                    if n > start and line.strip().startswith("[")
                ]
                end = later[0] if later else len(self.lines)
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for n in range(start, end):
            if pattern.match(self.lines[n]):
                return n + 1
        return start + 1 if table is not None else None

    def error(self, table: str | None, index: int | None, key: str, problem: str) -> RulesError:
        line = self.line_of(table, index, key)
        where = f"{self.source}, line {line}" if line else self.source
        what = f"[[{table}]] #{index}: {key}" if table else key
        return RulesError(f"{where}: {what}: {problem}")


def _verdict(value: object, locator: _Locator, index: int | None, key: str) -> Verdict:
    try:
        return Verdict(value)
    except ValueError:
        raise locator.error(
            "rule" if index else None, index, key, f'must be "allow" or "deny", not {value!r}'
        ) from None


def _strings(value: object, locator: _Locator, table: str, index: int, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise locator.error(table, index, key, "must be a non-empty list of strings")
    return list(value)


def _networks(
    value: object, locator: _Locator, table: str, index: int, key: str
) -> tuple[IPNetwork, ...]:
    networks = []
    for text in _strings(value, locator, table, index, key):
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as e:
            raise locator.error(table, index, key, f"{text!r}: {e}") from None
    return tuple(networks)


def _ports(value: object, locator: _Locator, index: int) -> tuple[tuple[int, int], ...]:
    if isinstance(value, (int, str)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise locator.error("rule", index, "ports", "must be a list of ports or ranges")
    ranges = []
    for item in value:
        if isinstance(item, bool):
            item = None
        if isinstance(item, int):
            lo = hi = item
        elif isinstance(item, str) and re.fullmatch(r"\d+\s*-\s*\d+", item):
            lo, hi = (int(p) for p in item.split("-"))
        elif isinstance(item, str) and item.isdigit():
            lo = hi = int(item)
        else:
            raise locator.error(
                "rule", index, "ports", f'{item!r} is not a port or a range like "8000-8999"'
            )
        if not (0 <= lo <= hi <= 65535):
            raise locator.error("rule", index, "ports", f"{item!r} is outside 0-65535 or reversed")
        ranges.append((lo, hi))
    return tuple(ranges)


def _users(value: object, locator: _Locator, table: str, index: int) -> frozenset[str]:
    """User names as given; C{"@REALM"} stands for every principal of the realm."""
    users = _strings(value, locator, table, index, "users")
    for user in users:
        if user.startswith("@") and (len(user) == 1 or "@" in user[1:]):
            raise locator.error(
                table, index, "users", f"{user!r}: a realm is @ and its name, as @EXAMPLE.ORG"
            )
    return frozenset(users)


def _commands(value: object, locator: _Locator, table: str, index: int) -> frozenset[str]:
    commands = frozenset(c.lower() for c in _strings(value, locator, table, index, "commands"))
    bad = commands - set(COMMANDS)
    if bad:
        raise locator.error(
            table, index, "commands", f"{sorted(bad)[0]!r} is not one of {', '.join(COMMANDS)}"
        )
    return commands


def _limit(index: int, raw: object, locator: _Locator) -> Limit:
    if not isinstance(raw, dict):
        raise locator.error("limit", index, "limit", "must be a table")
    unknown = set(raw) - _LIMIT_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise locator.error(
            "limit", index, key, f"unknown key (known: {', '.join(sorted(_LIMIT_KEYS))})"
        )
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise locator.error("limit", index, "name", "must be a string")
    values: dict[str, Any] = {}
    for key, parser in (
        ("bandwidth", parse_rate),
        ("session_bandwidth", parse_rate),
        ("quota", parse_quota),
    ):
        if key in raw:
            try:
                values[key] = parser(raw[key])
            except LimitError as e:
                raise locator.error("limit", index, key, str(e)) from None
    sessions = raw.get("sessions")
    if sessions is not None and (
        isinstance(sessions, bool) or not isinstance(sessions, int) or sessions < 1
    ):
        raise locator.error("limit", index, "sessions", "must be a whole number, at least 1")
    disabled = raw.get("disabled", False)
    if not isinstance(disabled, bool):
        raise locator.error("limit", index, "disabled", "must be true or false")
    return Limit(
        index=index,
        name=name,
        clients=_networks(raw["clients"], locator, "limit", index, "clients")
        if "clients" in raw
        else None,
        users=_users(raw["users"], locator, "limit", index) if "users" in raw else None,
        commands=_commands(raw["commands"], locator, "limit", index) if "commands" in raw else None,
        sessions=sessions,
        disabled=disabled,
        **values,
    )


def _rule(index: int, raw: object, locator: _Locator) -> Rule:
    if not isinstance(raw, dict):
        raise locator.error("rule", index, "rule", "must be a table")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise locator.error(
            "rule", index, key, f"unknown key (known: {', '.join(sorted(_RULE_KEYS))})"
        )
    if "action" not in raw:
        raise locator.error("rule", index, "action", 'missing: action = "allow" or "deny"')
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise locator.error("rule", index, "name", "must be a string")
    commands = _commands(raw["commands"], locator, "rule", index) if "commands" in raw else None
    names = None
    if "names" in raw:
        canonical = []
        for text in _strings(raw["names"], locator, "rule", index, "names"):
            try:
                canonical.append(canonical_pattern(text))
            except InvalidName as e:
                raise locator.error(
                    "rule", index, "names", f"{e.why} (a host name or *.suffix)"
                ) from None
        names = tuple(canonical)
    action = _verdict(raw["action"], locator, index, "action")
    try:
        route = route_of(raw)
    except RouteError as e:
        raise locator.error("rule", index, e.key or "rule", str(e)) from None
    if route is not None and action is Verdict.DENY:
        key = sorted(ROUTE_KEYS & set(raw))[0]
        raise locator.error("rule", index, key, "only an allow rule has a route")
    return Rule(
        index=index,
        action=action,
        name=name,
        clients=_networks(raw["clients"], locator, "rule", index, "clients")
        if "clients" in raw
        else None,
        users=_users(raw["users"], locator, "rule", index) if "users" in raw else None,
        commands=commands,
        destinations=(
            _networks(raw["destinations"], locator, "rule", index, "destinations")
            if "destinations" in raw
            else None
        ),
        names=names,
        ports=_ports(raw["ports"], locator, index) if "ports" in raw else None,
        route=route,
    )


def _auth_rule(index: int, raw: object, locator: _Locator) -> AuthRule:
    if not isinstance(raw, dict):
        raise locator.error("auth", index, "auth", "must be a table")
    unknown = set(raw) - _AUTH_KEYS
    if unknown:
        raise locator.error(
            "auth", index, sorted(unknown)[0], "unknown key (known: clients, method)"
        )
    if "clients" not in raw or "method" not in raw:
        raise locator.error(
            "auth", index, "clients", f"needs clients = [...] and method = {_METHOD_CHOICES}"
        )
    methods = raw["method"]
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list) or not methods:
        raise locator.error("auth", index, "method", f"must be {_METHOD_CHOICES} or a list of them")
    for method in methods:
        if method not in AUTH_METHODS:
            raise locator.error(
                "auth", index, "method", f"must be {_METHOD_CHOICES}, not {method!r}"
            )
    if len(set(methods)) != len(methods):
        raise locator.error("auth", index, "method", "names a method twice")
    line = locator.line_of("auth", index, "method")
    return AuthRule(
        _networks(raw["clients"], locator, "auth", index, "clients"),
        tuple(methods),
        f"{locator.source}, line {line}: [[auth]] #{index}",
    )


def describe(rules: Rules) -> Sequence[str]:
    """One line per rule and per limit, for the start-up log."""
    return (
        [
            f"{r.label}: {r.action.value}" + (f" {r.route.describe()}" if r.route else "")
            for r in rules.rules
        ]
        + [f"default: {rules.default.value}"]
        + [f"{limit.label}: {limit.describe()}" for limit in rules.limits]
    )
