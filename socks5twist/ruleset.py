"""
Access rules as values, and how they decide: the first rule that matches a
L{Query} decides it (L{Rules.decide}), and C{[[auth]]} tables say how
clients of a network authenticate (L{Rules.auth_methods}).

Pure: no I/O.  Reading a rules file into L{Rules} is L{socks5twist.rules}'s;
asking them goes through L{socks5twist.gate}.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .addresses import IPAddress
from .codec import Command
from .networks import (
    IPNetwork,
    client_in,
    destination_classes,
    in_networks,
    spellings,
)

if TYPE_CHECKING:
    from .limits import Limit
    from .routes import Route

__all__ = [
    "ALLOW_ALL",
    "ANONYMOUS",
    "AUTH_METHODS",
    "COMMANDS",
    "COMMAND_NAMES",
    "AuthRule",
    "Decision",
    "Query",
    "Rule",
    "Rules",
    "Verdict",
    "user_matches",
]

COMMANDS = ("connect", "bind", "udp")
# How the rules (and the metrics) name each command.
COMMAND_NAMES = {Command.CONNECT: "connect", Command.BIND: "bind", Command.UDP_ASSOCIATE: "udp"}
ANONYMOUS = "anonymous"
# The authentication methods an [[auth]] table may name.
AUTH_METHODS = ("none", "password", "gssapi")


def user_matches(users: frozenset[str], user: str | None) -> bool:
    """
    Whether a rule's C{users} name C{user} (C{None}: no authentication,
    which C{"anonymous"} names): by the name itself, or by its realm, as
    C{"@SOCKS.TEST"} names every Kerberos principal C{...@SOCKS.TEST}.
    Realms compare exactly (Kerberos' realms are case-sensitive).
    """
    name = user or ANONYMOUS
    if name in users:
        return True
    at = name.rfind("@")
    if at <= 0:
        return False
    # An "@" escaped in a component (MIT writes it "\@") does not start a realm.
    backslashes = len(name[:at]) - len(name[:at].rstrip("\\"))
    return backslashes % 2 == 0 and name[at:] in users


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
    # How an allow rule's requests leave (upstream proxies, egress
    # addresses); None: directly, from --outgoing-address.
    route: Route | None = None

    @property
    def label(self) -> str:
        """How logs and metrics name the rule: its index, and its name if any."""
        return f"#{self.index}" + (f" ({self.name})" if self.name else "")

    def matches(self, query: Query) -> bool | None:
        """C{True}/C{False}, or C{None} if it depends on an address not known yet."""
        if self.clients is not None and not client_in(query.client, self.clients):
            return False
        if self.users is not None and not user_matches(self.users, query.user):
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
    """
    One C{[[auth]]} table: its clients may use C{methods} (names of
    L{AUTH_METHODS}), the preferred first.  C{where} names the table for
    errors (C{rules.toml, line 12: [[auth]] #1}).
    """

    clients: tuple[IPNetwork, ...]
    methods: tuple[str, ...]
    where: str = field(default="[[auth]]", compare=False)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    rule: Rule | None  # None: the file's default, or a built-in refusal
    builtin: str | None = None  # why a built-in refusal refused

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def route(self) -> Route | None:
        """How the requests it allows leave (C{None}: directly, from --outgoing-address)."""
        return self.rule.route if self.rule is not None else None

    @property
    def upstream(self) -> bool:
        """Whether the requests it allows go through upstream proxies."""
        return self.rule is not None and self.rule.route is not None and self.rule.route.upstream

    @property
    def label(self) -> str:
        if self.rule is not None:
            return self.rule.label
        return f"built-in ({self.builtin})" if self.builtin else "default"


UNSPECIFIED_REFUSED = Decision(Verdict.DENY, None, "the unspecified address")
GROUP_REFUSED = Decision(Verdict.DENY, None, "multicast or broadcast, not named by an allow rule")
# The file's default, decided (one each: no Decision built per request).
_BY_DEFAULT = {verdict: Decision(verdict, None) for verdict in Verdict}


@dataclass(frozen=True, slots=True)
class Rules:
    default: Verdict
    rules: tuple[Rule, ...] = ()
    auth: tuple[AuthRule, ...] = field(default=())
    limits: tuple[Limit, ...] = field(default=())

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
            unspecified, group = destination_classes(address)
            if unspecified:
                return UNSPECIFIED_REFUSED
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
        if undecided and (undecided - {self.default} or group):
            return None
        return GROUP_REFUSED if group else _BY_DEFAULT[self.default]

    def limit_for(self, client: IPAddress | None, user: str | None, command: str) -> Limit | None:
        """The first C{[[limit]]} that applies to a request, or C{None}."""
        for limit in self.limits:
            if limit.matches(client, user, command):
                return limit
        return None

    def auth_methods(self, client: IPAddress | None) -> tuple[str, ...] | None:
        """
        The methods the first C{[[auth]]} that matches C{client} names, the
        preferred first; C{None} when none matches (the server's defaults
        apply: see L{socks5twist.gate.Gate.methods}).
        """
        for auth in self.auth:
            if client_in(client, auth.clients):
                return auth.methods
        return None

    def unconfigured_method(self, *, password: bool, gssapi: bool) -> str | None:
        """
        Why an C{[[auth]]} table cannot work (C{None}: every one can): it
        names a method the server does not offer (C{password}: it has
        checkers; C{gssapi}: GSSAPI is configured), which would refuse its
        clients every method.
        """
        missing = {
            "password": None if password else "--auth",
            "gssapi": None if gssapi else "--gssapi",
        }
        for auth in self.auth:
            for method in auth.methods:
                option = missing.get(method)
                if option is not None:
                    return f'{auth.where}: method "{method}" needs {option}'
        return None


ALLOW_ALL = Rules(Verdict.ALLOW)


def _name_matches(pattern: str, name: str) -> bool:
    # Both are canonical (names.canonical and canonical_pattern).
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.org"
        return name.endswith(suffix)
    return name == pattern
