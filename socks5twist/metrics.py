"""
Prometheus metrics for a L{SOCKS5ServerFactory}, served at C{/metrics}.

Nothing here runs per chunk of data: the factory and its sessions keep plain
integer counters, and a collector reads them (and the live sessions' own
counters) only when Prometheus scrapes.  Label values are closed sets
(commands, reply codes, directions, drop reasons, rule labels from the
operator's own file): never user names or destinations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web import resource, server

from .udp import Lock

if TYPE_CHECKING:
    from .factory import SOCKS5ServerFactory

UDP_LOCKS = tuple(lock.value for lock in Lock)
LOGIN_LABELS = (
    ("password", "none"),
    ("gssapi", "clear"),
    ("gssapi", "integrity"),
    ("gssapi", "confidentiality"),
)
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The registry of one factory: its collector and the handshake histogram."""

    def __init__(self, factory: SOCKS5ServerFactory) -> None:
        self.registry = CollectorRegistry()
        self.handshake = Histogram(
            "socks5_handshake_seconds",
            "Time from connection to a complete request (greeting, authentication, request).",
            buckets=HANDSHAKE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_FactoryCollector(factory))
        if factory.accountant is not None:
            from .accounting.collector import AccountingCollector

            self.registry.register(AccountingCollector(factory.accountant))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FactoryCollector(Collector):
    def __init__(self, factory: SOCKS5ServerFactory) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        f = self.factory
        stats = f.stats
        connections = CounterMetricFamily(
            "socks5_connections", "Client connections accepted (before any limit)."
        )
        connections.add_metric([], stats.connections)
        yield connections

        started = CounterMetricFamily(
            "socks5_sessions_started", "Requests received, by command.", labels=["command"]
        )
        for command, n in sorted(stats.requests.items()):
            started.add_metric([command], n)
        yield started

        ended = CounterMetricFamily(
            "socks5_sessions_ended",
            "Sessions ended, by command (none: no request) and last reply code.",
            labels=["command", "reply"],
        )
        for (command, reply), n in sorted(stats.ended.items()):
            ended.add_metric([command, reply], n)
        yield ended

        active = GaugeMetricFamily(
            "socks5_sessions_active",
            "Sessions open now, by command (negotiating: no request yet).",
            labels=["command"],
        )
        counts: dict[str, int] = {"negotiating": 0, "connect": 0, "bind": 0, "udp": 0}
        live_up = live_down = 0
        live_datagrams = {"up": 0, "down": 0}
        live_drops: dict[str, int] = {}
        live_locks: dict[str, int] = {}
        for session in f.sessions:
            counts[session.command_label] += 1
            if session.relay is not None:
                live_up += session.relay.up
                live_down += session.relay.down
            if session.udp is not None:
                live_up += session.udp.up_bytes
                live_down += session.udp.down_bytes
                live_datagrams["up"] += session.udp.up_datagrams
                live_datagrams["down"] += session.udp.down_datagrams
                for reason, n in session.udp.dropped.items():
                    live_drops[reason] = live_drops.get(reason, 0) + n
                lock = session.udp.lock.value
                live_locks[lock] = live_locks.get(lock, 0) + 1
        for command, n in counts.items():
            active.add_metric([command], n)
        yield active

        relayed = CounterMetricFamily(
            "socks5_bytes",
            "Bytes relayed: up from clients, down to them (UDP: payload bytes).",
            labels=["direction"],
        )
        relayed.add_metric(["up"], stats.bytes_up + live_up)
        relayed.add_metric(["down"], stats.bytes_down + live_down)
        yield relayed

        auth = CounterMetricFamily(
            "socks5_auth_failures",
            "Authentications that failed (username/password, or GSSAPI at any step).",
        )
        auth.add_metric([], stats.auth_failures)
        yield auth

        logins = CounterMetricFamily(
            "socks5_logins",
            "Authentications that succeeded, by method (password, gssapi) and GSSAPI"
            " protection level (none for a password).",
            labels=["method", "protection"],
        )
        for method, protection in LOGIN_LABELS:
            logins.add_metric([method, protection], stats.logins[(method, protection)])
        yield logins

        denials = CounterMetricFamily(
            "socks5_rule_denials",
            "Requests, BIND peers and UDP destinations denied, by rule.",
            labels=["rule"],
        )
        for label, n in sorted(f.gate.denials.items()):
            denials.add_metric([label], n)
        yield denials

        limited = CounterMetricFamily(
            "socks5_limit_refusals",
            "Connections or requests refused by a limit.",
            labels=["limit"],
        )
        for limit, n in sorted(f.gate.limited.items()):
            limited.add_metric([limit], n)
        yield limited

        closed = CounterMetricFamily(
            "socks5_sessions_closed_by_limit",
            "Running sessions closed: quota used up, user removed or disabled (on SIGHUP).",
            labels=["reason"],
        )
        quota_closures = f.accountant.quota_closures if f.accountant is not None else 0
        closed.add_metric(["quota"], quota_closures)
        for reason in ("user-removed", "disabled"):
            closed.add_metric([reason], stats.closed[reason])
        yield closed

        datagrams = CounterMetricFamily(
            "socks5_udp_datagrams",
            "UDP datagrams relayed: up from clients, down to them.",
            labels=["direction"],
        )
        for direction in ("up", "down"):
            datagrams.add_metric(
                [direction], stats.udp_datagrams[direction] + live_datagrams[direction]
            )
        yield datagrams

        dropped = CounterMetricFamily(
            "socks5_udp_dropped", "UDP datagrams dropped, by reason.", labels=["reason"]
        )
        reasons = set(stats.udp_dropped) | set(live_drops)
        for reason in sorted(reasons):
            dropped.add_metric([reason], stats.udp_dropped[reason] + live_drops.get(reason, 0))
        yield dropped

        associations = CounterMetricFamily(
            "socks5_udp_associations",
            "UDP associations opened, by how the client's UDP address was fixed "
            "(exact: as the request named it; ip, unspecified, nat: by the first datagram).",
            labels=["lock"],
        )
        for lock in UDP_LOCKS:
            associations.add_metric([lock], stats.udp_locks[lock] + live_locks.get(lock, 0))
        yield associations
        yield from _route_metrics(f)


