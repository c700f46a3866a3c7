"""
L{SOCKS5ServerFactory}: the SOCKS5 server as a Twisted factory, for any
server endpoint.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from .accesslog import AccessLog
from .accounting import Accountant, AccountingStore, quota_without_store
from .accounting.fleet import FleetRefusal, FleetSessions
from .accounting.redisstore import RedisStore
from .auth import gssapi_acceptance
from .drain import DEFAULT_DRAIN_TIMEOUT
from .gate import Gate, Refusal, Slot
from .gss import ServerSettings
from .limits import Limit, limit_key
from .liveusers import rematch
from .networks import IPNetwork, parse_network
from .policy import ALLOW_ANY, LOOPBACK_ONLY, ClientPolicy
from .record import SessionRecord, log_record
from .ruleset import ALLOW_ALL, Rules
from .session import SOCKS5ServerProtocol
from .shaping import Shaper, Shaping
from .splice import available as splice_available
from .timers import Deadlines
from .upstream import Upstreams

if TYPE_CHECKING:
    from .metrics import Metrics


@dataclass
class Stats:
    """Plain counters of ended sessions (live ones are read from the sessions)."""

    connections: int = 0
    auth_failures: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    ended: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    udp_datagrams: collections.Counter[str] = field(default_factory=collections.Counter)
    udp_dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    udp_locks: collections.Counter[str] = field(default_factory=collections.Counter)
    # Running sessions closed on SIGHUP, by reason (user-removed, disabled).
    closed: collections.Counter[str] = field(default_factory=collections.Counter)
    # Logins that succeeded, by (method, protection): ("password", "none"),
    # ("gssapi", "confidentiality"), ...
    logins: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)


class SOCKS5ServerFactory(ServerFactory):
    """
    Builds a L{SOCKS5ServerProtocol} per client connection, and holds what
    its sessions share: the configuration, the L{Gate} (allow-list, rules,
    limits), the statistics, and where session lines go.

    @param portal: a L{Portal} whose checkers take L{IUsernamePassword}
        credentials (with C{bytes} fields, as RFC 1929 sends them) and whose
        realm gives L{socks5twist.auth.ISOCKSUser} avatars.  C{None} (the
        default) serves without authentication.
    @param reactor: the reactor for outbound connections and timers; the
        global reactor by default.
    @param handshake_timeout: seconds a client has to finish negotiating
        (greeting, authentication and request); 0 disables.
    @param connect_timeout: seconds for the outbound connection, name
        resolution included; 0 disables.
    @param idle_timeout: seconds without traffic either way after which a
        tunnel is closed; 0 (the default) never closes one.
    @param drain_timeout: seconds that what is left for one side of a
        tunnel whose other side has closed may go without moving (that side
        reads nothing) before the tunnel is reset; 0 never resets one.
    @param max_clients: the most concurrent client connections; the next one
        is closed at once.
    @param bind_timeout: seconds a BIND waits for its peer to connect.
    @param external_address: the IP address advertised in BIND replies
        instead of the one the client reached (for a proxy behind NAT).
    @param udp_interface: the local address of UDP ASSOCIATE's client-facing
        port; by default the address the client reached.
    @param udp_any_source: relay datagrams to the client from any remote
        address, not only from those it has sent to.
    @param max_udp_per_client: the most UDP associations one client IP may
        hold open at once.
    @param rules: access rules (L{socks5twist.ruleset.Rules}, as
        L{socks5twist.rules.load} reads them from a file); the default
        allows everything.  Replace C{factory.rules} (the gate's) to change
        them: sessions read them at each decision.
    @param max_sessions_per_client: the most concurrent sessions per client
        IP (C{None}: no limit); the next is closed before negotiating.
    @param max_sessions_per_user: the most concurrent sessions per
        authenticated user; the next request gets X'02'.
    @param outgoing_addresses: at most one IPv4 and one IPv6 address that
        outbound CONNECT sockets, BIND listeners and UDP relay sockets towards
        destinations bind to.
    @param splice: relay open tunnels with C{splice(2)} where both ends
        allow it (the default where the platform has it); C{False} always
        uses the stream relay.
    @param allowed_clients: the client networks (L{ipaddress} networks or
        their text) that may use the server.  By default, loopback only
        without a portal, and any address with one.
    @param access_log: where each session's line goes instead of Twisted's
        log (L{socks5twist.accesslog.AccessLog}); the owner closes it.
    @param resolver: the L{IHostnameResolver} that destination names are
        looked up with (they reach it only in canonical form, see
        L{socks5twist.names}); by default the reactor's, which asks the system
        resolver in a thread.
    @param trusted_proxies: the networks (L{ipaddress} networks or their
        text) of the load balancers whose PROXY-protocol header a listener
        wrapped in L{socks5twist.proxylistener.ProxyHeaderFactory} believes;
        empty (the default): such a listener refuses every connection.
    @param accounting: where what each user (or client address) relayed is
        counted, per UTC day, month and in total
        (L{socks5twist.accounting.SQLiteStore}, or another
        L{socks5twist.accounting.AccountingStore}); the C{[[limit]]} quotas
        of C{rules} need one.  C{factory.accountant} counts into it, once
        started: L{socks5twist.service.SOCKS5Service} starts it and stops it
        (writing what is left); a program without that service calls
        C{factory.accountant.start()} before its reactor runs, and
        C{factory.accountant.stop()} (a Deferred) before it stops.  A store
        that holds session leases (L{socks5twist.accounting.RedisStore}) also
        holds the C{sessions} of the C{[[limit]]} tables across every process
        sharing it (C{factory.fleet}).
    @param accounting_failure: C{"open"} (the default) or C{"closed"}: while
        the store is away, whether requests under a quota or a fleet session
        limit are judged by this process's own counts, or refused (X'01').
    @param gssapi: offer GSSAPI authentication (RFC 1961) with these
        settings (L{socks5twist.gss.ServerSettings}: the service, the keytab,
        the protection levels); needs the C{gssapi} package
        (C{socks5twist[gssapi]}).  The initiator's principal is the session's
        user.  Raises L{ValueError} when the keytab cannot accept.
    """

    protocol = SOCKS5ServerProtocol  # type: ignore[assignment]
    noisy = False
    log = Logger()

    def __init__(
        self,
        portal: Portal | None = None,
        *,
        reactor: Any = None,
        handshake_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        idle_timeout: float = 0.0,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        max_clients: int = 4096,
        allowed_clients: Iterable[IPNetwork | str] | None = None,
        bind_timeout: float = 120.0,
        external_address: str | None = None,
        udp_interface: str | None = None,
        udp_any_source: bool = False,
        max_udp_per_client: int = 16,
        rules: Rules | None = None,
        max_sessions_per_client: int | None = None,
        max_sessions_per_user: int | None = None,
        outgoing_addresses: Iterable[str] = (),
        splice: bool | None = None,
        access_log: AccessLog | None = None,
        resolver: IHostnameResolver | None = None,
        trusted_proxies: Iterable[IPNetwork | str] = (),
        accounting: AccountingStore | None = None,
        accounting_failure: str = "open",
        gssapi: ServerSettings | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        for name, value in (
            ("handshake_timeout", handshake_timeout),
            ("connect_timeout", connect_timeout),
            ("idle_timeout", idle_timeout),
            ("drain_timeout", drain_timeout),
            ("bind_timeout", bind_timeout),
        ):
            if value < 0:
                raise ValueError(f"{name} must be 0 or more, not {value}")
        if accounting_failure not in ("open", "closed"):
            raise ValueError(f"accounting_failure is open or closed, not {accounting_failure!r}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, not {max_clients}")
        if accounting is None and rules is not None:
            unremembered = quota_without_store(rules)
            if unremembered is not None:
                raise ValueError(f"{unremembered}: pass accounting=SQLiteStore(PATH)")
        for name, limit in (
            ("max_udp_per_client", max_udp_per_client),
            ("max_sessions_per_client", max_sessions_per_client),
            ("max_sessions_per_user", max_sessions_per_user),
        ):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1, not {limit}")
        self.portal = portal
        # GSSAPI (RFC 1961): the settings, the acceptor credentials every
        # session shares (a keytab that cannot serve fails now) and the
        # portal its users reach the realm through (see auth.py).
        self.gssapi = gssapi
        self.gss_credentials: Any = None
        self.gss_portal: Portal | None = None
        if gssapi is not None:
            self.gss_credentials, self.gss_portal = gssapi_acceptance(gssapi, portal)
        self.reactor = reactor
        self.handshakes = Deadlines(reactor, handshake_timeout, _handshake_timed_out)
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self.bind_timeout = bind_timeout
        self.external_address = (
            None if external_address is None else str(ipaddress.ip_address(external_address))
        )
        self.udp_interface = None if udp_interface is None else ipaddress.ip_address(udp_interface)
        self.udp_any_source = udp_any_source
        self.outgoing: dict[int, str] = {}
        for text in outgoing_addresses:
            ip = ipaddress.ip_address(text)
            if ip.version in self.outgoing:
                raise ValueError(f"one outgoing address per IP version: {text} is the second")
            self.outgoing[ip.version] = str(ip)
        self.splice = splice_available() if splice is None else splice and splice_available()
        self.access_log = access_log
        self._resolver = resolver
        self.stats = Stats()
        # Upstream proxies that failed, and routed sessions (kept across reloads).
        self.upstreams = Upstreams(reactor)
        self.metrics: Metrics | None = None
        # Called when the last session ends (a draining service listens).
        self.on_idle: Callable[[], None] | None = None
        if allowed_clients is None:
            authenticated = portal is not None or gssapi is not None
            clients = ALLOW_ANY if authenticated else LOOPBACK_ONLY
        else:
            clients = ClientPolicy(
                parse_network(n) if isinstance(n, str) else n for n in allowed_clients
            )
        # Refusals are logged as the sessions' own lines.
        self.gate = Gate(
            reactor,
            SOCKS5ServerProtocol.log,
            clients=clients,
            rules=rules or ALLOW_ALL,
            max_clients=max_clients,
            max_sessions_per_client=max_sessions_per_client,
            max_sessions_per_user=max_sessions_per_user,
            max_udp_per_client=max_udp_per_client,
        )
        self.sessions: set[SOCKS5ServerProtocol] = set()  # the sessions the gate admitted
        self.accountant = (
            None
            if accounting is None
            else Accountant(reactor, accounting, fail_closed=accounting_failure == "closed")
        )
        self.gate.accountant = self.accountant
        # The [[limit]] sessions across a fleet, when the store can hold leases.
        self.fleet: FleetSessions | None = None
        if self.accountant is not None and isinstance(accounting, RedisStore):
            self.fleet = self.accountant.fleet = FleetSessions(reactor, self.accountant)
        self.shaper = Shaper()  # the [[limit]] tables' bandwidth buckets
        self.trusted_proxies: tuple[IPNetwork, ...] = tuple(
            parse_network(n) if isinstance(n, str) else n for n in trusted_proxies
        )

    @property
    def resolver(self) -> IHostnameResolver:
        """The resolver in use (the reactor's unless one was given)."""
        return self._resolver or self.reactor.nameResolver  # type: ignore[no-any-return]

    @property
    def rules(self) -> Rules:
        """The access rules (the gate's); set to replace them (a reload)."""
        return self.gate.rules

    @rules.setter
    def rules(self, rules: Rules) -> None:
        self.gate.rules = rules
        rematch(self)

    def shaping_for(
        self,
        limit: Limit | None,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        user: str | None,
    ) -> Shaping | None:
        """
        The bandwidth budgets of a request under C{limit} (C{None}: none)
        from C{ip} as C{user}.  While the rules have no C{[[limit]]} at all,
        none: such a session's relay is not shaped, and costs nothing.
        Otherwise every session gets budgets, so that a reload may limit it.
        """
        if not self.gate.rules.limits:
            return None
        return self.shaper.shaping(limit, limit_key(ip, user))

    @property
    def client_policy(self) -> ClientPolicy:
        """The client allow-list (the gate's)."""
        return self.gate.clients

    @property
    def handshake_timeout(self) -> float:
        return self.handshakes.timeout

    @handshake_timeout.setter
    def handshake_timeout(self, seconds: float) -> None:
        self.handshakes.timeout = seconds

    def enable_metrics(self) -> Metrics:
        """Start keeping Prometheus metrics (see L{socks5twist.metrics})."""
        from .metrics import Metrics

        if self.metrics is None:
            self.metrics = Metrics(self)
        return self.metrics

    def admit(self, session: SOCKS5ServerProtocol) -> Slot | Refusal:
        """
        Count an accepted connection and ask the gate to admit it; an
        admitted session is live (in C{sessions}) until L{session_ended}.
        """
        self.stats.connections += 1
        admitted = self.gate.admit_connection(session.client_ip, session.client_text)
        if not isinstance(admitted, Refusal):
            self.sessions.add(session)
        return admitted

    def request_received(self, session: SOCKS5ServerProtocol) -> None:
        """Count a request, and how long its negotiation took."""
        self.stats.requests[session.command_label] += 1
        if self.metrics is not None:
            self.metrics.handshake.observe(time.time() - session.started)

    def account_request(self, session: SOCKS5ServerProtocol) -> Refusal | None:
        """
        A request's quota and its accounting: C{None} (it goes on, and what
        it relays counts against its key from now on), or the gate's
        refusal (logged, counted).  Without accounting, nothing to do.
        """
        accountant = self.accountant
        if accountant is None or session.command is None:
            return None
        limit = self.gate.rules.limit_for(session.client_ip, session.user, session.command_label)
        key = limit_key(session.client_ip, session.user)
        refusal = self.gate.admit_quota(key, limit, session.command.name, session.client_text)
        if refusal is None:
            accountant.watch(session, key, limit)
        return refusal

    def fleet_admit(self, session: SOCKS5ServerProtocol) -> Deferred[FleetRefusal | None] | None:
        """
        The fleet's answer for a request whose C{[[limit]]} counts sessions
        (a Deferred: the store's thread asks Redis), or C{None} when there is
        nothing to ask (no fleet, or no C{sessions} in the limit).
        """
        limit = session.limit
        if self.fleet is None or limit is None or limit.sessions is None:
            return None
        key = limit_key(session.client_ip, session.user)
        return self.fleet.admit(session, limit, key, session.command_label, session.client_text)

    def auth_failed(self) -> None:
        self.stats.auth_failures += 1

    def session_ended(self, session: SOCKS5ServerProtocol) -> None:
        """Count a session out and write its log line."""
        self.sessions.discard(session)
        if not self.sessions and self.on_idle is not None:
            self.reactor.callLater(0, self._idle_now)
        if self.accountant is not None:
            self.accountant.ended(session)
        if self.fleet is not None:
            self.fleet.release(session)
        udp = session.udp
        stats = self.stats
        stats.ended[(session.command_label, session.reply_label)] += 1
        if udp is not None:
            stats.udp_datagrams["up"] += udp.up_datagrams
            stats.udp_datagrams["down"] += udp.down_datagrams
            stats.udp_dropped.update(udp.dropped)
            stats.udp_locks[udp.lock.value] += 1
        record = SessionRecord.of(session)
        stats.bytes_up += record.up
        stats.bytes_down += record.down
        if self.access_log is not None:
            self.access_log.write(record.line())
        else:
            log_record(self.log, record)

    def _idle_now(self) -> None:
        if not self.sessions and self.on_idle is not None:
            self.on_idle()


def _handshake_timed_out(session: Any) -> None:
    # One timer (timers.Deadlines) serves every session's handshake.
    session.handshake_timed_out()
