"""L{socks5twist.routes} and the rules file's route keys: parsing, errors, egress choice."""

from __future__ import annotations

import ipaddress
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from socks5twist.gsswire import Protection
from socks5twist.routes import (
    RouteError,
    egress_for,
    parse_hop,
    read_password_file,
)
from socks5twist.rules import RulesError, describe, parse
from socks5twist.test.helpers import without_module


def rules_with(route: str, action: str = "allow") -> str:
    return f'default = "deny"\n\n[[rule]]\naction = "{action}"\n{route}\n'


class HopTests(SynchronousTestCase):
    def test_socks5_with_credentials_percent_decoded(self) -> None:
        hop = parse_hop("socks5://al%40ice:p%3Aw@127.0.0.1:1080", {})
        self.assertEqual((hop.scheme, hop.host, hop.port), ("socks5", "127.0.0.1", 1080))
        self.assertEqual(hop.credentials, (b"al@ice", b"p:w"))

    def test_socks5h_is_socks5_and_hosts_are_canonical(self) -> None:
        self.assertEqual(
            parse_hop("socks5h://Proxy.Example.:1080", {}).label, "socks5://proxy.example:1080"
        )
        self.assertEqual(parse_hop("http://[::1]:3128", {}).label, "http://[::1]:3128")

    def test_label_and_repr_never_show_the_password(self) -> None:
        hop = parse_hop("http://bob:Hunter2@10.0.0.1:3128", {})
        self.assertEqual(hop.label, "http://10.0.0.1:3128")
        self.assertNotIn("Hunter2", repr(hop))
        self.assertIn("user=bob", repr(hop))

    def test_password_file_fills_missing_credentials_only(self) -> None:
        passwords = {("10.0.0.1", 1080): (b"file", b"pw")}
        self.assertEqual(
            parse_hop("socks5://10.0.0.1:1080", passwords).credentials, (b"file", b"pw")
        )
        url = "socks5://url:u@10.0.0.1:1080"
        self.assertEqual(parse_hop(url, passwords).credentials, (b"url", b"u"))
        self.assertIsNone(parse_hop("socks5://10.0.0.2:1080", passwords).credentials)

    def test_bad_urls_say_why_without_the_password(self) -> None:
        for url, why in (
            ("socks4://127.0.0.1:1080", "scheme"),
            ("socks5://127.0.0.1", "scheme://"),
            ("socks5://127.0.0.1:0", "outside"),
            ("socks5://127.0.0.1:70000", "outside"),
            ("socks5://bad\x00name:1080", "invalid name"),
            ("socks5://[nothex]:1080", "scheme://"),
            ("socks5://u:Secret1@h:1080/path", "scheme://"),
            # A password may hold "/", "@" and ":": all of it stays hidden.
            ("socks5://u:Sec/ret1@h:1080", "'socks5://u:<hidden>@h:1080'"),
            ("socks5://u:Sec@ret1@h:notaport", "'socks5://u:<hidden>@h:notaport'"),
            ("socks5://u:Sec:ret1@h:1080x", "'socks5://u:<hidden>@h:1080x'"),
            # The host forgotten: the password stands where the port would.
            ("socks5://u:Secret1", "'socks5://u:<hidden>'"),
        ):
            with self.assertRaises(RouteError) as caught:
                parse_hop(url, {})
            self.assertIn(why, str(caught.exception), url)
            self.assertNotIn("Secret1", str(caught.exception))
            self.assertNotIn("ret1", str(caught.exception))


