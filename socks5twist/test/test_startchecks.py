"""
What is found out before the server starts (socks5twist.startchecks and
socks5twist.options), and the IPv6-only listener that a bare port adds.
"""

from __future__ import annotations

import io
import os
import socket
from contextlib import redirect_stdout

from twisted.internet import error, reactor
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.trial.unittest import TestCase

from socks5twist import __version__, startchecks
from socks5twist.listeners import IPv6OnlyEndpoint
from socks5twist.options import Options
from socks5twist.tap import makeService


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
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


class EndpointTests(TestCase):
    def test_fields_split_on_unescaped_colons(self) -> None:
        self.assertEqual(
            startchecks.split_description("tcp6:1080:interface=\\:\\:1"),
            ["tcp6", "1080", "interface=::1"],
        )

    def test_ports_past_65535_are_refused(self) -> None:
        self.assertEqual(
            refusal("--port", "65536"), "--port '65536': a port is a number from 0 to 65535"
        )
        self.assertIn("from 0 to 65535, not '99999'", refusal("--port", "tcp:99999"))
        self.assertIn("from 0 to 65535, not '70000'", refusal("--port", "tcp6:port=70000"))
        self.assertIn("from 0 to 65535, not '99999'", refusal("--metrics", "tcp:99999"))
        self.assertIn("a port is a number from 0 to 65535", refusal("--port", "-1"))
        self.assertEqual(parse("--port", "65535")["ports"][0], "tcp:65535")

    def test_unescaped_ipv6_colons_are_explained(self) -> None:
        message = refusal("--port", "tcp:19090:interface=::1")
        self.assertIn("the colons of the address ::1 must be escaped", message)
        self.assertIn("tcp:19090:interface=\\:\\:1", message)
        message = refusal("--port", "tcp6:1080:interface=fe80::1:backlog=5")
        self.assertIn("tcp6:1080:interface=fe80\\:\\:1:backlog=5", message)

    def test_a_port_given_twice_is_named(self) -> None:
        self.assertEqual(
            refusal("--port", "1080", "--port", "tcp:1080"),
            "--port 'tcp:1080': tcp:1080 is already listened on by an earlier --port",
        )
        self.assertEqual(
            refusal("--port", "unix:/tmp/s", "--port", "unix:/tmp/s"),
            "--port 'unix:/tmp/s': unix:/tmp/s is already listened on by an earlier --port",
        )
        self.assertEqual(parse("--port", "tcp:0", "--port", "tcp:0")["ports"], ["tcp:0", "tcp:0"])
        self.assertEqual(
            refusal("--port", "1080", "--metrics", "1080"),
            "--metrics '1080': tcp:1080 is already listened on by a --port",
        )

    def test_typos_in_a_description_are_said_plainly(self) -> None:
        for description, says in [
            ("tcp:1080:interfase=127.0.0.1", "no such parameter: interfase="),
            ("tcp", "needs a port"),
            ("tcp:", "expected a number, not ''"),
            ("tcp:1080:backlog=many", "expected a number, not 'many'"),
        ]:
            self.assertEqual(refusal("--port", description), f"--port {description!r}: {says}")

    def test_unix_socket_directory_must_exist(self) -> None:
        self.assertEqual(
            refusal("--port", "unix:/nonexistent/dir/s.sock"),
            "--port 'unix:/nonexistent/dir/s.sock': the directory /nonexistent/dir does not exist",
        )
        here = self.mktemp()
        self.assertEqual(parse("--port", f"unix:{here}")["ports"], [f"unix:{here}"])

    def test_missing_systemd_socket_is_explained(self) -> None:
        message = refusal("--port", "systemd:domain=INET:index=7")
        self.assertIn("systemd passed no such socket to this process", message)


class ValueTests(TestCase):
    def test_outgoing_address_must_be_this_machines(self) -> None:
        # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
        self.assertEqual(
            refusal("--outgoing-address", "192.0.2.7"),
            "--outgoing-address 192.0.2.7: cannot bind to it: Cannot assign requested address"
            " (it must be an address of this machine)",
        )
        self.assertEqual(
            parse("--outgoing-address", "127.0.0.1")["outgoing-addresses"], ["127.0.0.1"]
        )

    def test_udp_interface_must_be_this_machines(self) -> None:
        self.assertIn("cannot bind to it", refusal("--udp-interface", "192.0.2.7"))

    def test_worker_count_is_bounded(self) -> None:
        self.assertEqual(refusal("--workers", "65"), "--workers must be at most 64, not '65'")
        self.assertEqual(refusal("--workers", "0"), "--workers must be at least 1, not '0'")

    def test_missing_rules_file_names_the_option(self) -> None:
        self.assertEqual(
            refusal("--rules", "/nonexistent/rules.toml"),
            "--rules /nonexistent/rules.toml: No such file or directory",
        )

    def test_access_log_must_be_a_file_we_can_open(self) -> None:
        self.assertEqual(
            refusal("--access-log", "/nonexistent/access.log"),
            "--access-log /nonexistent/access.log: No such file or directory",
        )


