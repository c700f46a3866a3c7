"""
BIND's one-shot listener (RFC 1928 section 4): wait for the one inbound
connection a client asks for, from the peer it names.

A L{BindWaiter} owns the listening port and the timer of one BIND request.
It accepts exactly one connection, from an allowed peer, and then stops
listening at once; connections from anyone else are closed, logged, and the
wait goes on.  What the replies say, and what the rules make of the peer,
is the command's (L{socks5twist.commands.bind}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from .addresses import IPAddress
from .policy import describe, ip_of
from .relay import RemoteProtocol


class BindWaiter(ServerFactory):
    """
    Listens on C{interface}, on a port the system picks, for one peer.

    @param allowed: the peer addresses to accept, or C{None} for any peer
        (the client sent 0.0.0.0 or ::).
    @param on_peer: called with the peer's protocol once it is connected.
    @param on_timeout: called if no allowed peer connects within C{timeout}.
    @param admit: a last say on an expected peer (the access rules).
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        interface: str,
        allowed: frozenset[IPAddress] | None,
        timeout: float,
        on_peer: Callable[[RemoteProtocol], None],
        on_timeout: Callable[[], None],
        admit: Callable[[IAddress], bool] | None = None,
    ) -> None:
        self._reactor = reactor
        self.interface = interface
        self.allowed = allowed
        self._timeout = timeout
        self._on_peer = on_peer
        self._on_timeout = on_timeout
        self._admit = admit
        self.port: IListeningPort | None = None
        self._timer: IDelayedCall | None = None
        self.accepted = False

    def listen(self) -> IAddress:
        """Start listening (raises L{CannotListenError}); return the bound address."""
        self.port = self._reactor.listenTCP(0, self, backlog=5, interface=self.interface)
        if self._timeout > 0:
            self._timer = self._reactor.callLater(self._timeout, self._timed_out)
        return self.port.getHost()

    def buildProtocol(self, addr: IAddress | None) -> RemoteProtocol | None:
        if self.accepted or addr is None:
            return None
        ip = ip_of(addr)
        if self.allowed is not None and ip not in self.allowed:
            self.log.warn(
                "BIND on {interface}: closed a connection from {peer}, "
                "not the expected peer ({expected})",
                interface=self.interface,
                peer=describe(addr),
                expected=", ".join(sorted(map(str, self.allowed))),
            )
            return None
        if self._admit is not None and not self._admit(addr):
            return None
        self.accepted = True
        self.stop()
        protocol = RemoteProtocol()
        protocol.on_connected = self._on_peer
        return protocol

    def stop(self) -> None:
        """Stop listening and cancel the timer; safe to call more than once."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self.port is not None:
            port, self.port = self.port, None
            port.stopListening()

    def _timed_out(self) -> None:
        self._timer = None
        self.stop()
        self._on_timeout()