class TLSHopTests(SynchronousTestCase):
    def write(self, data: bytes) -> str:
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def ca_pem(self) -> bytes:
        from twisted.internet.ssl import KeyPair

        pem: bytes = KeyPair.generate().selfSignedCert(1, CN="test CA").dumpPEM()
        return pem

    def test_socks5s_and_https_are_their_protocols_over_tls(self) -> None:
        hop = parse_hop("socks5s://Proxy.Example:1080", {})
        self.assertEqual((hop.scheme, hop.tls, hop.label), ("socks5", True, hop.label))
        self.assertEqual(hop.label, "socks5s://proxy.example:1080")
        https = parse_hop("https://u:Pw@[::1]:3128", {})
        self.assertEqual(
            (https.scheme, https.tls, https.label), ("http", True, "https://[::1]:3128")
        )
        # Not the same upstream as the one without TLS (marks are per chain).
        self.assertNotEqual(hop, parse_hop("socks5://proxy.example:1080", {}))

    def test_ca_file_gives_its_certificates_to_the_tls_hops(self) -> None:
        pem = self.ca_pem()
        path = self.write(b"a comment\n" + pem + pem)
        parsed = parse(
            rules_with(
                f'via = ["socks5://10.0.0.1:1080", "https://10.0.0.2:443"]\nca_file = "{path}"'
            ),
            "rules.toml",
        )
        [plain, tls] = parsed.rules[0].route.chains[0]  # type: ignore[union-attr]
        self.assertEqual((plain.ca, tls.ca), (None, b"a comment\n" + pem + pem))

    def test_ca_file_errors_name_the_key_and_the_file(self) -> None:
        no_certificate = self.write(b"nothing here\n")
        broken = self.write(
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
        )
        for route, expected in (
            (
                'via = ["socks5s://10.0.0.1:1"]\nca_file = "/nonexistent"',
                "ca_file: ca_file /nonexistent: No such file",
            ),
            (
                f'via = ["socks5s://10.0.0.1:1"]\nca_file = "{no_certificate}"',
                "no PEM certificate in it",
            ),
            (f'via = ["socks5s://10.0.0.1:1"]\nca_file = "{broken}"', "is no certificate"),
            (
                f'via = ["socks5://10.0.0.1:1"]\nca_file = "{broken}"',
                "ca_file: ca_file is for socks5s:// and https:// hops",
            ),
        ):
            with self.assertRaises(RulesError) as caught:
                parse(rules_with(route), "rules.toml")
            self.assertIn(expected, str(caught.exception), route)


