"""
The accounting's Prometheus metrics: totals only, never a key (a user name
or a client address would make the label set unbounded).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .accountant import Accountant

__all__ = ["AccountingCollector"]


class AccountingCollector(Collector):
    """Reads an L{Accountant}'s counters when Prometheus scrapes."""

    def __init__(self, accountant: Accountant) -> None:
        self.accountant = accountant

    def collect(self) -> Iterator[Metric]:
        a = self.accountant
        accounted = CounterMetricFamily(
            "socks5_accounting_bytes",
            "Bytes written to the accounting store: up from clients, down to them.",
            labels=["direction"],
        )
        accounted.add_metric(["up"], a.accounted.up)
        accounted.add_metric(["down"], a.accounted.down)
        yield accounted

        batches = CounterMetricFamily(
            "socks5_accounting_batches", "Batches written to the accounting store."
        )
        batches.add_metric([], a.batches)
        yield batches

        errors = CounterMetricFamily(
            "socks5_accounting_write_errors",
            "Batches the accounting store failed to write (kept and retried).",
        )
        errors.add_metric([], a.write_errors)
        yield errors

        seconds = GaugeMetricFamily(
            "socks5_accounting_write_seconds", "How long the last batch took to write."
        )
        seconds.add_metric([], a.write_seconds)
        yield seconds

        pending = GaugeMetricFamily(
            "socks5_accounting_pending_cells",
            "Counts (key and period) not yet written to the store.",
        )
        pending.add_metric([], a.pending_cells)
        yield pending

        up = GaugeMetricFamily(
            "socks5_accounting_store_up",
            "1 while the accounting store answers, 0 while it is away (counts kept in memory).",
        )
        up.add_metric([], 0 if a.away else 1)
        yield up

        fleet = a.fleet
        if fleet is not None:
            leases = GaugeMetricFamily(
                "socks5_fleet_session_leases",
                "Sessions of this process holding a lease under a fleet [[limit]] sessions.",
            )
            leases.add_metric([], len(fleet.leases))
            yield leases
            refused = CounterMetricFamily(
                "socks5_fleet_sessions_refused",
                "Requests refused by a fleet session limit, or while the store was away"
                " (--accounting-failure closed).",
            )
            refused.add_metric([], fleet.refused)
            yield refused
            unchecked = CounterMetricFamily(
                "socks5_fleet_sessions_unchecked",
                "Requests admitted on this process's count alone, the store being away"
                " (--accounting-failure open).",
            )
            unchecked.add_metric([], fleet.admitted_unchecked)
            yield unchecked

        over = GaugeMetricFamily(
            "socks5_quota_keys_over",
            "Users or client addresses found over their quota in the current periods.",
        )
        over.add_metric([], a.keys_over_quota)
        yield over
