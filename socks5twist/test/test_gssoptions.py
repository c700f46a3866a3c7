"""
The C{--gssapi} options: each bad value, and each keytab that cannot serve,
is one line naming the option; a keytab with the service's key gives the
factory its acceptor credentials.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SkipTest, TestCase

from socks5twist import startchecks
from socks5twist.gsswire import Protection
from socks5twist.options import Options
from socks5twist.tap import make_factory
from socks5twist.test.helpers import without_module
from socks5twist.test.test_keytab import KTUTIL_KEYTAB, entry_v2

PORT = ["--port", "tcp:0:interface=127.0.0.1"]


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions([*PORT, *argv])
    return options


def refusal(*argv: str) -> str:
    """The one-line message of the UsageError that C{argv} must raise."""
    try:
        parse(*argv)
    except usage.UsageError as e:
        message = str(e)
    else:
        raise AssertionError(f"{argv} was accepted")
    assert "\n" not in message, message
    return message


def require_gssapi() -> None:
    """The checks past the package's import need it: fail in CI without it, else skip."""
    try:
        import gssapi  # noqa: F401
    except ImportError:
        message = "the gssapi package is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            raise AssertionError(f"{message}; tests may not be skipped in CI") from None
        raise SkipTest(message) from None


class ValueTests(TestCase):
    def test_gssapi_options_without_gssapi_are_refused(self) -> None:
        for argv in (
            ["--gssapi-service", "socks"],
            ["--gssapi-keytab", "/etc/krb5.keytab"],
            ["--gssapi-keytab", ""],
            ["--gssapi-protection", "integrity"],
            ["--gssapi-nec"],
        ):
            self.assertEqual(refusal(*argv), f"{argv[0]} needs --gssapi (GSSAPI is off without it)")

    def test_without_gssapi_nothing_is_offered(self) -> None:
        options = parse()
        self.assertIsNone(options["gssapi-settings"])
        self.assertIsNone(make_factory(options).gssapi)

    def test_bad_values_name_the_option(self) -> None:
        for argv, says in [
            (["--gssapi-service", "rcmd/host"], "--gssapi-service takes a service name like rcmd"),
            (["--gssapi-service", ""], "not ''"),
            (["--gssapi-service", "a\nb"], "not 'a\\nb'"),
            (
                ["--gssapi-protection", "integrity,secret"],
                "--gssapi-protection: 'secret' is not a level (any of clear, integrity,"
                " confidentiality, comma-separated)",
            ),
            (["--gssapi-protection", " , "], "--gssapi-protection names no level"),
        ]:
            self.assertIn(says, refusal("--gssapi", *argv), argv)

    def test_a_missing_package_is_the_message_of_missing_gssapi(self) -> None:
        with without_module("gssapi"):
            message = refusal("--gssapi")
        self.assertEqual(
            message,
            "--gssapi: GSSAPI needs the gssapi package: pip install 'socks5twist[gssapi]'"
            " (it builds against MIT Kerberos: apt-get install libkrb5-dev)",
        )


