"""Shared pieces for the unit tests: an in-memory session and its destination."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from socks5twist import SOCKS5ServerFactory, codec
from socks5twist.auth import portal_for_checkers
from socks5twist.codec import Address, AddressType, Command

LOCAL_CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
PROXY_HOST = IPv4Address("TCP", "127.0.0.1", 1080)


class HalfCloseTransport(StringTransport):
    """A StringTransport that also records a write-half close, as TCP can."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


@contextlib.contextmanager
def without_module(name: str) -> Iterator[None]:
    """As if C{name} were not installed: importing it raises C{ImportError}."""
    saved = sys.modules.get(name)
    sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            del sys.modules[name]
        else:
            sys.modules[name] = saved


def memory_portal(**users: str) -> Portal:
    checker = InMemoryUsernamePasswordDatabaseDontUse(**users)  # type: ignore[arg-type]
    return portal_for_checkers([checker])


@dataclass
class Session:
    reactor: Any  # a MemoryReactorClock, or a test's subclass of it
    factory: SOCKS5ServerFactory
    protocol: Any
    transport: HalfCloseTransport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        """The bytes the server wrote since the last take."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def remote(self, index: int = -1, host: str = "198.51.100.7", port: int = 43210) -> Any:
        """Complete the outbound connection attempt number C{index}; return its protocol."""
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        remote_address = IPv4Address("TCP", "10.9.8.7", 80)
        protocol: Any = factory.buildProtocol(remote_address)
        local: Any = (
            IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
        )
        transport = HalfCloseTransport(hostAddress=local, peerAddress=remote_address)
        protocol.makeConnection(transport)
        return protocol

    def fail_connect(self, reason: Exception, index: int = -1) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        from twisted.python.failure import Failure

        factory.clientConnectionFailed(self.reactor.connectors[index], Failure(reason))


def make_session(
    portal: Portal | None = None,
    peer: Any = LOCAL_CLIENT,
    reactor: MemoryReactorClock | None = None,
    **kwargs: Any,
) -> Session:
    reactor = reactor or MemoryReactorClock()
    factory = SOCKS5ServerFactory(portal, reactor=reactor, **kwargs)
    protocol: Any = factory.buildProtocol(peer)
    transport = HalfCloseTransport(hostAddress=PROXY_HOST, peerAddress=peer)
    protocol.makeConnection(transport)
    return Session(reactor, factory, protocol, transport)


def connect_request(host: str = "10.9.8.7", port: int = 80) -> bytes:
    if ":" in host:
        address = Address(AddressType.IPV6, host, port)
    else:
        try:
            address = Address.for_ip(host, port)
        except ValueError:
            address = Address(AddressType.DOMAIN, host, port)
    return codec.build_request(Command.CONNECT, address)


NO_AUTH_GREETING = codec.build_greeting([codec.Method.NO_AUTHENTICATION])
SUCCESS_REPLY_PREFIX = b"\x05\x00\x00"
