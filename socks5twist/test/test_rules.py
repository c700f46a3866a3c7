"""Rules: parsing with line-numbered errors, matching, CIDR and port-range edges."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import rules
from socks5twist.rules import Query, RulesError, Verdict

EXAMPLE = """
default = "deny"

[[rule]]
name = "metadata"
action = "deny"
destinations = ["169.254.169.254/32", "127.0.0.0/8", "::1/128"]

[[rule]]
action = "allow"
users = ["alice", "anonymous"]
commands = ["connect"]
names = ["example.org", "*.example.org"]
ports = [80, 443, "8000-8999"]

[[rule]]
name = "office"
action = "allow"
clients = ["10.20.0.0/16"]

[[auth]]
clients = ["10.20.0.0/16"]
method = "none"
"""


def q(**kwargs: object) -> Query:
    defaults: dict[str, object] = {
        "client": ipaddress.ip_address("192.0.2.1"),
        "user": None,
        "command": "connect",
        "port": 443,
    }
    defaults.update(kwargs)
    return Query(**defaults)  # type: ignore[arg-type]


class ParseTests(SynchronousTestCase):
    def test_example(self) -> None:
        parsed = rules.parse(EXAMPLE)
        self.assertEqual(parsed.default, Verdict.DENY)
        self.assertEqual([r.label for r in parsed.rules], ["#1 (metadata)", "#2", "#3 (office)"])
        self.assertEqual(parsed.rules[1].ports, ((80, 80), (443, 443), (8000, 8999)))

    def assertError(self, text: str, *fragments: str) -> None:
        with self.assertRaises(RulesError) as caught:
            rules.parse(text, "r.toml")
        message = str(caught.exception)
        self.assertEqual(message.count("\n"), 0, message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_errors_name_the_line_and_the_problem(self) -> None:
        self.assertError(
            'default = "allow"\n[[rule]]\naction = "allow"\n\nclients = ["10.0.0.1/8"]\n',
            "r.toml, line 5",
            "clients",
            "host bits",
        )
        self.assertError('default = "allow"\n[[rule]]\naction = "maybe"\n', "line 3", "action")
        self.assertError(
            'default = "allow"\n[[rule]]\naction = "allow"\nports = ["90-80"]\n', "line 4", "ports"
        )
        self.assertError(
            'default = "allow"\n[[rule]]\naction = "allow"\nport = [80]\n', "line 4", "unknown key"
        )
        self.assertError(
            'default = "allow"\n[[rule]]\ncommands = ["connect"]\n', "action", "missing"
        )
        self.assertError(
            'default = "allow"\n[[rule]]\naction = "allow"\ncommands = ["ping"]\n',
            "line 4",
            "'ping'",
        )
        self.assertError(
            'default = "allow"\n[[rule]]\naction = "allow"\nnames = ["bad name"]\n',
            "line 4",
            "names",
        )
        self.assertError('[[rule]]\naction = "allow"\n', "default")
        self.assertError('default = "allow"\n[[rule]\naction = "allow"\n', "r.toml", "line 2")
        self.assertError(
            'default = "allow"\n[[auth]]\nclients = ["10.0.0.0/8"]\nmethod = "pw"\n',
            "line 4",
            "method",
        )

    def test_auth_method_is_one_name_or_a_list_in_order(self) -> None:
        parsed = rules.parse(
            'default = "allow"\n[[auth]]\nclients = ["10.0.0.0/8"]\n'
            'method = ["gssapi", "password"]\n'
            '[[auth]]\nclients = ["0.0.0.0/0"]\nmethod = "gssapi"\n',
            "r.toml",
        )
        self.assertEqual(
            [(a.methods, a.where) for a in parsed.auth],
            [
                (("gssapi", "password"), "r.toml, line 4: [[auth]] #1"),
                (("gssapi",), "r.toml, line 7: [[auth]] #2"),
            ],
        )

    def test_auth_method_errors_name_the_line(self) -> None:
        start = 'default = "allow"\n[[auth]]\nclients = ["10.0.0.0/8"]\n'
        self.assertError(start + "method = []\n", "line 4", "a list of them")
        self.assertError(start + 'method = ["gssapi", "kerberos"]\n', "line 4", "'kerberos'")
        self.assertError(start + 'method = ["gssapi", "gssapi"]\n', "line 4", "twice")
        self.assertError(start + "method = 1\n", "line 4", '"none", "password" or "gssapi"')

    def test_an_unconfigured_method_is_named_with_its_line_and_option(self) -> None:
        parsed = rules.parse(
            'default = "allow"\n[[auth]]\nclients = ["10.0.0.0/8"]\nmethod = "none"\n'
            '[[auth]]\nclients = ["0.0.0.0/0"]\nmethod = ["password", "gssapi"]\n',
            "r.toml",
        )
        self.assertEqual(
            parsed.unconfigured_method(password=True, gssapi=False),
            'r.toml, line 7: [[auth]] #2: method "gssapi" needs --gssapi',
        )
        self.assertEqual(
            parsed.unconfigured_method(password=False, gssapi=False),
            'r.toml, line 7: [[auth]] #2: method "password" needs --auth',
        )
        self.assertIsNone(parsed.unconfigured_method(password=True, gssapi=True))

    def test_a_realm_pattern_is_at_and_a_name(self) -> None:
        for bad in ('"@"', '"@A@B"'):
            self.assertError(
                f'default = "allow"\n[[rule]]\naction = "allow"\nusers = [{bad}]\n',
                "line 4",
                "a realm is @ and its name",
            )
        self.assertError(
            'default = "allow"\n[[limit]]\nusers = ["@"]\nsessions = 1\n', "line 3", "realm"
        )

    def test_ports_reject_out_of_range(self) -> None:
        for bad in ("[70000]", '["1-70000"]', "[true]", '["http"]'):
            with self.assertRaises(RulesError):
                rules.parse(f'default = "allow"\n[[rule]]\naction = "allow"\nports = {bad}\n')


class MatchTests(SynchronousTestCase):
    parsed = rules.parse(EXAMPLE)

    def decide(self, **kwargs: object) -> str | None:
        decision = self.parsed.decide(q(**kwargs))
        return None if decision is None else f"{decision.verdict.value} {decision.label}"

    def test_first_match_wins(self) -> None:
        ip = ipaddress.ip_address
        self.assertEqual(self.decide(address=ip("127.0.0.1"), port=80), "deny #1 (metadata)")
        self.assertEqual(
            self.decide(name="www.example.org", address=ip("93.184.215.14")), "allow #2"
        )
        self.assertEqual(self.decide(name="example.org", address=ip("93.184.215.14")), "allow #2")
        self.assertEqual(
            self.decide(name="badexample.org", address=ip("93.184.215.14")), "deny default"
        )
        self.assertEqual(
            self.decide(name="example.org", address=ip("93.184.215.14"), port=22), "deny default"
        )
        self.assertEqual(
            self.decide(name="example.org", address=ip("1.2.3.4"), user="bob"), "deny default"
        )
        self.assertEqual(
            self.decide(name="example.org", address=ip("1.2.3.4"), command="bind"), "deny default"
        )
        self.assertEqual(
            self.decide(client=ip("10.20.3.4"), address=ip("1.2.3.4")), "allow #3 (office)"
        )

    def test_a_name_is_undecided_until_resolved_when_an_address_rule_comes_first(self) -> None:
        self.assertIsNone(self.decide(name="example.org"))
        self.assertEqual(
            self.decide(name="example.org", address=ipaddress.ip_address("127.0.0.1")),
            "deny #1 (metadata)",
        )

    def test_an_unknown_destination_is_undecided_only_by_destination_rules(self) -> None:
        parsed = rules.parse('default = "allow"\n[[rule]]\naction = "deny"\ncommands = ["udp"]\n')
        self.assertEqual(parsed.decide(q(command="udp", port=None)).verdict, Verdict.DENY)  # type: ignore[union-attr]
        # Rule #1 (deny, by destination) cannot decide, but every rule that
        # could allow UDP is out, so the default (deny) decides at once.
        self.assertEqual(self.parsed.decide(q(command="udp", port=None)).label, "default")  # type: ignore[union-attr]
        allowing = rules.parse(EXAMPLE.replace('default = "deny"', 'default = "allow"'))
        self.assertIsNone(allowing.decide(q(command="udp", port=None)))

    def test_a_name_a_deny_rule_refuses_is_not_looked_up_first(self) -> None:
        """An undecided deny rule before a deny by name: the name is refused at once."""
        parsed = rules.parse(
            'default = "allow"\n[[rule]]\naction = "deny"\ndestinations = ["127.0.0.0/8"]\n'
            '[[rule]]\naction = "deny"\nnames = ["*.blocked.test"]\n'
            '[[rule]]\naction = "allow"\nnames = ["ok.test"]\n'
        )
        self.assertEqual(parsed.decide(q(name="x.blocked.test")).label, "#2")  # type: ignore[union-attr]
        self.assertIsNone(parsed.decide(q(name="ok.test")), "#1 may still deny its addresses")

    def test_auth_rules(self) -> None:
        ip = ipaddress.ip_address
        self.assertEqual(self.parsed.auth_methods(ip("10.20.1.1")), ("none",))
        self.assertIsNone(self.parsed.auth_methods(ip("10.21.1.1")))

    def test_a_realm_matches_its_principals_exactly(self) -> None:
        parsed = rules.parse(
            'default = "deny"\n[[rule]]\naction = "allow"\nusers = ["@SOCKS.TEST", "bob"]\n'
            '[[limit]]\nusers = ["@SOCKS.TEST"]\nsessions = 1\n'
        )
        allowed = {
            "alice@SOCKS.TEST": True,
            "rcmd/host@SOCKS.TEST": True,
            "bob": True,
            "alice@socks.test": False,  # realms are case-sensitive
            "alice@SOCKS.TEST.EVIL": False,
            "alice@OTHER.SOCKS.TEST": False,
            "alice\\@SOCKS.TEST": False,  # an escaped @ is part of the name
            "alice\\\\@SOCKS.TEST": True,  # an escaped backslash, then the realm
            "mallory": False,
        }
        for user, expected in allowed.items():
            decision = parsed.decide(q(user=user, address=ipaddress.ip_address("192.0.2.9")))
            assert decision is not None
            self.assertEqual(decision.allowed, expected, user)
            limit = parsed.limit_for(None, user, "connect")
            self.assertEqual(limit is not None, expected and user != "bob", user)
        self.assertFalse(parsed.decide(q(user=None)).allowed)  # type: ignore[union-attr]

    def test_ipv4_allow_rules_never_match_ipv6(self) -> None:
        parsed = rules.parse(
            'default = "deny"\n[[rule]]\naction = "allow"\ndestinations = ["1.2.3.0/24"]\n'
        )
        for spelling in ("64:ff9b::102:304", "2002:102:304::1", "::102:304"):
            decision = parsed.decide(q(address=ipaddress.ip_address(spelling)))
            self.assertEqual(decision.verdict, Verdict.DENY, spelling)  # type: ignore[union-attr]

    def test_deny_rules_match_every_spelling_of_a_denied_address(self) -> None:
        """NAT64, 6to4, IPv4-compatible and Teredo addresses carry an IPv4 address."""
        parsed = rules.parse(
            'default = "allow"\n[[rule]]\naction = "deny"\n'
            'destinations = ["127.0.0.0/8", "192.0.2.45/32"]\n'
        )
        for spelling in (
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "::7f00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo for 192.0.2.45
        ):
            decision = parsed.decide(q(address=ipaddress.ip_address(spelling)))
            self.assertEqual(decision.label, "#1", spelling)  # type: ignore[union-attr]
        decision = parsed.decide(q(address=ipaddress.ip_address("2001:db8::1")))
        self.assertEqual(decision.verdict, Verdict.ALLOW)  # type: ignore[union-attr]

    def test_the_unspecified_address_is_refused_whatever_the_rules(self) -> None:
        parsed = rules.parse('default = "allow"\n[[rule]]\naction = "allow"\n')
        for spelling in ("0.0.0.0", "0.1.2.3", "::", "64:ff9b::", "2002::1"):
            for command in ("connect", "udp"):
                decision = parsed.decide(q(address=ipaddress.ip_address(spelling), command=command))
                self.assertFalse(decision.allowed, spelling)  # type: ignore[union-attr]
                self.assertEqual(decision.label, "built-in (the unspecified address)")  # type: ignore[union-attr]

    def test_multicast_and_broadcast_need_an_allow_rule_that_names_them(self) -> None:
        ip = ipaddress.ip_address
        everything = rules.parse('default = "allow"\n[[rule]]\naction = "allow"\nports = [1900]\n')
        named = rules.parse(
            'default = "deny"\n[[rule]]\naction = "allow"\ndestinations = ["239.255.255.250/32"]\n'
        )
        for address in ("239.255.255.250", "224.0.0.251", "ff02::fb", "255.255.255.255"):
            decision = everything.decide(q(address=ip(address), port=1900, command="udp"))
            self.assertFalse(decision.allowed, address)  # type: ignore[union-attr]
        decision = named.decide(q(address=ip("239.255.255.250"), port=1900, command="udp"))
        self.assertTrue(decision.allowed)  # type: ignore[union-attr]
        decision = named.decide(q(address=ip("224.0.0.251"), port=5353, command="udp"))
        self.assertFalse(decision.allowed)  # type: ignore[union-attr]

    def test_unicode_name_patterns_match_their_punycode(self) -> None:
        parsed = rules.parse(
            'default = "allow"\n[[rule]]\naction = "deny"\n'
            'names = ["*.Bücher.test", "ＥＶＩＬ.test."]\n'
        )
        for name in ("www.xn--bcher-kva.test", "evil.test"):
            self.assertEqual(self.deny_label(parsed, name), "#1", name)

    def test_a_name_pattern_that_is_no_name_is_an_error(self) -> None:
        for bad in ('"bad name"', '"127.0.0.1"', '"a\\u0000b"'):
            with self.assertRaises(RulesError):
                rules.parse(f'default = "allow"\n[[rule]]\naction = "deny"\nnames = [{bad}]\n')

    def test_unix_socket_clients_match_loopback_networks(self) -> None:
        for networks, matches in (
            ('["127.0.0.0/8"]', True),
            ('["::1/128"]', True),
            ('["10.0.0.0/8"]', False),
        ):
            parsed = rules.parse(
                f'default = "allow"\n[[rule]]\naction = "deny"\nclients = {networks}\n'
            )
            decision = parsed.decide(q(client=None, address=ipaddress.ip_address("192.0.2.1")))
            self.assertEqual(not decision.allowed, matches, networks)  # type: ignore[union-attr]

    def deny_label(self, parsed: rules.Rules, name: str) -> str | None:
        decision = parsed.decide(q(name=name, address=ipaddress.ip_address("192.0.2.1")))
        return None if decision is None or decision.allowed else decision.label


class PropertyTests(SynchronousTestCase):
    @given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
    def test_cidr_membership_agrees_with_ipaddress(
        self, base: int, prefix: int, probe: int
    ) -> None:
        network = ipaddress.IPv4Network((base, prefix), strict=False)
        parsed = rules.parse(
            f'default = "allow"\n[[rule]]\naction = "deny"\ndestinations = ["{network}"]\n'
        )
        address = ipaddress.IPv4Address(probe)
        decision = parsed.decide(q(address=address))
        assert decision is not None
        builtin = (
            address in ipaddress.IPv4Network("0.0.0.0/8")
            or address.is_multicast
            or (address == ipaddress.IPv4Address("255.255.255.255"))
        )
        self.assertEqual(decision.verdict is Verdict.DENY, address in network or builtin)
        # The network's own edges are inside it.
        for edge in (network.network_address, network.broadcast_address):
            self.assertEqual(parsed.decide(q(address=edge)).verdict, Verdict.DENY)  # type: ignore[union-attr]

    @given(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535))
    def test_port_ranges_are_inclusive(self, a: int, b: int, port: int) -> None:
        lo, hi = min(a, b), max(a, b)
        parsed = rules.parse(
            f'default = "deny"\n[[rule]]\naction = "allow"\nports = ["{lo}-{hi}"]\n'
        )
        for p, inside in ((port, lo <= port <= hi), (lo, True), (hi, True)):
            decision = parsed.decide(q(port=p, address=ipaddress.ip_address("192.0.2.9")))
            self.assertEqual(decision.verdict is Verdict.ALLOW, inside)  # type: ignore[union-attr]
        if lo > 0:
            decision = parsed.decide(q(port=lo - 1, address=ipaddress.ip_address("192.0.2.9")))
            self.assertEqual(decision.verdict, Verdict.DENY)  # type: ignore[union-attr]