def _route_metrics(f: SOCKS5ServerFactory) -> Iterator[Metric]:
    """
    Routes (L{socks5twist.upstream.Upstreams}): labels are rules, and chains
    and hops as the operator's rules files name them (no credentials).
    """
    upstreams = f.upstreams
    tunnels = CounterMetricFamily(
        "socks5_route_tunnels",
        "CONNECT tunnels opened by a rule's route, by rule and route"
        " (the chain of upstream proxies, or egress).",
        labels=["rule", "route"],
    )
    for (rule, route), n in sorted(upstreams.tunnels.items()):
        tunnels.add_metric([rule, route], n)
    yield tunnels
    hops = CounterMetricFamily(
        "socks5_upstream_failures",
        "Attempts through an upstream proxy that failed there (it was marked down), by hop.",
        labels=["hop"],
    )
    for hop, n in sorted(upstreams.hop_failures.items()):
        hops.add_metric([hop], n)
    yield hops
    failed = CounterMetricFamily(
        "socks5_route_failures",
        "CONNECT requests that failed because every route of their rule failed, by rule.",
        labels=["rule"],
    )
    for rule, n in sorted(upstreams.route_failures.items()):
        failed.add_metric([rule], n)
    yield failed


class MetricsResource(resource.Resource):
    """C{/metrics}, in Prometheus' text format."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return self.metrics.render()


class _QuietSite(server.Site):
    """
    A site that writes no access log: each Prometheus scrape would otherwise
    add a web access line to the server's log (every 15 s, forever).
    """

    def log(self, request: Any) -> None:
        pass


def site(metrics: Metrics) -> server.Site:
    """A web site with the metrics at C{/metrics} and nothing else, logging no requests."""
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(metrics))
    web = _QuietSite(root)
    web.noisy = False
    web.displayTracebacks = False
    return web
