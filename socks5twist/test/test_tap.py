"""The twistd options, the service they make, and the strcred checkers."""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.cred.credentials import UsernamePassword
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from socks5twist.auth import ISOCKSUser
from socks5twist.tap import Options, make_factory, makeService


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionTests(TestCase):
    def test_defaults(self) -> None:
        options = parse()
        # IPv4 and IPv6 (on a machine that has it): see socks5twist.listeners.
        self.assertEqual(options["ports"], ["tcp:1080", "tcp6:1080:interface=\\:\\:"])
        self.assertEqual(options["ipv6-only"], {"tcp6:1080:interface=\\:\\:"})
        factory = make_factory(options)
        self.assertIsNone(factory.portal)
        self.assertEqual(
            (factory.handshake_timeout, factory.connect_timeout, factory.idle_timeout),
            (10.0, 10.0, 0.0),
        )
        self.assertEqual(factory.gate.max_clients, 4096)
        self.assertEqual(
            [str(n) for n in factory.client_policy.networks], ["127.0.0.0/8", "::1/128"]
        )

    def test_ports_repeat_and_bare_numbers_mean_both_ip_versions(self) -> None:
        options = parse(
            "--port", "1081", "--port", "tcp6:1082:interface=\\:\\:1", "-p", "unix:/tmp/x"
        )
        self.assertEqual(
            options["ports"],
            [
                "tcp:1081",
                "tcp6:1081:interface=\\:\\:",
                "tcp6:1082:interface=\\:\\:1",
                "unix:/tmp/x",
            ],
        )
        # Explicit descriptions are taken literally: only the bare port's
        # IPv6 half is listened on with IPV6_V6ONLY.
        self.assertEqual(options["ipv6-only"], {"tcp6:1081:interface=\\:\\:"})
        self.assertEqual(parse("--port", "tcp:1083")["ports"], ["tcp:1083"])

    def test_bad_values_are_usage_errors(self) -> None:
        for argv in (
            ["--port", "nonsense:1"],
            ["--idle-timeout", "soon"],
            ["--connect-timeout", "-1"],
            ["--handshake-timeout", "nan"],
            ["--max-clients", "0"],
            ["--allow-client", "10.0.0.1/8"],
            ["--allow-client", "not-a-net"],
            ["--auth", "nosuchchecker:x"],
        ):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_timeouts_and_limits(self) -> None:
        factory = make_factory(
            parse(
                "--handshake-timeout",
                "3",
                "--connect-timeout",
                "4.5",
                "--idle-timeout",
                "60",
                "--max-clients",
                "7",
                "--allow-client",
                "192.0.2.0/24",
            )
        )
        self.assertEqual(
            (factory.handshake_timeout, factory.connect_timeout, factory.idle_timeout),
            (3.0, 4.5, 60.0),
        )
        self.assertEqual(factory.gate.max_clients, 7)
        self.assertEqual([str(n) for n in factory.client_policy.networks], ["192.0.2.0/24"])

    def test_make_service_is_a_multiservice_per_port(self) -> None:
        service = makeService(parse("--port", "tcp:0:interface=127.0.0.1", "--port", "tcp:0"))
        self.assertIsInstance(service, MultiService)
        self.assertEqual(len(list(service)), 2)


class CheckerTests(TestCase):
    """C{memory:} compares str and C{file:} bytes; both must accept the wire's bytes."""

    def login(self, options: Options, username: bytes, password: bytes):  # type: ignore[no-untyped-def]
        portal = make_factory(options).portal
        assert portal is not None
        return portal.login(UsernamePassword(username, password), None, ISOCKSUser)

    def test_memory_checker(self) -> None:
        options = parse("--auth", "memory:alice:secret")
        result = self.successResultOf(self.login(options, b"alice", b"secret"))
        self.assertEqual(result[1].name, "alice")
        self.failureResultOf(self.login(options, b"alice", b"wrong"))

    def test_file_checker(self) -> None:
        path = FilePath(self.mktemp())
        path.setContent(b"bob:hunter2\n")
        options = parse("--auth", f"file:{path.path}")
        result = self.successResultOf(self.login(options, b"bob", b"hunter2"))
        self.assertEqual(result[1].name, "bob")
        self.failureResultOf(self.login(options, b"bob", b"hunter3"))

    def test_several_checkers_all_count(self) -> None:
        path = FilePath(self.mktemp())
        path.setContent(b"bob:hunter2\n")
        options = parse("--auth", "memory:alice:secret", "--auth", f"file:{path.path}")
        self.successResultOf(self.login(options, b"alice", b"secret"))
        self.successResultOf(self.login(options, b"bob", b"hunter2"))
        self.failureResultOf(self.login(options, b"carol", b"x"))

    def test_non_utf8_username_fails_cleanly(self) -> None:
        options = parse("--auth", "memory:alice:secret")
        self.failureResultOf(self.login(options, b"\xff\xfe", b"secret"))