class GSSAPIHopTests(SynchronousTestCase):
    def test_a_kerberised_hop_asks_for_rcmd_at_its_host_and_confidentiality(self) -> None:
        hop = parse_hop("socks5+gssapi://Proxy.Example.ORG:1080", {})
        self.assertEqual(
            (hop.scheme, hop.tls, hop.gssapi, hop.protection, hop.credentials),
            ("socks5", False, "rcmd@proxy.example.org", Protection.CONFIDENTIALITY, None),
        )
        self.assertEqual(hop.label, "socks5+gssapi://proxy.example.org:1080")
        self.assertEqual(
            repr(hop),
            "<Hop socks5+gssapi://proxy.example.org:1080 gssapi=rcmd@proxy.example.org"
            " protection=confidentiality>",
        )
        # Not the same upstream as the one without GSSAPI (marks are per chain).
        self.assertNotEqual(hop, parse_hop("socks5://proxy.example.org:1080", {}))

    def test_over_tls_and_ipv6(self) -> None:
        hop = parse_hop("socks5s+gssapi://[::1]:1443/", {})
        self.assertEqual((hop.tls, hop.gssapi), (True, "rcmd@::1"))
        self.assertEqual(hop.label, "socks5s+gssapi://[::1]:1443")

    def test_the_query_changes_the_service_and_the_level(self) -> None:
        for query, service, level in (
            ("?protection=integrity", "rcmd@proxy.test", Protection.INTEGRITY),
            ("?protection=clear&service=socks", "socks@proxy.test", Protection.CLEAR),
            ("/?service=rcmd@other.test", "rcmd@other.test", Protection.CONFIDENTIALITY),
            ("?service=rcmd/proxy.test@SOCKS.TEST", "rcmd/proxy.test@SOCKS.TEST", 2),
            ("?", "rcmd@proxy.test", Protection.CONFIDENTIALITY),
        ):
            hop = parse_hop(f"socks5+gssapi://proxy.test:1080{query}", {})
            self.assertEqual((hop.gssapi, hop.protection), (service, level), query)
            self.assertEqual(hop.label, "socks5+gssapi://proxy.test:1080")

    def test_the_password_file_does_not_apply(self) -> None:
        passwords = {("proxy.test", 1080): (b"file", b"pw")}
        self.assertIsNone(parse_hop("socks5+gssapi://proxy.test:1080", passwords).credentials)

    def test_bad_gssapi_urls_say_why_without_the_password(self) -> None:
        for url, why in (
            ("socks5+gssapi://u:Secret1@h:1080", "a GSSAPI hop takes no user:password"),
            ("http+gssapi://h:3128", "the scheme must be socks5, socks5h, http, socks5s, https,"),
            ("https+gssapi://h:3128", "socks5+gssapi or socks5s+gssapi"),
            ("socks5+tls://h:1080", "'socks5+tls': the scheme must be"),
            ("socks5+gssapi+gssapi://h:1080", "the scheme must be"),
            ("socks5://h:1080?service=rcmd", "a query (?...) is only for GSSAPI hops"),
            ("socks5://u:Secret1@h:1080?x", "a query (?...) is only for GSSAPI hops"),
            ("socks5+gssapi://h:1080?realm=X", "'realm=X': a GSSAPI hop's query takes"),
            ("socks5+gssapi://h:1080?protection", "'protection': a GSSAPI hop's query takes"),
            ("socks5+gssapi://h:1080?&", "'': a GSSAPI hop's query takes"),
            ("socks5+gssapi://h:1080?protection=selective", "is not one of clear, integrity,"),
            ("socks5+gssapi://h:1080?protection=clear&protection=clear", "protection is given"),
            ("socks5+gssapi://h:1080?service=a%20b", "service 'a%20b' is not a service"),
            ("socks5+gssapi://h:1080?service=@h", "service '@h' is not a service"),
            ("socks5+gssapi://h:1080?service=\x1b[31m", "service '\\x1b[31m'"),
            ("socks5+gssapi://h:1080?service=a?b", "is not scheme://"),
        ):
            with self.assertRaises(RouteError) as caught:
                parse_hop(url, {})
            self.assertIn(why, str(caught.exception), url)
            self.assertNotIn("Secret1", str(caught.exception))

    def test_rules_read_gssapi_hops_and_name_the_line_of_errors(self) -> None:
        parsed = parse(
            rules_with(
                'upstreams = ["socks5+gssapi://proxy.test:1080?protection=integrity",'
                ' ["socks5://10.0.0.1:1080", "socks5s+gssapi://proxy.test:1443"]]'
            )
        )
        self.assertEqual(
            next(iter(describe(parsed))),
            "#1: allow via socks5+gssapi://proxy.test:1080"
            " | socks5://10.0.0.1:1080>socks5s+gssapi://proxy.test:1443",
        )
        with self.assertRaises(RulesError) as caught:
            parse(rules_with('via = ["socks5+gssapi://a:b@proxy.test:1080"]'), "rules.toml")
        self.assertIn(
            "rules.toml, line 5: [[rule]] #1: via: a GSSAPI hop takes no user:password",
            str(caught.exception),
        )

    def test_without_the_gssapi_package_a_gssapi_hop_names_its_line(self) -> None:
        with without_module("gssapi"):
            with self.assertRaises(RulesError) as caught:
                parse(rules_with('\nvia = ["socks5+gssapi://proxy.test:1080"]'), "rules.toml")
            # Every other rule still loads.
            parse(rules_with('via = ["socks5://proxy.test:1080"]'), "rules.toml")
        self.assertEqual(
            str(caught.exception),
            "rules.toml, line 6: [[rule]] #1: via: GSSAPI needs the gssapi package:"
            " pip install 'socks5twist[gssapi]' (it builds against MIT Kerberos:"
            " apt-get install libkrb5-dev)",
        )


class PasswordFileTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_lines_comments_ipv6_and_passwords_with_colons_and_spaces(self) -> None:
        path = self.write("# upstreams\n\n10.0.0.1:1080 alice:a b:c\n[::1]:3128 bob:x\n")
        self.assertEqual(
            read_password_file(path),
            {("10.0.0.1", 1080): (b"alice", b"a b:c"), ("::1", 3128): (b"bob", b"x")},
        )

    def test_a_password_keeps_trailing_spaces_and_unusual_line_breaks(self) -> None:
        # Only "\n" (or "\r\n") ends a line: U+2028, U+0085 and \x1c are
        # the password's, as its trailing space is.
        path = self.write("10.0.0.1:1080 alice:pw \r\n10.0.0.2:1080 bob:a\u2028b\x85c\x1cd\n")
        self.assertEqual(
            read_password_file(path),
            {
                ("10.0.0.1", 1080): (b"alice", b"pw "),
                ("10.0.0.2", 1080): (b"bob", "a\u2028b\x85c\x1cd".encode()),
            },
        )

    def test_a_bad_line_is_named_and_not_quoted(self) -> None:
        path = self.write("10.0.0.1:1080 alice:ok\n10.0.0.2 nopassword-Secret9\n")
        with self.assertRaises(RouteError) as caught:
            read_password_file(path)
        self.assertIn(f"{path}, line 2", str(caught.exception))
        self.assertNotIn("Secret9", str(caught.exception))

    def test_a_missing_file_is_one_line(self) -> None:
        with self.assertRaises(RouteError) as caught:
            read_password_file("/nonexistent/upstreams")
        self.assertIn("No such file", str(caught.exception))


