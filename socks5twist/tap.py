"""
The C{twistd socks5} command: options, and the service they describe.

C{makeService(options)} returns a plain L{MultiService}, so the same
configuration can be added to any other Twisted application.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.application import service, strports
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import AuthOptionMixin
from twisted.internet import endpoints, error
from twisted.logger import Logger
from twisted.python import usage

from .auth import portal_for_checkers
from .factory import SOCKS5ServerFactory
from .policy import parse_network

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
            "udp-any-source",
            None,
            "Relay datagrams to UDP clients from any address, not only from those they sent to.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []
        self["allowed-clients"] = []

    def opt_port(self, description: str) -> None:
        """Listen on this endpoint (repeatable): a bare number means tcp:N; also tcp6:, unix:, haproxy:, systemd: descriptions. Default: tcp:1080."""  # noqa: E501
        normalized = normalize_port(description)
        from twisted.internet import reactor

        try:
            endpoints.serverFromString(reactor, normalized)
        except Exception as e:
            raise usage.UsageError(f"--port {description!r}: {e}") from None
        self["ports"].append(normalized)

    opt_p = opt_port

    def opt_allow_client(self, network: str) -> None:
        """Serve clients from this network (CIDR or address; repeatable). Default: loopback only without --auth, anywhere with it."""  # noqa: E501
        try:
            self["allowed-clients"].append(parse_network(network))
        except ValueError as e:
            raise usage.UsageError(f"--allow-client {network!r}: {e}") from None

    def postOptions(self) -> None:
        if not self["ports"]:
            self["ports"] = ["tcp:1080"]


def make_factory(options: Options) -> SOCKS5ServerFactory:
    """The factory that C{options} describe."""
    checkers = options.get("credCheckers") or []
    portal = portal_for_checkers(checkers) if checkers else None
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
        allowed_clients=options["allowed-clients"] or None,
    )


class ListenFailed(Exception):
    """A C{--port} could not be listened on."""


class SOCKS5Service(service.MultiService):
    """
    The listeners of one SOCKS5 server.

    Listening happens in L{privilegedStartService} (so twistd can bind port
    1080 before dropping privileges), and a port that cannot be listened on
    stops the start with L{ListenFailed}, naming the port.  With
    C{exit_on_listen_failure} (as C{twistd socks5} sets it) the process ends
    with that one line instead of a traceback.
    """

    exit_on_listen_failure = False

    def __init__(self, factory: SOCKS5ServerFactory) -> None:
        super().__init__()
        self.factory = factory

    def privilegedStartService(self) -> None:
        for child in self:
            try:
                child.privilegedStartService()
            except error.CannotListenError as e:
                description = getattr(child, "_description", "?")
                reason = e.socketError.strerror if e.socketError else str(e)
                failure = ListenFailed(f"cannot listen on {description}: {reason}")
                if self.exit_on_listen_failure:
                    raise SystemExit(f"twistd socks5: error: {failure}") from None
                raise failure from e
        log.info(
            "listening on {ports}",
            ports=", ".join(getattr(child, "_description", "?") for child in self),
        )


def makeService(options: Options) -> SOCKS5Service:
    """A service listening on each C{--port} with one shared factory."""
    factory = make_factory(options)
    top = SOCKS5Service(factory)
    for description in options["ports"]:
        child = strports.service(description, factory)
        child._description = description  # type: ignore[attr-defined]
        child.setServiceParent(top)
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
    return top
