"""
L{SOCKS5ServerFactory}: the SOCKS5 server as a Twisted factory, for any
server endpoint.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from collections.abc import Iterable
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from .codec import Command
from .policy import (
    ALLOW_ANY,
    LOOPBACK_ONLY,
    ClientPolicy,
    IPAddress,
    IPNetwork,
    describe,
    parse_network,
)
from .session import SOCKS5ServerProtocol, _show


class SOCKS5ServerFactory(ServerFactory):
    """
    Builds a L{SOCKS5ServerProtocol} per client connection.

    @param portal: a L{Portal} whose checkers take L{IUsernamePassword}
        credentials (with C{bytes} fields, as RFC 1929 sends them) and whose
        realm gives L{socks5twist.auth.ISOCKSUser} avatars.  C{None} (the
        default) serves without authentication.
    @param reactor: the reactor for outbound connections and timers; the
        global reactor by default.
    @param handshake_timeout: seconds a client has to finish negotiating
        (greeting, authentication and request); 0 disables.
    @param connect_timeout: seconds for the outbound connection, name
        resolution included; 0 disables.
    @param idle_timeout: seconds without traffic either way after which a
        tunnel is closed; 0 (the default) never closes one.
    @param max_clients: the most concurrent client connections; the next one
        is closed at once.
    @param bind_timeout: seconds a BIND waits for its peer to connect.
    @param external_address: the IP address advertised in BIND replies
        instead of the one the client reached (for a proxy behind NAT).
    @param udp_interface: the local address of UDP ASSOCIATE's client-facing
        port; by default the address the client reached.
    @param udp_any_source: relay datagrams to the client from any remote
        address, not only from those it has sent to.
    @param max_udp_per_client: the most UDP associations one client IP may
        hold open at once.
    @param allowed_clients: the client networks (L{ipaddress} networks or
        their text) that may use the server.  By default, loopback only
        without a portal, and any address with one.
    """

    protocol = SOCKS5ServerProtocol  # type: ignore[assignment]
    noisy = False
    log = Logger()

    def __init__(
        self,
        portal: Portal | None = None,
        *,
        reactor: Any = None,
        handshake_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        idle_timeout: float = 0.0,
        max_clients: int = 4096,
        allowed_clients: Iterable[IPNetwork | str] | None = None,
        bind_timeout: float = 120.0,
        external_address: str | None = None,
        udp_interface: str | None = None,
        udp_any_source: bool = False,
        max_udp_per_client: int = 16,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        for name, value in (
            ("handshake_timeout", handshake_timeout),
            ("connect_timeout", connect_timeout),
            ("idle_timeout", idle_timeout),
            ("bind_timeout", bind_timeout),
        ):
            if value < 0:
                raise ValueError(f"{name} must be 0 or more, not {value}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, not {max_clients}")
        if max_udp_per_client < 1:
            raise ValueError(f"max_udp_per_client must be at least 1, not {max_udp_per_client}")
        self.portal = portal
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self.bind_timeout = bind_timeout
        self.external_address = (
            None if external_address is None else str(ipaddress.ip_address(external_address))
        )
        self.udp_interface = None if udp_interface is None else ipaddress.ip_address(udp_interface)
        self.udp_any_source = udp_any_source
        self.max_udp_per_client = max_udp_per_client
        self.udp_associations: collections.Counter[IPAddress] = collections.Counter()
        if allowed_clients is None:
            self.client_policy = ALLOW_ANY if portal is not None else LOOPBACK_ONLY
        else:
            self.client_policy = ClientPolicy(
                parse_network(n) if isinstance(n, str) else n for n in allowed_clients
            )
        self.sessions: set[SOCKS5ServerProtocol] = set()

    def session_started(self, session: SOCKS5ServerProtocol) -> bool:
        """Count a new session in; C{False} if that would pass C{max_clients}."""
        if len(self.sessions) >= self.max_clients:
            return False
        self.sessions.add(session)
        return True

    def udp_association_started(self, client: IPAddress) -> bool:
        """Count a UDP association of C{client} in; C{False} past the limit."""
        if self.udp_associations[client] >= self.max_udp_per_client:
            return False
        self.udp_associations[client] += 1
        return True

    def udp_association_ended(self, client: IPAddress) -> None:
        self.udp_associations[client] -= 1
        if self.udp_associations[client] <= 0:
            del self.udp_associations[client]

    def session_ended(self, session: SOCKS5ServerProtocol) -> None:
        """Count a session out and write its log line."""
        self.sessions.discard(session)
        relay, udp = session.relay, session.udp
        if udp is not None:
            up, down = udp.up_bytes, udp.down_bytes
            extra = (
                f" datagrams={udp.up_datagrams}/{udp.down_datagrams} dropped={udp.describe_drops()}"
            )
        else:
            up, down = (relay.up, relay.down) if relay is not None else (0, 0)
            extra = ""
        self.log.info(
            "session {client} user={user} {command} {destination} -> {connected} "
            "bound={bound} reply={reply} up={up} down={down}{extra} "
            "duration={duration:.3f}s ({outcome})",
            client=describe(session.client) if session.client else "?",
            user=session.user or "-",
            command=session.command.name if isinstance(session.command, Command) else "-",
            destination=_show(session.destination),
            connected=session.connected_to or "-",
            bound=session.bound or "-",
            reply="/".join(f"{r:#04x}" for r in session.replies) or "-",
            up=up,
            down=down,
            extra=extra,
            duration=time.time() - session.started,
            outcome=session.outcome,
        )
