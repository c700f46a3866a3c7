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

C{[[auth]]} tables choose the authentication method by client network (the
first match wins; without a match, checkers mean a password is required):

    [[auth]]
    clients = ["10.20.0.0/16"]
    method = "none"

This module is pure: parsing text into L{Rules} and deciding on a
L{Request}.  Loading files and reloading them belongs to the caller.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field

from .names import InvalidName, canonical_pattern
from .policy import (
    IPAddress,
    IPNetwork,
    client_in,
    in_networks,
    is_group_destination,
    is_unspecified_destination,
    spellings,
)

COMMANDS = ("connect", "bind", "udp")
ANONYMOUS = "anonymous"


class RulesError(Exception):
    """A rules file that cannot be used; the message names the line and the problem."""


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Query:
    """
    What a rule is asked about.

    C{address} is C{None} while a destination is known only by name (before
    resolution): rules that look at addresses cannot decide such a query.
    C{port} is C{None} when the destination is not known at all (a UDP
    association, a BIND for any peer): then only rules that ignore the
    destination can decide.
    """

    client: IPAddress | None
    user: str | None
    command: str
    port: int | None
    name: str | None = None
    address: IPAddress | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    index: int  # 1-based, as a reader counts the [[rule]] tables
    action: Verdict
    name: str | None = None
    clients: tuple[IPNetwork, ...] | None = None
    users: frozenset[str] | None = None
    commands: frozenset[str] | None = None
    destinations: tuple[IPNetwork, ...] | None = None
    names: tuple[str, ...] | None = None
    ports: tuple[tuple[int, int], ...] | None = None

    @property
    def label(self) -> str:
        """How logs and metrics name the rule: its index, and its name if any."""
        return f"#{self.index}" + (f" ({self.name})" if self.name else "")

    def matches(self, query: Query) -> bool | None:
        """C{True}/C{False}, or C{None} if it depends on an address not known yet."""
        if self.clients is not None and not client_in(query.client, self.clients):
            return False
        if self.users is not None and (query.user or ANONYMOUS) not in self.users:
            return False
        if self.commands is not None and query.command not in self.commands:
            return False
        if query.port is None:
            # The destination is not known yet.
            if self.ports is None and self.names is None and self.destinations is None:
                return True
            return None
        port = query.port
        if self.ports is not None and not any(lo <= port <= hi for lo, hi in self.ports):
            return False
        if self.names is not None and (
            query.name is None or not any(_name_matches(p, query.name) for p in self.names)
        ):
            return False
        if self.destinations is not None:
            if query.address is None:
                return None
            if self.action is Verdict.DENY:
                # A denied network is denied in every spelling that may
                # lead to it (64:ff9b::7f00:1 for 127.0.0.1, 6to4, ...).
                return any(in_networks(a, self.destinations) for a in spellings(query.address))
            return in_networks(query.address, self.destinations)
        return True

    def names_address(self, address: IPAddress) -> bool:
        """Whether this rule's C{destinations} name C{address} explicitly."""
        return self.destinations is not None and in_networks(address, self.destinations)


@dataclass(frozen=True, slots=True)
class AuthRule:
    clients: tuple[IPNetwork, ...]
    require_password: bool


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    rule: Rule | None  # None: the file's default, or a built-in refusal
    builtin: str | None = None  # why a built-in refusal refused

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def label(self) -> str:
        if self.rule is not None:
            return self.rule.label
        return f"built-in ({self.builtin})" if self.builtin else "default"


UNSPECIFIED_REFUSED = Decision(Verdict.DENY, None, "the unspecified address")
GROUP_REFUSED = Decision(Verdict.DENY, None, "multicast or broadcast, not named by an allow rule")


