"""
The C{twistd socks5} command: options, and the service they describe.

C{makeService(options)} returns a plain L{MultiService}, so the same
configuration can be added to any other Twisted application.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from twisted.application import service, strports
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import AuthOptionMixin
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from . import systemd
from .accesslog import AccessLog, open_for_append
from .auth import portal_for_checkers
from .factory import SOCKS5ServerFactory
from .passwords import PasswordFile, PasswordFileError
from .policy import parse_network
from .proxylistener import ProxyHeaderFactory
from .rules import RulesError
from .rules import describe as describe_rules
from .rules import load as load_rules
from .service import ListenFailed, SOCKS5Service

__all__ = ["ListenFailed", "Options", "SOCKS5Service", "makeService", "make_factory"]

log = Logger()


def _seconds(name: str) -> Any:
    def coerce(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--{name} takes a number of seconds, not {text!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"--{name} must be 0 or more seconds, not {text!r}")
        return value

    return coerce


def _ip(name: str) -> Any:
    def coerce(text: str) -> str:
        try:
            return str(ipaddress.ip_address(text.strip()))
        except ValueError:
            raise ValueError(f"--{name} takes an IP address, not {text!r}") from None

    return coerce


def _positive_int(name: str) -> Any:
    def coerce(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"--{name} takes a whole number, not {text!r}") from None
        if value < 1:
            raise ValueError(f"--{name} must be at least 1, not {text!r}")
        return value

    return coerce


def normalize_port(description: str) -> str:
    """A bare port number means C{tcp:N}; anything else is an endpoint description."""
    text = description.strip()
    return f"tcp:{text}" if text.isdigit() else text


class Options(usage.Options, AuthOptionMixin):
    """Options of C{twistd socks5}."""

    synopsis = "[options]"
    longdesc = (
        "A SOCKS5 proxy server (RFC 1928, with RFC 1929 username/password). "
        "Without --auth it serves loopback clients only, unless --allow-client "
        "names more networks."
    )
    supportedInterfaces = (IUsernamePassword,)

    optParameters = [
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a client has to finish negotiating.",
            _seconds("handshake-timeout"),
        ],
        [
            "connect-timeout",
            None,
            10.0,
            "Seconds to connect to a destination, name lookup included.",
            _seconds("connect-timeout"),
        ],
        [
            "idle-timeout",
            None,
            0.0,
            "Seconds without traffic after which a tunnel closes; 0 = never.",
            _seconds("idle-timeout"),
        ],
        [
            "max-clients",
            None,
            4096,
            "Most concurrent client connections.",
            _positive_int("max-clients"),
        ],
        [
            "max-sessions-per-client",
            None,
            None,
            "Most concurrent sessions per client IP; default: no limit.",
            _positive_int("max-sessions-per-client"),
        ],
        [
            "max-sessions-per-user",
            None,
            None,
            "Most concurrent sessions per authenticated user; default: no limit.",
            _positive_int("max-sessions-per-user"),
        ],
        [
            "rules",
            None,
            None,
            "TOML file of access rules (see the README); SIGHUP rereads it.",
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
            "Processes serving the same ports (this one and N - 1 more).",
            _positive_int("workers"),
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
            _seconds("shutdown-grace"),
        ],
        [
            "bind-timeout",
            None,
            120.0,
            "Seconds a BIND waits for its peer to connect.",
            _seconds("bind-timeout"),
        ],
        [
            "external-address",
            None,
            None,
            "IP address advertised in BIND and UDP ASSOCIATE replies (behind NAT).",
            _ip("external-address"),
        ],
        [
            "udp-interface",
            None,
            None,
            "Local IP address for UDP ASSOCIATE relay ports; default: the one the client reached.",
            _ip("udp-interface"),
        ],
        [
            "max-udp-per-client",
            None,
            16,
            "Most UDP associations one client IP may hold open.",
            _positive_int("max-udp-per-client"),
        ],
    ]
    optFlags = [
        [
            "no-splice",
            None,
            "Relay with Twisted's transports only, never splice(2).",
        ],
        [
            "udp-any-source",
            None,
            "Relay datagrams to UDP clients from any address, not only from those they sent to.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []
        self["allowed-clients"] = []
        self["trusted-proxies"] = []
        self["outgoing-addresses"] = []
        self["worker-listeners"] = []
        self.argv: list[str] = []

    def parseOptions(self, options: Any = None) -> None:
        # Kept so that --workers can start copies of this process.
        import sys

        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_auth(self, description: str) -> None:
        """Require username/password, checked by this strcred checker (repeatable; see --help-auth). file:PATH is our own (see the README)."""  # noqa: E501
        if not description.startswith("file:"):
            super().opt_auth(description)
            return
        path = description[len("file:") :]
        if not path:
            raise usage.UsageError("--auth file: needs a path (file:PATH)")
        checker = PasswordFile(path)
        try:
            checker.load()
        except PasswordFileError as e:
            raise usage.UsageError(f"--auth file: {e}") from None
        self.addChecker(checker)

    def opt_worker_listener(self, value: str) -> None:
        """(Internal, used by --workers: FD:DESCRIPTION of an inherited listening socket.)"""
        fd, _, description = value.partition(":")
        if not fd.isdigit() or not description:
            raise usage.UsageError(f"--worker-listener {value!r}: expected FD:DESCRIPTION")
        self["worker-listeners"].append((int(fd), description))

    def opt_port(self, description: str) -> None:
        """Listen on this endpoint (repeatable): a bare number means tcp:N; also tcp6:, unix:, haproxy:, systemd: descriptions. Default: tcp:1080."""  # noqa: E501
        normalized = normalize_port(description)
        from twisted.internet import reactor

        try:
            systemd.check(endpoints.serverFromString(reactor, normalized))
        except Exception as e:
            why = systemd.explain(normalized, e)
            raise usage.UsageError(f"--port {description!r}: {why}") from None
        self["ports"].append(normalized)

    opt_p = opt_port

    def opt_allow_client(self, network: str) -> None:
        """Serve clients from this network (CIDR or address; repeatable). Default: loopback only without --auth, anywhere with it."""  # noqa: E501
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
        """Bind outbound CONNECT sockets, BIND listeners and UDP relay sockets to this IP (one per IP version)."""  # noqa: E501
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
        self["outgoing-addresses"].append(str(ip))

    def postOptions(self) -> None:
        if not self["ports"]:
            self["ports"] = ["tcp:1080"]
        proxied = [p for p in self["ports"] if p.startswith(PROXY_PREFIX)]
        if proxied and not self["trusted-proxies"]:
            raise usage.UsageError(
                f"--port {proxied[0]} believes the PROXY header of the load balancers named by"
                " --trusted-proxy NETWORK only: add one (e.g. --trusted-proxy 10.0.0.2)"
            )
        if self["metrics"]:
            self["metrics"] = normalize_port(self["metrics"])
            from twisted.internet import reactor

            try:
                endpoints.serverFromString(reactor, self["metrics"])
            except Exception as e:
                raise usage.UsageError(f"--metrics {self['metrics']!r}: {e}") from None
        if self["workers"] > 1 and self["metrics"]:
            raise usage.UsageError(
                "--metrics cannot be used with --workers: each process counts only its own"
                " sessions (run one server per metrics endpoint instead)"
            )
        if self["access-log"]:
            try:
                os.close(open_for_append(self["access-log"]))
            except OSError as e:
                raise usage.UsageError(f"--access-log {self['access-log']}: {e.strerror}") from None
        self["parsed-rules"] = None
        if self["rules"]:
            try:
                self["parsed-rules"] = load_rules(self["rules"])
            except RulesError as e:
                raise usage.UsageError(str(e)) from None


def make_factory(options: Options) -> SOCKS5ServerFactory:
    """The factory that C{options} describe."""
    checkers = options.get("credCheckers") or []
    portal = portal_for_checkers(checkers) if checkers else None
    from twisted.internet import reactor

    access_log = None
    if options["access-log"]:
        access_log = AccessLog(options["access-log"], reactor)
        # Lines of sessions closed as the reactor stops are written too.
        reactor.addSystemEventTrigger("after", "shutdown", access_log.close)
    return SOCKS5ServerFactory(
        portal,
        handshake_timeout=options["handshake-timeout"],
        connect_timeout=options["connect-timeout"],
        idle_timeout=options["idle-timeout"],
        max_clients=options["max-clients"],
        bind_timeout=options["bind-timeout"],
        external_address=options["external-address"],
        udp_interface=options["udp-interface"],
        udp_any_source=bool(options["udp-any-source"]),
        max_udp_per_client=options["max-udp-per-client"],
        rules=options["parsed-rules"],
        max_sessions_per_client=options["max-sessions-per-client"],
        max_sessions_per_user=options["max-sessions-per-user"],
        outgoing_addresses=options["outgoing-addresses"],
        splice=not options["no-splice"],
        allowed_clients=options["allowed-clients"] or None,
        access_log=access_log,
        trusted_proxies=options["trusted-proxies"],
    )


PROXY_PREFIX = "haproxy:"


def proxy_listener(description: str, factory: Any) -> tuple[str, Any]:
    """
    The endpoint description and factory to listen with for C{description}:
    a C{haproxy:INNER} port listens on INNER with our own PROXY-protocol
    wrapper (L{ProxyHeaderFactory}, which believes trusted proxies only)
    instead of Twisted's, which believes anyone.
    """
    if description.startswith(PROXY_PREFIX):
        return description[len(PROXY_PREFIX) :], ProxyHeaderFactory(factory)
    return description, factory


class AdoptedPortService(service.Service):
    """Serves a listening socket inherited from the process that started this one."""

    def __init__(self, fd: int, description: str, factory: Any) -> None:
        self.fd = fd
        self.description = description
        self.factory = factory
        self.port: Any = None

    def privilegedStartService(self) -> None:
        import os
        import socket

        from twisted.internet import reactor

        _, factory = proxy_listener(self.description, self.factory)
        probe = socket.socket(fileno=os.dup(self.fd))
        family = probe.family
        probe.close()
        self.port = reactor.adoptStreamPort(self.fd, family, factory)  # type: ignore[attr-defined]
        os.close(self.fd)  # the port holds its own duplicate
        super().privilegedStartService()

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def makeService(options: Options) -> SOCKS5Service:
    """A service listening on each C{--port} with one shared factory."""
    factory = make_factory(options)
    top = SOCKS5Service(factory, options["rules"], options["shutdown-grace"])
    if options["worker-listeners"]:
        # A worker started by --workers: serve the sockets it inherited.
        for fd, description in options["worker-listeners"]:
            adopted = AdoptedPortService(fd, description, factory)
            adopted._description = f"{description} (inherited)"  # type: ignore[attr-defined]
            adopted.setServiceParent(top)
    else:
        for description in options["ports"]:
            child = strports.service(*proxy_listener(description, factory))
            systemd.adopt_real_family(child.endpoint, description)
            child._description = description  # type: ignore[attr-defined]
            child.setServiceParent(top)
        top.worker_count = options["workers"]
        top.worker_argv = options.argv
    top.password_files = [
        c for c in options.get("credCheckers") or [] if isinstance(c, PasswordFile)
    ]
    if factory.portal is None:
        log.info(
            "no --auth: serving without authentication to clients in {networks}",
            networks=", ".join(str(n) for n in factory.client_policy.networks),
        )
    else:
        log.info(
            "username/password required; serving clients in {networks}",
            networks=", ".join(str(n) for n in factory.client_policy.networks),
        )
    if options["metrics"]:
        from .metrics import site

        metrics_service = strports.service(options["metrics"], site(factory.enable_metrics()))
        metrics_service._description = f"{options['metrics']} (metrics)"  # type: ignore[attr-defined]
        metrics_service.setServiceParent(top)
    if options["rules"]:
        log.info(
            "rules from {path}: {rules} (SIGHUP rereads it)",
            path=options["rules"],
            rules="; ".join(describe_rules(factory.rules)),
        )
    return top