class CheckerTests(TestCase):
    def test_memory_checker_without_users_stops_the_start(self) -> None:
        self.assertIn("names no user, so every login would fail", refusal("--auth", "memory:"))

    def test_malformed_memory_checker_does_not_echo_the_password(self) -> None:
        message = refusal("--auth", "memory:alice:secret:bob")
        self.assertTrue(message.startswith("--auth memory: "), message)
        self.assertNotIn("secret", message)

    def test_missing_password_file_stops_the_start(self) -> None:
        self.assertEqual(
            refusal("--auth", "file:/nonexistent/passwd"),
            "--auth file: /nonexistent/passwd: No such file or directory",
        )

    def test_unix_checker_that_cannot_read_the_shadow_file_stops_the_start(self) -> None:
        """
        Run as a user who cannot read it, where nss-systemd answers for root,
        the start used to go on with a checker that let nobody in.  (A
        directory stands in for the unreadable file: the tests run as root.)
        """
        unreadable = self.mktemp()
        os.mkdir(unreadable)
        self.patch(startchecks, "SHADOW", unreadable)
        self.assertEqual(
            refusal("--auth", "unix"),
            f"--auth unix: cannot read {unreadable}: Is a directory (run as root)",
        )

    def test_password_file_without_users_stops_the_start(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# users come later\n\n")
        self.assertEqual(
            refusal("--auth", f"file:{path}"),
            f"--auth file: {path}: names no user, so every login would fail",
        )

    def test_unknown_checker(self) -> None:
        self.assertIn("--auth nosuch:", refusal("--auth", "nosuch:x"))


class HelpTests(TestCase):
    def output(self, *argv: str) -> str:
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as stopped:
            parse(*argv)
        self.assertIn(stopped.exception.code, (0, None))
        return out.getvalue()

    def test_version_is_ours_and_twisteds(self) -> None:
        from twisted import copyright

        self.assertEqual(
            self.output("--version"), f"socks5twist {__version__} (Twisted {copyright.version})\n"
        )

    def test_help_explains_checkers_hides_internals_and_ends_with_examples(self) -> None:
        text = self.output("--help")
        self.assertNotIn("worker-listener", text)
        auth = text[text.index("--auth=") : text.index("--bind-timeout")]
        for word in ("memory:alice:secret", "file:/etc/socks5/passwd", "unix", "--help-auth"):
            self.assertIn(word, " ".join(auth.split()))
        self.assertIn("\nExamples:\n  twistd -n socks5 --port 1080\n", text)
        self.assertTrue(
            text.rstrip().endswith(
                "the socks5twist command: twistd -n with no\n      pidfile and the log on stdout."
            )
        )

    def test_h_is_help(self) -> None:
        text = self.output("-h")
        self.assertIn("-h, --help ", text)
        self.assertIn("\nExamples:\n", text)

    def test_auth_help_describes_our_password_file_not_twisteds(self) -> None:
        said = []
        for argv in (["--help-auth"], ["--help-auth-type", "file"]):
            options = Options()
            options.authOutput = io.StringIO()
            with self.assertRaises(SystemExit):
                options.parseOptions(argv)
            said.append(options.authOutput.getvalue())
        listing, file_help = said
        self.assertIn(
            "  file  \tPath of a password file: user:password lines, plain or hashed.", listing
        )
        self.assertNotIn("FilePasswordDB", listing + file_help)
        self.assertIn("memory", listing)
        self.assertTrue(file_help.startswith("Usage: --auth file:PATH\n\nOne account a line"))
        self.assertIn("bcrypt", file_help)

    def test_worker_listener_is_still_taken(self) -> None:
        options = parse("--worker-listener", "5:tcp:1080", "--worker-listener=6:unix:/x")
        self.assertEqual(options["worker-listeners"], [(5, "tcp:1080"), (6, "unix:/x")])
        self.assertIn("expected FD:DESCRIPTION", refusal("--worker-listener", "x"))


class DualStackTests(TestCase):
    def test_without_ipv6_a_bare_port_serves_ipv4_and_says_so(self) -> None:
        self.patch(startchecks, "ipv6_problem", lambda: "Address family not supported by protocol")
        options = parse("--port", "tcp:0:interface=127.0.0.1", "--port", "0")
        self.assertEqual(options["ports"], ["tcp:0:interface=127.0.0.1", "tcp:0"])
        with capturedLogs() as events:
            service = makeService(options)
        self.assertEqual(len(list(service)), 2)
        [warning] = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertIn("IPv6 is not available on this machine", warning["log_format"])
        self.assertEqual(warning["why"], "Address family not supported by protocol")

    def test_bare_port_listens_twice_and_says_which_is_which(self) -> None:
        self.patch(startchecks, "ipv6_problem", lambda: None)
        service = makeService(parse("--port", "1080"))
        self.assertEqual(
            [child._description for child in service],  # type: ignore[attr-defined]
            ["tcp:1080 (IPv4)", "tcp6:1080:interface=\\:\\: (IPv6 only)"],
        )

    def test_ipv6_only_listener_leaves_the_ipv4_port_free(self) -> None:
        if startchecks.ipv6_problem() is not None:
            raise AssertionError("this test needs IPv6 on the machine running it")
        port = self.successResultOf(IPv6OnlyEndpoint(reactor, 0).listen(_Nothing()))
        self.addCleanup(port.stopListening)
        number = port.getHost().port  # type: ignore[attr-defined]
        # Without IPV6_V6ONLY, [::]:N would hold 0.0.0.0:N too.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ipv4:
            ipv4.bind(("0.0.0.0", number))

    def test_ipv6_only_listener_failure_is_cannot_listen(self) -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
            taken.bind(("::1", 0))
            taken.listen()
            number = taken.getsockname()[1]
            failure = self.failureResultOf(
                IPv6OnlyEndpoint(MemoryReactor(), number, "::1").listen(_Nothing()),
                error.CannotListenError,
            )
        self.assertEqual(failure.value.socketError.strerror, "Address already in use")


class _Nothing:
    """A factory that the listeners above never see a connection for."""

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass
