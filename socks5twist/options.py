"""
The options of C{twistd socks5}: each value is parsed into a typed value,
and whatever can be found out before the server starts is found out here.

What a caller may rely on: a value that cannot work raises
L{usage.UsageError} with one line that names the option, the value and the
reason (the plugin prints it as C{twistd socks5: error: ...} and exits
non-zero); a password never appears in it.  Listening itself can still fail
at start-up (a port in use): L{socks5twist.service.SOCKS5Service} reports
that in one line too.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any

from twisted.cred.credentials import IUsernamePassword
from twisted.python import usage

from . import startchecks
from .accesslog import open_for_append
from .accounting import parse_accounting, quota_without_store
from .authhelp import AuthHelpMixin
from .drain import DEFAULT_DRAIN_TIMEOUT
from .gssoptions import GSSAPIOptionsMixin, gssapi_settings
from .networks import parse_network
from .optionvalues import count_option, failure_mode_option, ip_option, seconds_option
from .passwords import PasswordFile, PasswordFileError
from .rules import RulesError
from .rules import load as load_rules

__all__ = ["MAX_WORKERS", "PROXY_PREFIX", "Options", "version_text"]

PROXY_PREFIX = "haproxy:"
# Each worker is a whole process with its own reactor: more than a few per
# core only adds memory and context switches, and a typo (--workers 1000)
# should not fork a thousand servers.
MAX_WORKERS = 64


def version_text() -> str:
    """C{socks5twist X (Twisted Y)}: what C{--version} prints."""
    from twisted import copyright

    from . import __version__

    return f"socks5twist {__version__} (Twisted {copyright.version})"


EXAMPLES = """
Examples:
  twistd -n socks5 --port 1080
      IPv4 and IPv6 on port 1080; loopback clients only, no password.
  twistd -n socks5 --port 1080 --auth file:/etc/socks5/passwd --allow-client 10.0.0.0/8
      Users from a password file (see --help-auth), clients from 10.0.0.0/8.
  twistd -n socks5 --port 'tcp6:1080:interface=\\:\\:1' --auth memory:alice:secret
      IPv6 loopback only (colons in a description are escaped with a backslash).
  socks5twist --port 1080 --rules /etc/socks5/rules.toml --metrics tcp:9105
      Access rules and metrics, run by the socks5twist command: twistd -n with no
      pidfile and the log on stdout.