class EgressTests(SynchronousTestCase):
    pool = [ipaddress.ip_address(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1")]

    def test_one_key_gets_one_address_of_each_version_always(self) -> None:
        first = egress_for(self.pool, "alice")
        self.assertEqual(egress_for(self.pool, "alice"), first)
        self.assertIn(first[4], {"10.0.0.1", "10.0.0.2", "10.0.0.3"})
        self.assertEqual(first[6], "2001:db8::1")

    def test_keys_spread_over_the_pool(self) -> None:
        chosen = {egress_for(self.pool, f"user{n}")[4] for n in range(60)}
        self.assertEqual(chosen, {"10.0.0.1", "10.0.0.2", "10.0.0.3"})

    def test_a_version_without_pool_members_is_left_to_the_default(self) -> None:
        self.assertEqual(egress_for(self.pool[:1], "bob"), {4: "10.0.0.1"})


class RulesFileRouteTests(SynchronousTestCase):
    def test_via_upstreams_and_egress_are_read(self) -> None:
        parsed = parse(
            'default = "deny"\n'
            '[[rule]]\naction = "allow"\nports = [1]\n'
            'via = ["socks5://127.0.0.1:1080", "http://u:Pw9@[::1]:3128"]\n'
            '[[rule]]\naction = "allow"\nports = [2]\n'
            'upstreams = ["socks5://10.0.0.1:1", ["socks5://10.0.0.2:1", "http://10.0.0.3:2"]]\n'
            '[[rule]]\naction = "allow"\negress = ["127.0.0.1", "::1", "127.0.0.1"]\n'
        )
        via, upstreams, egress = (r.route for r in parsed.rules)
        assert via is not None and upstreams is not None and egress is not None
        self.assertEqual([len(c) for c in via.chains], [2])
        self.assertEqual([len(c) for c in upstreams.chains], [1, 2])
        self.assertEqual([str(ip) for ip in egress.egress], ["127.0.0.1", "::1"])
        self.assertEqual(
            list(describe(parsed))[:3],
            [
                "#1: allow via socks5://127.0.0.1:1080>http://[::1]:3128",
                "#2: allow via socks5://10.0.0.1:1 | socks5://10.0.0.2:1>http://10.0.0.3:2",
                "#3: allow egress 127.0.0.1, ::1",
            ],
        )
        self.assertNotIn("Pw9", repr(parsed))

    def test_errors_name_the_line_and_the_key(self) -> None:
        for route, action, expected in (
            ('via = ["socks4://127.0.0.1:1"]', "allow", "line 5: [[rule]] #1: via: 'socks4'"),
            ("via = []", "allow", "line 5: [[rule]] #1: via: a chain is a non-empty list"),
            ('upstreams = "x"', "allow", "line 5: [[rule]] #1: upstreams: must be a list"),
            ('via = ["socks5://127.0.0.1:1"]', "deny", "line 5: [[rule]] #1: via: only an allow"),
            ('egress = ["10.0.0.0/8"]', "allow", "line 5: [[rule]] #1: egress: '10.0.0.0/8'"),
            ('egress = ["192.0.2.7"]', "allow", "egress: 192.0.2.7: cannot bind to it"),
            ('password_file = "/nonexistent"', "allow", "line 5: [[rule]] #1: password_file:"),
            (
                'via = ["socks5://127.0.0.1:1"]\negress = ["127.0.0.1"]',
                "allow",
                "line 6: [[rule]] #1: egress: egress is for direct connections",
            ),
            (
                'via = ["socks5://127.0.0.1:1"]\nupstreams = [["socks5://127.0.0.1:2"]]',
                "allow",
                "line 6: [[rule]] #1: upstreams: give via",
            ),
        ):
            with self.assertRaises(RulesError) as caught:
                parse(rules_with(route, action), "rules.toml")
            self.assertIn(expected, str(caught.exception), route)

    def test_a_password_file_without_hops_is_an_error(self) -> None:
        fd, path = tempfile.mkstemp()
        os.close(fd)
        self.addCleanup(os.unlink, path)
        with self.assertRaises(RulesError) as caught:
            parse(rules_with(f'password_file = "{path}"'), "rules.toml")
        self.assertIn("password_file needs via or upstreams", str(caught.exception))
