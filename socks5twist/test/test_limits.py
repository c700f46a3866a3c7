"""
socks5twist.limits and the [[limit]] tables of the rules file: values parsed
exactly, errors that name the line, the first matching limit applies.
"""

from __future__ import annotations

import calendar
import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from socks5twist.limits import (
    Limit,
    LimitError,
    Quota,
    limit_key,
    parse_quota,
    parse_rate,
    parse_size,
)
from socks5twist.rules import RulesError, describe, parse

IP = ipaddress.ip_address


class SizeTests(SynchronousTestCase):
    def test_units(self) -> None:
        self.assertEqual(parse_size("512KiB"), 512 * 1024)
        self.assertEqual(parse_size("10GiB"), 10 << 30)
        self.assertEqual(parse_size("1.5GB"), 1_500_000_000)
        self.assertEqual(parse_size("2 mib"), 2 << 20)
        self.assertEqual(parse_size(4096), 4096)
        self.assertEqual(parse_size("100"), 100)

    def test_nonsense_is_refused(self) -> None:
        for bad in ["", "GiB", "10 GiBs", "-1MiB", "0", 0, True, "1e9", "10 parsecs", "1/2"]:
            with self.assertRaises(LimitError, msg=repr(bad)):
                parse_size(bad)  # type: ignore[arg-type]

    def test_rates_and_quotas(self) -> None:
        self.assertEqual(parse_rate("2MiB/s"), 2 << 20)
        self.assertEqual(parse_rate(1000), 1000)
        self.assertEqual(parse_quota("10GiB/month"), Quota(10 << 30, "month"))
        self.assertEqual(parse_quota("1TiB/total"), Quota(1 << 40, "total"))
        for bad in ["2MiB", "2MiB/min", "/s"]:
            with self.assertRaises(LimitError, msg=bad):
                parse_rate(bad)
        for bad in ["10GiB", "10GiB/week", "10GiB/Month", "x/day"]:
            with self.assertRaises(LimitError, msg=bad):
                parse_quota(bad)


class PeriodTests(SynchronousTestCase):
    def test_periods_are_utc(self) -> None:
        new_year = calendar.timegm((2026, 12, 31, 23, 59, 59))
        month = Quota(1, "month")
        day = Quota(1, "day")
        self.assertEqual(month.period_of(new_year), "2026-12")
        self.assertEqual(month.period_end(new_year), calendar.timegm((2027, 1, 1, 0, 0, 0)))
        self.assertEqual(month.period_of(new_year + 1), "2027-01")
        self.assertEqual(day.period_of(new_year), "2026-12-31")
        self.assertEqual(day.period_end(new_year), new_year + 1)
        self.assertEqual(
            Quota(1, "month").period_end(calendar.timegm((2028, 2, 10, 5, 0, 0))),
            calendar.timegm((2028, 3, 1, 0, 0, 0)),
        )
        self.assertEqual(Quota(1, "total").period_of(new_year), "total")
        self.assertIsNone(Quota(1, "total").period_end(new_year))


FILE = """\
default = "allow"

[[limit]]
name = "alice's plan"
users = ["alice"]
bandwidth = "2MiB/s"
session_bandwidth = "1MiB/s"
quota = "10GiB/month"
sessions = 20

[[limit]]
users = ["anonymous"]
clients = ["10.0.0.0/8"]
commands = ["udp"]
disabled = true

[[limit]]
bandwidth = 1000
"""


class FileTests(SynchronousTestCase):
    def test_tables_become_limits(self) -> None:
        rules = parse(FILE)
        alice, anonymous_udp, anyone = rules.limits
        self.assertEqual(
            alice,
            Limit(
                index=1,
                name="alice's plan",
                users=frozenset({"alice"}),
                bandwidth=2 << 20,
                session_bandwidth=1 << 20,
                quota=Quota(10 << 30, "month"),
                sessions=20,
            ),
        )
        self.assertEqual(alice.label, "[[limit]] #1 (alice's plan)")
        self.assertTrue(anonymous_udp.disabled)
        self.assertEqual(anyone.bandwidth, 1000)
        self.assertIn(
            "[[limit]] #1 (alice's plan): bandwidth 2097152 B/s, session_bandwidth 1048576 B/s, "
            "quota 10737418240 B/month, sessions 20",
            describe(rules),
        )

    def test_the_first_matching_limit_applies(self) -> None:
        rules = parse(FILE)
        self.assertEqual(rules.limit_for(IP("10.1.1.1"), "alice", "udp"), rules.limits[0])
        self.assertEqual(rules.limit_for(IP("10.1.1.1"), None, "udp"), rules.limits[1])
        self.assertEqual(rules.limit_for(IP("10.1.1.1"), None, "connect"), rules.limits[2])
        self.assertEqual(rules.limit_for(IP("192.0.2.1"), None, "udp"), rules.limits[2])
        self.assertIsNone(parse('default = "allow"\n').limit_for(IP("10.0.0.1"), "bob", "connect"))

    def test_errors_name_the_line(self) -> None:
        cases = [
            ('[[limit]]\nbandwidth = "2MiB"\n', "line 3: [[limit]] #1: bandwidth: "),
            ('[[limit]]\nquota = "1GiB/week"\n', "line 3: [[limit]] #1: quota: "),
            ("[[limit]]\nsessions = 0\n", "line 3: [[limit]] #1: sessions: "),
            ('[[limit]]\nsessions = "5"\n', "line 3: [[limit]] #1: sessions: "),
            ('[[limit]]\ndisabled = "yes"\n', "line 3: [[limit]] #1: disabled: "),
            ("[[limit]]\nusers = []\n", "line 3: [[limit]] #1: users: "),
            ('[[limit]]\ncommands = ["ping"]\n', "line 3: [[limit]] #1: commands: "),
            ('[[limit]]\nclients = ["10.0.0.1/8"]\n', "line 3: [[limit]] #1: clients: "),
            ('[[limit]]\nbandwith = "1MiB/s"\n', "line 3: [[limit]] #1: bandwith: unknown key"),
            ("limit = 5\n", "limit: use [[limit]] tables"),
        ]
        for body, expected in cases:
            with self.assertRaises(RulesError, msg=body) as caught:
                parse('default = "allow"\n' + body, "rules.toml")
            self.assertIn(expected, str(caught.exception), body)


class KeyTests(SynchronousTestCase):
    def test_users_share_by_name_the_anonymous_by_address(self) -> None:
        self.assertEqual(limit_key(IP("10.0.0.7"), "alice"), "user:alice")
        self.assertEqual(limit_key(IP("10.0.0.8"), "alice"), "user:alice")
        self.assertEqual(limit_key(IP("10.0.0.7"), None), "ip:10.0.0.7")
        self.assertNotEqual(limit_key(IP("10.0.0.7"), None), limit_key(IP("10.0.0.8"), None))