@dataclass(frozen=True, slots=True)
class Rules:
    default: Verdict
    rules: tuple[Rule, ...] = ()
    auth: tuple[AuthRule, ...] = field(default=())

    def decide(self, query: Query) -> Decision | None:
        """
        The first matching rule's decision, or C{None} when a rule that needs
        the destination's address comes first and the query has none (ask
        again with each resolved address).

        Whatever the rules say, two kinds of destination address are refused
        (the BIND peer, which is the address a connection came from, aside):
        the unspecified address (C{0.0.0.0/8}, C{::}, in any spelling),
        which the kernel connects to this host; and multicast or the limited
        broadcast, unless the allow rule that matches names the address in
        its C{destinations} (a proxy must not be a way onto its LAN's SSDP or
        mDNS by a rule that meant hosts).
        """
        address = query.address
        group = False
        if address is not None and query.command != "bind":
            if is_unspecified_destination(address):
                return UNSPECIFIED_REFUSED
            group = is_group_destination(address)
        # Actions of the rules that cannot decide yet: when every one of them
        # would say what a later rule says, that rule decides now (so a name
        # that a deny rule refuses is never looked up just because a deny
        # rule about addresses comes first).
        undecided: set[Verdict] = set()
        for rule in self.rules:
            matched = rule.matches(query)
            if matched is None:
                undecided.add(rule.action)
                continue
            if matched:
                if group and rule.action is Verdict.ALLOW and not rule.names_address(address):  # type: ignore[arg-type]
                    continue
                if undecided - {rule.action}:
                    return None
                return Decision(rule.action, rule)
        if undecided - {self.default} or (undecided and group):
            return None
        return GROUP_REFUSED if group else Decision(self.default, None)

    def password_required(self, client: IPAddress | None, have_checkers: bool) -> bool:
        """Whether a client must authenticate, by the first matching C{[[auth]]}."""
        if not have_checkers:
            return False
        for auth in self.auth:
            if client_in(client, auth.clients):
                return auth.require_password
        return True


ALLOW_ALL = Rules(Verdict.ALLOW)


def _name_matches(pattern: str, name: str) -> bool:
    # Both are canonical (names.canonical and canonical_pattern).
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.org"
        return name.endswith(suffix)
    return name == pattern


# -- parsing ------------------------------------------------------------------

_RULE_KEYS = {"name", "action", "clients", "users", "commands", "destinations", "names", "ports"}
_AUTH_KEYS = {"clients", "method"}


def parse(text: str, source: str = "rules") -> Rules:
    """Parse a rules file; L{RulesError} names the line and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{source}: {e}") from None
    locator = _Locator(text, source)
    unknown = set(data) - {"default", "rule", "auth"}
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
    return Rules(default, tuple(rules), tuple(auth))


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
    commands = None
    if "commands" in raw:
        commands = frozenset(
            c.lower() for c in _strings(raw["commands"], locator, "rule", index, "commands")
        )
        bad = commands - set(COMMANDS)
        if bad:
            raise locator.error(
                "rule", index, "commands", f"{sorted(bad)[0]!r} is not one of {', '.join(COMMANDS)}"
            )
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
    return Rule(
        index=index,
        action=_verdict(raw["action"], locator, index, "action"),
        name=name,
        clients=_networks(raw["clients"], locator, "rule", index, "clients")
        if "clients" in raw
        else None,
        users=frozenset(_strings(raw["users"], locator, "rule", index, "users"))
        if "users" in raw
        else None,
        commands=commands,
        destinations=(
            _networks(raw["destinations"], locator, "rule", index, "destinations")
            if "destinations" in raw
            else None
        ),
        names=names,
        ports=_ports(raw["ports"], locator, index) if "ports" in raw else None,
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
            "auth", index, "clients", 'needs clients = [...] and method = "none" or "password"'
        )
    method = raw["method"]
    if method not in ("none", "password"):
        raise locator.error(
            "auth", index, "method", f'must be "none" or "password", not {method!r}'
        )
    return AuthRule(
        _networks(raw["clients"], locator, "auth", index, "clients"), method == "password"
    )


def describe(rules: Rules) -> Sequence[str]:
    """One line per rule, for the start-up log."""
    return [f"{r.label}: {r.action.value}" for r in rules.rules] + [
        f"default: {rules.default.value}"
    ]