"""


class Options(usage.Options, AuthHelpMixin, GSSAPIOptionsMixin):
    """Options of C{twistd socks5}."""

    synopsis = "[options]"
    longdesc = (
        "A SOCKS5 proxy server (RFC 1928, with RFC 1929 username/password and RFC 1961"
        " GSSAPI). "
        "Without --auth or --gssapi it serves loopback clients only, unless --allow-client "
        "names more networks."
    )
    supportedInterfaces = (IUsernamePassword,)

    optParameters = [
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a client has to finish negotiating.",
            seconds_option("handshake-timeout"),
        ],
        [
            "connect-timeout",
            None,
            10.0,
            "Seconds to connect to a destination, name lookup included.",
            seconds_option("connect-timeout"),
        ],
        [
            "idle-timeout",
            None,
            0.0,
            "Seconds without traffic after which a tunnel closes; 0 = never.",
            seconds_option("idle-timeout"),
        ],
        [
            "drain-timeout",
            None,
            DEFAULT_DRAIN_TIMEOUT,
            "Seconds a side may take nothing of what is left for it after the other side"
            " of its tunnel closed, before the tunnel is reset; 0 = never.",
            seconds_option("drain-timeout"),
        ],
        [
            "max-clients",
            None,
            4096,
            "Most concurrent client connections.",
            count_option("max-clients"),
        ],
        [
            "max-sessions-per-client",
            None,
            None,
            "Most concurrent sessions per client IP; default: no limit.",
            count_option("max-sessions-per-client"),
        ],
        [
            "max-sessions-per-user",
            None,
            None,
            "Most concurrent sessions per authenticated user; default: no limit.",
            count_option("max-sessions-per-user"),
        ],
        ["rules", None, None, "TOML file of access rules (see the README); SIGHUP rereads it."],
        [
            "accounting",
            None,
            None,
            "Count bytes and sessions per user (or client IP) in sqlite:PATH, per UTC day,"
            " month and in total; [[limit]] quotas need it.  redis://[:PASSWORD@]HOST:PORT/DB"
            " shares the counts, quotas and [[limit]] sessions with a fleet.",
            parse_accounting,
        ],
        [
            "accounting-failure",
            None,
            "open",
            "While the accounting store is away: open (judge quotas and fleet session limits"
            " by this process's counts, write them when it is back) or closed (refuse requests"
            " under them with X'01').",
            failure_mode_option,
        ],
        [
            "access-log",
            None,
            None,
            "Append each session's line to this file instead of the log "
            "(cheaper under load); SIGHUP reopens it.",
        ],
        [
            "workers",
            None,
            1,
            f"Processes serving the same ports (this one and N - 1 more; at most {MAX_WORKERS}).",
            count_option("workers", MAX_WORKERS),
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this endpoint, e.g. tcp:9105.",
        ],
        [
            "shutdown-grace",
            None,
            10.0,
            "Seconds running sessions may go on after SIGTERM.",
            seconds_option("shutdown-grace"),
        ],
        [
            "bind-timeout",
            None,
            120.0,
            "Seconds a BIND waits for its peer to connect.",
            seconds_option("bind-timeout"),
        ],
        [
            "external-address",
            None,
            None,
            "IP address advertised in BIND and UDP ASSOCIATE replies (behind NAT).",
            ip_option("external-address"),
        ],
        [
            "udp-interface",
            None,
            None,
            "Local IP address for UDP ASSOCIATE relay ports; default: the one the client reached.",
            ip_option("udp-interface"),
        ],
        [
            "max-udp-per-client",
            None,
            16,
            "Most UDP associations one client IP may hold open.",
            count_option("max-udp-per-client"),
        ],
    ]
    optFlags = [
        ["no-splice", None, "Relay with Twisted's transports only, never splice(2)."],
        [
            "udp-any-source",
            None,
            "Relay datagrams to UDP clients from any address, not only from those they sent to.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []
        # The IPv6 halves that L{_dual_stack} made of bare port numbers, to
        # be listened on with IPV6_V6ONLY (see socks5twist.listeners).
        self["ipv6-only"] = set()
        self["allowed-clients"] = []
        self["trusted-proxies"] = []
        self["outgoing-addresses"] = []
        self["worker-listeners"] = []
        self["ipv6"] = None  # why IPv6 cannot be listened on, if it cannot
        self.argv: list[str] = []

    def parseOptions(self, options: Any = None) -> None:
        # Kept so that --workers can start copies of this process.
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(self._take_worker_listeners(self.argv))
        except usage.UsageError as e:
            # Our own coercers' messages name the option already.
            message = str(e).removeprefix("Parameter type enforcement failed: ")
            raise usage.UsageError(message) from None

    def _take_worker_listeners(self, argv: list[str]) -> list[str]:
        """
        Take out C{--worker-listener FD:DESCRIPTION}, which --workers passes
        to the processes it starts: an internal option, kept out of --help
        by not being an C{opt_} method.
        """
        rest: list[str] = []
        values = iter(argv)
        for arg in values:
            if arg == "--worker-listener":
                value = next(values, "")
            elif arg.startswith("--worker-listener="):
                value = arg.partition("=")[2]
            else:
                rest.append(arg)
                continue
            fd, _, description = value.partition(":")
            if not fd.isdigit() or not description:
                raise usage.UsageError(f"--worker-listener {value!r}: expected FD:DESCRIPTION")
            self["worker-listeners"].append((int(fd), description))
        return rest

    def getUsage(self, width: int | None = None) -> str:
        return str(super().getUsage(width)) + EXAMPLES

    def opt_version(self) -> None:
        """Display socks5twist's and Twisted's versions and exit."""
        print(version_text())
        sys.exit(0)

    opt_h = usage.Options.opt_help

    def opt_auth(self, description: str) -> None:
        """Require a username and password (RFC 1929), checked by this checker; repeatable (any checker's yes lets a user in). A checker is a Twisted strcred description: memory:alice:secret:bob:hunter2 (users on the command line), file:/etc/socks5/passwd (a password file, plain or hashed; SIGHUP rereads it), unix (the system's accounts; needs root). See --help-auth and --help-auth-type TYPE."""  # noqa: E501
        kind = description.partition(":")[0]
        if kind == "file":
            self.addChecker(_password_file(description[len("file:") :]))
            return
        try:
            super().opt_auth(description)
        except usage.UsageError as e:
            # Twisted's message; the description itself may hold passwords.
            message = str(e).removeprefix("Unexpected error: ")
            if kind == "memory":
                message += " (memory:USER:PASSWORD[:USER:PASSWORD]...)"
            raise usage.UsageError(f"--auth {kind}: {message}") from None
        problem = startchecks.checker_problem(kind, self["credCheckers"][-1])
        if problem is not None:
            raise usage.UsageError(f"--auth {kind}: {problem}")

    def opt_port(self, description: str) -> None:
        """Listen on this endpoint (repeatable). A bare number N listens on IPv4 and IPv6 (tcp:N and an IPv6-only tcp6:N); tcp:N is IPv4 only; also tcp6:, unix:, haproxy:, systemd: descriptions (escape colons in addresses: tcp6:1080:interface=\\:\\:1). Default: 1080, IPv4 and IPv6."""  # noqa: E501
        text = description.strip()
        startchecks.check_endpoint("--port", text)
        startchecks.check_not_twice("--port", text, self["ports"])
        if text.isdigit():
            self._dual_stack(str(int(text)))
        else:
            self["ports"].append(text)

    opt_p = opt_port

    def _dual_stack(self, port: str) -> None:
        """A bare port: tcp:N, and tcp6:N on :: with IPV6_V6ONLY if IPv6 can be had."""
        self["ports"].append(f"tcp:{port}")
        self["ipv6"] = startchecks.ipv6_problem()
        if self["ipv6"] is None:
            v6 = f"tcp6:{port}:interface=\\:\\:"
            self["ports"].append(v6)
            self["ipv6-only"].add(v6)

    def opt_allow_client(self, network: str) -> None:
        """Serve clients from this network (CIDR or address; repeatable). Default: loopback only without --auth or --gssapi, anywhere with either."""  # noqa: E501
        try:
            self["allowed-clients"].append(parse_network(network))
        except ValueError as e:
            raise usage.UsageError(f"--allow-client {network!r}: {e}") from None

    def opt_trusted_proxy(self, network: str) -> None:
        """Believe PROXY-protocol headers on haproxy: ports only from this network (CIDR or address; repeatable; required with haproxy:)."""  # noqa: E501
        try:
            self["trusted-proxies"].append(parse_network(network))
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy {network!r}: {e}") from None

    def opt_outgoing_address(self, address: str) -> None:
        """Bind outbound CONNECT sockets, BIND listeners and UDP relay sockets to this IP, an address of this machine (one per IP version)."""  # noqa: E501
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            raise usage.UsageError(
                f"--outgoing-address takes an IP address, not {address!r}"
            ) from None
        if any(ipaddress.ip_address(a).version == ip.version for a in self["outgoing-addresses"]):
            raise usage.UsageError(
                f"--outgoing-address: one per IP version ({address} is the second)"
            )
        startchecks.check_local_address("--outgoing-address", str(ip))
        self["outgoing-addresses"].append(str(ip))

    def postOptions(self) -> None:
        if not self["ports"]:
            self._dual_stack("1080")
        proxied = [p for p in self["ports"] if p.startswith(PROXY_PREFIX)]
        if proxied and not self["trusted-proxies"]:
            raise usage.UsageError(
                f"--port {proxied[0]} believes the PROXY header of the load balancers named by"
                " --trusted-proxy NETWORK only: add one (e.g. --trusted-proxy 10.0.0.2)"
            )
        if self["metrics"]:
            text = self["metrics"].strip()
            startchecks.check_endpoint("--metrics", text)
            startchecks.check_not_twice("--metrics", text, self["ports"], by="a --port")
            self["metrics"] = f"tcp:{int(text)}" if text.isdigit() else text
        if self["workers"] > 1 and self["metrics"]:
            raise usage.UsageError(
                "--metrics cannot be used with --workers: each process counts only its own"
                " sessions (run one server per metrics endpoint instead)"
            )
        passed = [p for p in self["ports"] if p.removeprefix(PROXY_PREFIX).startswith("systemd:")]
        if self["workers"] > 1 and passed:
            # systemd passed the socket to this process only: workers cannot have it.
            raise usage.UsageError(
                f"--port {passed[0]!r}: a socket systemd passed is not shared with --workers"
                " (serve it with one process, or use the plain unit with --port N --workers N)"
            )
        if self["udp-interface"]:
            startchecks.check_local_address("--udp-interface", self["udp-interface"], udp=True)
        if self["access-log"]:
            try:
                os.close(open_for_append(self["access-log"]))
            except OSError as e:
                raise usage.UsageError(f"--access-log {self['access-log']}: {e.strerror}") from None
        self["gssapi-settings"] = gssapi_settings(self)
        self["parsed-rules"] = None
        if self["rules"]:
            self["parsed-rules"] = _rules(self["rules"])
            unremembered = quota_without_store(self["parsed-rules"])
            if unremembered is not None and self["accounting"] is None:
                raise usage.UsageError(
                    f"--rules {self['rules']}: {unremembered}: add --accounting sqlite:PATH"
                )
            unconfigured = self["parsed-rules"].unconfigured_method(
                password=bool(self.get("credCheckers")),
                gssapi=self["gssapi-settings"] is not None,
            )
            if unconfigured is not None:
                raise usage.UsageError(f"--rules {unconfigured}")


def _password_file(path: str) -> PasswordFile:
    """C{--auth file:PATH}: our own checker (hashes, reloads), read now."""
    if not path:
        raise usage.UsageError("--auth file: needs a path (file:PATH)")
    checker = PasswordFile(path)
    try:
        checker.load()
    except PasswordFileError as e:
        raise usage.UsageError(f"--auth file: {e}") from None
    if not checker.accounts.users:
        raise usage.UsageError(f"--auth file: {path}: names no user, so every login would fail")
    return checker


def _rules(path: str) -> Any:
    """The rules file, read and parsed; an error names --rules and the file."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise usage.UsageError(f"--rules {path}: {e.strerror}") from None
    try:
        return load_rules(path)
    except RulesError as e:
        raise usage.UsageError(f"--rules {e}") from None
