"""
The one gate every client and request passes: the client allow-list, the
access rules and the limits, answered in one place.

A session asks, at each step, and the gate says yes or no:

  - L{Gate.admit_connection}, as a connection is accepted: the per-client
    limit (C{--max-sessions-per-client}), then C{--max-clients};
  - L{Gate.admit_client}, at the greeting: the allow-list (C{--allow-client});
  - L{Gate.methods}: the authentication methods this client may use, the
    preferred first (the rules' C{[[auth]]} tables choose by network);
  - L{Gate.admit_login}: logins in progress from one address;
  - L{Gate.admit_request}: the per-user limit (C{--max-sessions-per-user});
  - L{Gate.admit_limit}: the request's C{[[limit]]} (C{disabled}, C{sessions});
  - L{Gate.decide}: the rules, for a command to a destination;
  - L{Gate.admit_udp}: UDP associations per client (C{--max-udp-per-client});
  - L{Gate.admit_quota}: the quota of a request's C{[[limit]]}, as the
    accounting (L{socks5twist.accounting}) counts it.

A limit that says yes hands out a L{Slot}, which the holder releases (once:
a second release does nothing); one that says no hands out a L{Refusal} and
has already counted it (L{Gate.limited}, by limit) and logged it, so a caller
only replies and closes.  Refusals a client can repeat at will (limits on
connections and logins, the allow-list) are logged once per burst
(L{socks5twist.bursts}).  Denials by the rules are counted by rule when the
session acts on them (L{Gate.denied}): a denied address among allowed ones
is not a denial of the request.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

from .accounting.accountant import quota_text
from .addresses import IPAddress
from .bursts import BurstLog
from .codec import Method, Reply
from .limits import Limit, limit_key
from .logs import count
from .logsafe import escape, field
from .policy import ClientPolicy
from .ruleset import Decision, Query, Rules

if TYPE_CHECKING:
    from .accounting import Accountant
    from .limits import Limit

__all__ = ["MAX_LOGINS_PER_CLIENT", "Gate", "Refusal", "Slot"]

# Logins one client address may have in progress at once (checks of hashed
# passwords take a shared pool's time).
MAX_LOGINS_PER_CLIENT = 8


@dataclass(frozen=True, slots=True)
class Refusal:
    """
    The gate said no; C{outcome} is what the session's record says, and
    C{reply} the reply code for a request (X'02' unless the server, not
    the client, is why).
    """

    outcome: str
    reply: Reply = Reply.NOT_ALLOWED


class Slot:
    """
    A place under one or more limits, held until L{release}d.  Releasing
    twice releases once, so a holder may release on every path out.
    """

    __slots__ = ("_counts",)

    def __init__(self, *counts: tuple[collections.Counter[Any], Hashable]) -> None:
        self._counts = counts

    def release(self) -> None:
        counts, self._counts = self._counts, ()
        for counter, key in counts:
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]  # no key outlives what it counts


_NONE = (Method.NO_AUTHENTICATION,)
# How [[auth]] tables name the methods, and the server's own order of
# preference among those that authenticate.
_BY_NAME = {
    "none": Method.NO_AUTHENTICATION,
    "gssapi": Method.GSSAPI,
    "password": Method.USERNAME_PASSWORD,
}
_AUTHENTICATING = (Method.GSSAPI, Method.USERNAME_PASSWORD)

# A place under no limit at all.
UNLIMITED = Slot()


class Gate:
    """
    The allow-list, the rules and the limits of one server (see the module
    docstring).  C{rules} may be replaced at any time (a reload): every
    decision reads them.

    @param log: where refusals are logged (at warn level).
    """

    def __init__(
        self,
        reactor: Any,
        log: Logger,
        *,
        clients: ClientPolicy,
        rules: Rules,
        max_clients: int,
        max_sessions_per_client: int | None,
        max_sessions_per_user: int | None,
        max_udp_per_client: int,
        max_logins_per_client: int = MAX_LOGINS_PER_CLIENT,
    ) -> None:
        self.clients = clients
        self.rules = rules
        self.max_clients = max_clients
        self.max_sessions_per_client = max_sessions_per_client
        self.max_sessions_per_user = max_sessions_per_user
        self.max_udp_per_client = max_udp_per_client
        self.max_logins_per_client = max_logins_per_client
        self._log = log
        self.refusals = BurstLog(reactor, log)
        # What is held now, by key (a key counted down to nothing is gone).
        self.sessions: collections.Counter[None] = collections.Counter()  # all, under None
        self.client_sessions: collections.Counter[IPAddress | None] = collections.Counter()
        self.user_sessions: collections.Counter[str] = collections.Counter()
        self.logins: collections.Counter[IPAddress | None] = collections.Counter()
        self.udp_associations: collections.Counter[IPAddress] = collections.Counter()
        # Sessions under a [[limit]] with `sessions`, by limit and key (a
        # limit that a reload leaves as it was keeps its count).
        self.limit_sessions: collections.Counter[tuple[Limit, str]] = collections.Counter()
        # What was refused: by limit, and by the rule that denied.
        self.limited: collections.Counter[str] = collections.Counter()
        self.denials: collections.Counter[str] = collections.Counter()
        # What counts quotas (None: no accounting, so no quota either).
        self.accountant: Accountant | None = None

    # -- clients ---------------------------------------------------------------

    def admit_connection(self, ip: IPAddress | None, client: str) -> Slot | Refusal:
        """
        A connection from C{ip} (C{None}: a Unix socket; C{client} is how
        logs show it) was accepted.  It counts against its own client's
        limit first, then against everyone's: no single address can fill
        C{max_clients} with silent connections.
        """
        per_client = self.max_sessions_per_client
        if per_client is not None and self.client_sessions[ip] >= per_client:
            return self._refuse(
                "max-sessions-per-client",
                "too many sessions from this client",
                ("per-client", ip),
                "refused {client}: {sessions} open from it (--max-sessions-per-client)",
                client=client,
                n=per_client,
                sessions=count(per_client, "session"),
            )
        if self.sessions[None] >= self.max_clients:
            return self._refuse(
                "max-clients",
                "too many clients",
                "max-clients",
                "refused {client}: {sessions} open, the limit (--max-clients)",
                client=client,
                n=self.max_clients,
                sessions=count(self.max_clients, "session"),
            )
        self.sessions[None] += 1
        if per_client is None:
            # Counted per client only under a limit: no work per session otherwise.
            return Slot((self.sessions, None))
        self.client_sessions[ip] += 1
        return Slot((self.sessions, None), (self.client_sessions, ip))

    def admit_client(self, address: IAddress, ip: IPAddress | None, client: str) -> Refusal | None:
        """Whether the allow-list serves a client at C{address} (C{None}: it does)."""
        if self.clients.allows(address, ip):
            return None
        return self._refuse(
            None,
            "client not allowed",
            ("not allowed", ip),
            "refused client {client}: not in the allowed client networks",
            client=client,
        )

    def methods(self, ip: IPAddress | None, password: bool, gssapi: bool) -> tuple[Method, ...]:
        """
        The authentication methods a client at C{ip} may use, the preferred
        first, given what the server offers (C{password}: it has checkers;
        C{gssapi}: it is configured for GSSAPI).

        Without a matching C{[[auth]]}: GSSAPI, then a password; neither
        configured, no authentication.  With one: the table's methods in its
        order; where it names C{"none"}, every other configured method
        follows (a client that may skip authentication may still log in: one
        that offers only a password gets to use it).  A method the
        server does not offer is left out (start-up and reload refuse such
        a table, but a library's rules are not checked): a table left with
        nothing refuses every method rather than falling back to none.
        """
        offered = {Method.GSSAPI: gssapi, Method.USERNAME_PASSWORD: password}
        named = self.rules.auth_methods(ip)
        if named is None:
            return tuple(m for m in _AUTHENTICATING if offered[m]) or _NONE
        methods = [_BY_NAME[name] for name in named]
        if Method.NO_AUTHENTICATION in methods:
            methods += [m for m in _AUTHENTICATING if m not in methods]
        return tuple(m for m in methods if offered.get(m, True))

    def admit_login(self, ip: IPAddress | None, client: str) -> Slot | Refusal:
        """
        A login from C{ip} is to be checked.  Costly checks are shared by
        all: one address may not queue more than a few of them (a flood of
        logins from one client would otherwise lock everyone else out).
        """
        if self.logins[ip] >= self.max_logins_per_client:
            return self._refuse(
                "logins-per-client",
                "too many logins in progress from this client",
                ("logins", ip),
                "refused a login from {client}: {logins} in progress from it",
                client=client,
                n=self.max_logins_per_client,
                logins=count(self.max_logins_per_client, "login"),
            )
        self.logins[ip] += 1
        return Slot((self.logins, ip))

    # -- requests --------------------------------------------------------------

    def admit_request(self, user: str | None, command: str, client: str) -> Slot | Refusal:
        """A request (C{command}, its name for logs) of C{user}: the per-user limit."""
        limit = self.max_sessions_per_user
        if user is None or limit is None:
            return UNLIMITED
        if self.user_sessions[user] >= limit:
            self.limited["max-sessions-per-user"] += 1
            self._log.warn(
                "refused {command} for user {user} from {client}: "
                "{sessions} open (--max-sessions-per-user)",
                command=command,
                user=field(user),
                client=client,
                n=limit,
                sessions=count(limit, "session"),
            )
            return Refusal("too many sessions for this user")
        self.user_sessions[user] += 1
        return Slot((self.user_sessions, user))

    def admit_limit(
        self, ip: IPAddress | None, user: str | None, command: str, client: str
    ) -> tuple[Limit | None, Slot] | Refusal:
        """
        The C{[[limit]]} a request (C{command}: connect, bind, udp) falls
        under, and a place under its C{sessions} per key; or a refusal when
        the limit is C{disabled} or the key's sessions are all taken.
        """
        limit = self.rules.limit_for(ip, user, command)
        if limit is None:
            return None, UNLIMITED
        if limit.disabled:
            return self._refuse_by_limit(limit, "limit-disabled", command, user, client, "disabled")
        if limit.sessions is None:
            return limit, UNLIMITED
        key = (limit, limit_key(ip, user))
        if self.limit_sessions[key] >= limit.sessions:
            why = f"{limit.sessions} sessions open (sessions = {limit.sessions})"
            return self._refuse_by_limit(limit, "limit-sessions", command, user, client, why)
        self.limit_sessions[key] += 1
        return limit, Slot((self.limit_sessions, key))

    def _refuse_by_limit(
        self, limit: Limit, counted: str, command: str, user: str | None, client: str, why: str
    ) -> Refusal:
        self.limited[counted] += 1
        label = escape(limit.label)
        self._log.warn(
            "refused {command} for {client} user={user}: refused by {limit}: {why}",
            command=command.upper(),
            client=client,
            user=field(user),
            limit=label,
            why=why,
        )
        return Refusal(f"refused by {label}: {why}")

    def decide(self, query: Query) -> Decision | None:
        """What the rules say (C{None}: they need the address; resolve, ask again)."""
        return self.rules.decide(query)

    def denied(self, decision: Decision) -> None:
        """A request, BIND peer or datagram was refused by C{decision}: count it."""
        self.denials[decision.label] += 1

    def admit_udp(self, ip: IPAddress, client: str) -> Slot | Refusal:
        """A UDP association for the client at C{ip}."""
        if self.udp_associations[ip] >= self.max_udp_per_client:
            self.limited["max-udp-per-client"] += 1
            self._log.warn(
                "refused UDP ASSOCIATE from {client}: {associations} open (--max-udp-per-client)",
                client=client,
                n=self.max_udp_per_client,
                associations=count(self.max_udp_per_client, "association"),
            )
            return Refusal("too many UDP associations for this client")
        self.udp_associations[ip] += 1
        return Slot((self.udp_associations, ip))

    # -- quotas ----------------------------------------------------------------

    def admit_quota(
        self, key: str, limit: Limit | None, command: str, client: str
    ) -> Refusal | None:
        """
        Whether a request of C{key} (a user, or a client address without a
        login) under C{limit} may go on: not once the limit's quota is used
        up in its current period.  Logged once per burst and key (a client
        may ask again at once, and again).
        """
        accountant = self.accountant
        if accountant is None or limit is None or limit.quota is None:
            return None
        quota = limit.quota
        if accountant.away and accountant.fail_closed:
            self.limited["accounting-away"] += 1
            self.refusals.refused(
                ("accounting away", key),
                "refused {command} for {who} from {client}: {limit} has a quota and"
                " {store} is away (--accounting-failure closed)",
                command=command,
                who=field(key),
                client=client,
                limit=escape(limit.label),
                store=accountant.description,
            )
            return Refusal("the accounting store is away", Reply.GENERAL_FAILURE)
        if not accountant.over_quota(key, quota):
            return None
        return self._refuse(
            "quota",
            "quota used",
            ("quota", key),
            "refused {command} for {who} from {client}: {why}",
            command=command,
            who=field(key),
            client=client,
            why=quota_text(limit, quota),
        )

    # --------------------------------------------------------------------------

    def _refuse(
        self, limit: str | None, outcome: str, key: Hashable, format: str, **fields: object
    ) -> Refusal:
        """Count a refusal under C{limit} and log it once per burst (under C{key})."""
        if limit is not None:
            self.limited[limit] += 1
        self.refusals.refused(key, format, **fields)
        return Refusal(outcome)