class KeytabTests(TestCase):
    def setUp(self) -> None:
        require_gssapi()
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "KRB5_KTNAME"})

    def keytab(self, data: bytes = KTUTIL_KEYTAB) -> str:
        path = Path(self.mktemp())
        path.write_bytes(data)
        return str(path)

    def test_missing_keytab_names_the_path_and_why(self) -> None:
        self.assertEqual(
            refusal("--gssapi", "--gssapi-keytab", "/nonexistent/krb5.keytab"),
            "--gssapi-keytab /nonexistent/krb5.keytab: cannot read it: No such file or directory",
        )

    def test_the_default_keytab_is_krb5_ktname_else_the_systems(self) -> None:
        self.patch(startchecks, "DEFAULT_KEYTAB", "/nonexistent/krb5.keytab")
        self.assertEqual(
            refusal("--gssapi"),
            "--gssapi: the keytab /nonexistent/krb5.keytab (the default): cannot read it:"
            " No such file or directory",
        )
        os.environ["KRB5_KTNAME"] = "FILE:/nonexistent/other.keytab"
        self.assertEqual(
            refusal("--gssapi"),
            "--gssapi: the keytab FILE:/nonexistent/other.keytab (from KRB5_KTNAME): cannot"
            " read it: No such file or directory",
        )
        os.environ["KRB5_KTNAME"] = self.keytab()
        self.assertEqual(parse("--gssapi")["gssapi-settings"].keytab, os.environ["KRB5_KTNAME"])

    def test_a_file_that_is_not_a_keytab(self) -> None:
        path = self.keytab(b"root:x:0:0:root:/root:/bin/sh\n")
        self.assertEqual(
            refusal("--gssapi", "--gssapi-keytab", path),
            f"--gssapi-keytab {path}: not a keytab: it starts with 726f, a keytab with 0501"
            " or 0502",
        )
        path = self.keytab(KTUTIL_KEYTAB[:40])
        self.assertIn("(truncated)", refusal("--gssapi", "--gssapi-keytab", path))

    def test_an_empty_keytab(self) -> None:
        path = self.keytab(b"\x05\x02")
        self.assertEqual(
            refusal("--gssapi", "--gssapi-keytab", path),
            f"--gssapi-keytab {path}: holds no key (add one for rcmd/HOST@REALM)",
        )

    def test_no_key_for_the_service_lists_a_few_principals_held(self) -> None:
        path = self.keytab()
        self.assertEqual(
            refusal("--gssapi", "--gssapi-keytab", path, "--gssapi-service", "socks"),
            f"--gssapi-keytab {path}: no key for the service socks (socks/HOST@REALM); it holds"
            " rcmd/localhost@SOCKS.TEST, host/a.b@OTHER.REALM (--gssapi-service names the"
            " service)",
        )
        many = b"\x05\x02" + b"".join(entry_v2([b"host", f"h{i}".encode()], b"R") for i in range(6))
        # A user principal named like the service is not the service's key,
        # and a principal's bytes are escaped.
        many += entry_v2([b"rcmd"], b"R") + entry_v2([b"x\x1b[2J", b"h"], b"R")
        message = refusal("--gssapi", "--gssapi-keytab", self.keytab(many))
        self.assertIn(
            "it holds host/h0@R, host/h1@R, host/h2@R, host/h3@R and 4 more (--gssapi", message
        )
        self.assertNotIn("\x1b", message)

    def test_the_librarys_refusal_is_one_escaped_line(self) -> None:
        message = refusal("--gssapi", "--gssapi-keytab", "MEMORY:\x1bnothing")
        self.assertTrue(
            message.startswith(
                "--gssapi-keytab MEMORY:\\x1bnothing: GSSAPI cannot accept with it: Major ("
            ),
            message,
        )
        self.assertIn("Keytab MEMORY:\\x1bnothing is nonexistent or empty", message)
        self.assertNotIn("\x1b", message)

    def test_a_keytab_with_the_services_key_gives_the_factory_credentials(self) -> None:
        path = self.keytab()
        options = parse(
            "--gssapi",
            "--gssapi-keytab",
            f"FILE:{path}",
            "--gssapi-protection",
            "Clear, integrity",
            "--gssapi-nec",
        )
        settings = options["gssapi-settings"]
        self.assertEqual(
            (settings.service, settings.keytab, settings.levels, settings.allow_nec),
            (
                "rcmd",
                f"FILE:{path}",
                frozenset({Protection.CLEAR, Protection.INTEGRITY}),
                True,
            ),
        )
        factory = make_factory(options)
        self.assertIs(factory.gssapi, settings)
        self.assertIsNotNone(factory.gss_credentials)
        # Without a client network named, an authenticating server serves anyone.
        self.assertEqual([str(n) for n in factory.client_policy.networks], ["0.0.0.0/0", "::/0"])

    def test_defaults(self) -> None:
        settings = parse("--gssapi", "--gssapi-keytab", self.keytab())["gssapi-settings"]
        self.assertEqual(
            (settings.service, settings.levels, settings.allow_nec),
            ("rcmd", frozenset({Protection.INTEGRITY, Protection.CONFIDENTIALITY}), False),
        )
        settings = parse("--gssapi", "--gssapi-keytab", self.keytab(), "--gssapi-service", "host")[
            "gssapi-settings"
        ]
        self.assertEqual(settings.service, "host")


class AuthMethodTests(TestCase):
    """An [[auth]] method the server does not offer stops the start, naming the line."""

    def rules(self, methods: str) -> str:
        path = Path(self.mktemp())
        path.write_text(
            f'default = "allow"\n\n[[auth]]\nclients = ["10.0.0.0/8"]\nmethod = {methods}\n'
        )
        return str(path)

    def test_gssapi_without_gssapi(self) -> None:
        path = self.rules('["gssapi", "none"]')
        self.assertEqual(
            refusal("--rules", path),
            f'--rules {path}, line 5: [[auth]] #1: method "gssapi" needs --gssapi',
        )

    def test_password_without_auth(self) -> None:
        path = self.rules('"password"')
        self.assertEqual(
            refusal("--rules", path),
            f'--rules {path}, line 5: [[auth]] #1: method "password" needs --auth',
        )
        parse("--rules", path, "--auth", "memory:alice:pw")

    def test_gssapi_with_gssapi(self) -> None:
        require_gssapi()
        keytab = Path(self.mktemp())
        keytab.write_bytes(KTUTIL_KEYTAB)
        path = self.rules('["gssapi", "password"]')
        options = parse(
            "--rules", path, "--auth", "memory:a:b", "--gssapi", "--gssapi-keytab", str(keytab)
        )
        self.assertEqual(options["parsed-rules"].auth[0].methods, ("gssapi", "password"))
